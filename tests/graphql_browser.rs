//! The GraphQL endpoint from the outside, with third-party clients (docs-graphql-contract.md):
//! graphql-http's GraphQL-over-HTTP conformance audit finds no failing MUST, and the GraphiQL
//! playground, served with local assets, runs its example query in headless Chromium (with and
//! without a bearer token from the page's `#token=` fragment).
//!
//! The clients are the Node scripts of tests/js (`npm ci --prefix tests/js` installs their
//! packages, `.ci/run` does it on CI); Chromium is `$CHROMIUM`, else /usr/bin/chromium.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use gateway::RunningServer;
use gateway::demo::backends::{self, DemoService, RunningBackend};

/// The query the playground preloads, and a product name it must show (the demo catalog's).
const EXAMPLE_QUERY: &str = "{ products { name } }";
const A_PRODUCT_NAME: &str = "Mechanical Keyboard";

/// The demo's JWT settings (routes.toml with its default secret).
const JWT_SECRET: &str = "demo-only-secret-change-me-0123456789";

/// How long a Node script may run (each script also bounds itself).
const SCRIPT_DEADLINE: Duration = Duration::from_secs(90);

/// The repository's root.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// tests/js, checked to hold an `npm ci` install.
fn js_dir() -> PathBuf {
    let dir = root().join("tests/js");
    for needed in [
        "node_modules/graphql-http/package.json",
        "node_modules/playwright-core/package.json",
        "node_modules/graphiql/graphiql.min.js",
        "node_modules/react/umd/react.production.min.js",
        "node_modules/react-dom/umd/react-dom.production.min.js",
    ] {
        assert!(
            dir.join(needed).is_file(),
            "{} is missing: run `npm ci --prefix tests/js` (Node.js 20+) first",
            dir.join(needed).display()
        );
    }
    dir
}

/// A config string value (a TOML basic string) for `text`.
fn toml_string(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

/// The demo backends and a gateway serving GraphQL over them at /graphql, with the repository's
/// schema/ and `graphql_extra` added to the `[graphql]` table. Paths are absolute: the harness
/// parses the config without a directory to resolve relative ones against.
async fn graphql_gateway(graphql_extra: &str) -> (Vec<RunningBackend>, RunningServer) {
    let demo = backends::spawn_all().await.unwrap();
    let url = |service: DemoService| {
        demo.iter()
            .find(|b| b.service == service)
            .map(RunningBackend::url)
            .unwrap()
    };
    let schema = root().join("schema");
    let config = format!(
        r#"
[auth.jwt]
issuers = ["gateway-demo"]
audiences = ["gateway"]

[[auth.jwt.keys]]
kid = "demo"
algorithm = "HS256"
secret = "{JWT_SECRET}"

[services.users]
urls = ["{users}/users"]
timeout = "5s"

[services.orders]
urls = ["{orders}/orders"]
timeout = "5s"

[services.catalog]
urls = ["{catalog}/products"]
timeout = "5s"

[graphql]
path = "/graphql"
schema = {schema}
introspection = true
{graphql_extra}
"#,
        users = url(DemoService::Users),
        orders = url(DemoService::Orders),
        catalog = url(DemoService::Catalog),
        schema = toml_string(schema.to_str().unwrap()),
    );
    let gateway = common::gateway(&config).await;
    (demo, gateway)
}

/// What a finished script reported.
struct ScriptRun {
    success: bool,
    report: String,
}

/// Runs `node <script> <args>` from tests/js, bounded by [`SCRIPT_DEADLINE`] (the child is killed
/// when the deadline passes).
async fn node(script: &str, args: &[&str]) -> ScriptRun {
    let dir = js_dir();
    let mut command = tokio::process::Command::new("node");
    command
        .arg(dir.join(script))
        .args(args)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `node` (Node.js 20+ must be on PATH): {e}"));
    let output = tokio::time::timeout(SCRIPT_DEADLINE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("node {script} did not finish within {SCRIPT_DEADLINE:?}"))
        .unwrap();
    ScriptRun {
        success: output.status.success(),
        report: format!(
            "node {script} {args:?}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// The playground config: local assets from tests/js and the example query.
fn playground_config() -> String {
    format!(
        "playground = true\nplayground_assets = {}\nexample_query = {}\n",
        toml_string(js_dir().to_str().unwrap()),
        toml_string(EXAMPLE_QUERY)
    )
}

#[tokio::test]
async fn graphql_http_audit_has_no_must_failures() {
    js_dir();
    let (_demo, gw) = graphql_gateway("").await;
    let run = node("audit.mjs", &[&format!("{}/graphql", gw.url())]).await;
    assert!(
        run.success,
        "a MUST audit of graphql-http failed:\n{}",
        run.report
    );
}

#[tokio::test]
async fn playground_runs_the_example_query_in_chromium() {
    let (_demo, gw) = graphql_gateway(&playground_config()).await;
    let run = node(
        "playground.mjs",
        &[&format!("{}/graphql", gw.url()), A_PRODUCT_NAME],
    )
    .await;
    assert!(
        run.success,
        "the playground did not show the result:\n{}",
        run.report
    );
    assert!(run.report.contains(A_PRODUCT_NAME), "{}", run.report);
}

#[tokio::test]
async fn playground_sends_the_bearer_token_of_its_url_fragment() {
    let (_demo, gw) = graphql_gateway(&playground_config()).await;
    // playground.mjs opens the page at #token=..., and fails unless GraphiQL's request carried
    // `Authorization: Bearer <token>`; the gateway answering with data means it accepted it.
    let token = common::demo_token("catalog:read");
    let run = node(
        "playground.mjs",
        &[&format!("{}/graphql", gw.url()), A_PRODUCT_NAME, &token],
    )
    .await;
    assert!(
        run.success,
        "the playground did not run the query with the token:\n{}",
        run.report
    );
}
