//! The `gateway` command: `run`, `check` and `demo`, as SPEC.md fixes them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use std::sync::Arc;

use crate::config::{ConfigErrors, TelemetryConfig, process_env};
use crate::demo::backends;
use crate::edge::Gateway;
use crate::reload::{Reloader, SharedEnv};
use crate::server::{serve, shutdown_signal};
use crate::snapshot::Deps;
use crate::snapshot::Snapshot;
use crate::telemetry::logs;

#[derive(Debug, Parser)]
#[command(name = "gateway", version, about = "API gateway and backend-for-frontend")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the config until SIGINT/SIGTERM, then drain in-flight requests.
    Run {
        /// The config file.
        #[arg(long, default_value = "routes.toml")]
        config: PathBuf,
        /// Listen here instead of `[server] listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Validate the config without serving; exit 1 and list every error when it is invalid.
    Check {
        #[arg(long, default_value = "routes.toml")]
        config: PathBuf,
        /// Also show what the file would change on a running gateway: its admin API's URL,
        /// like http://127.0.0.1:9090.
        #[arg(long)]
        against: Option<String>,
        /// The admin API's bearer token, if it has one.
        #[arg(long, env = "ADMIN_TOKEN")]
        admin_token: Option<String>,
    },
    /// Print the JSON Schema of routes.toml (for editors; the repo keeps it as routes.schema.json).
    ConfigSchema,
    /// Print the declarations of the gateway's GraphQL directives (@http, @auth, @from), for
    /// editors and schema tooling.
    Schema,
    /// Start the demo backends on loopback and the gateway in front of them.
    Demo {
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// The demo's config; its service URLs are filled in from USERS_URL, ORDERS_URL, CATALOG_URL.
        #[arg(long, default_value = "routes.toml")]
        config: PathBuf,
    },
}

/// Runs the parsed command line; the binary's `main` is just this.
pub fn main(cli: Cli) -> ExitCode {
    // `run` and `demo` log as their config says; everything else with the defaults.
    let _logs = match &cli.command {
        Command::Run { .. } | Command::Demo { .. } => None,
        _ => logs::init(&TelemetryConfig::default()),
    };
    match cli.command {
        Command::Check {
            config,
            against,
            admin_token,
        } => match check(&config) {
            code if code != ExitCode::SUCCESS => code,
            code => match against {
                Some(url) => check_against(&config, &url, admin_token.as_deref()),
                None => code,
            },
        },
        Command::ConfigSchema => {
            print!("{}", crate::config::json_schema());
            ExitCode::SUCCESS
        }
        Command::Schema => {
            print!("{}", crate::graphql::DECLARATIONS);
            ExitCode::SUCCESS
        }
        Command::Run { config, listen } => match Snapshot::load(&config, &process_env) {
            Ok(snapshot) => {
                let _logs = logs::init(&snapshot.config.telemetry);
                let workers = snapshot.config.server.worker_threads;
                let env: SharedEnv = Arc::new(process_env);
                run_runtime(workers, |rt| {
                    rt.block_on(run(config, env, listen, snapshot_with_listen(snapshot, listen)))
                })
            }
            Err(errors) => report(&errors),
        },
        Command::Demo { listen, config } => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => return fail(&format!("cannot start the runtime: {e}")),
            };
            runtime.block_on(demo(&config, listen))
        }
    }
}

fn check(path: &Path) -> ExitCode {
    match Snapshot::load(path, &process_env) {
        Ok(snapshot) => {
            println!(
                "{}: OK ({} services, {} routes{})",
                path.display(),
                snapshot.config.services.len(),
                snapshot.config.routes.len(),
                match &snapshot.config.graphql {
                    Some(g) => format!(", GraphQL at {} from {}", g.path, g.schema_dir.display()),
                    None => String::new(),
                }
            );
            ExitCode::SUCCESS
        }
        Err(errors) => report(&errors),
    }
}

/// Posts the file to a running gateway's `/admin/check` and prints what it would change.
fn check_against(path: &Path, admin: &str, token: Option<&str>) -> ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return fail(&format!("cannot read {}: {e}", path.display())),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let url = format!("{}/admin/check", admin.trim_end_matches('/'));
    let answer = runtime.block_on(async {
        use http_body_util::BodyExt;
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::Full<bytes::Bytes>>();
        let mut request = http::Request::post(&url).header("content-type", "application/toml");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(http_body_util::Full::new(bytes::Bytes::from(text)))
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(std::time::Duration::from_secs(10), client.request(request))
            .await
            .map_err(|_| "no answer within 10 s".to_owned())?
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let json: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| format!("HTTP {status}: not the admin API"))?;
        Ok::<_, String>((status, json))
    });
    let (status, json) = match answer {
        Ok(a) => a,
        Err(e) => return fail(&format!("cannot ask {url}: {e}")),
    };
    if let Some(errors) = json["errors"].as_array() {
        for e in errors {
            eprintln!("{}", e.as_str().unwrap_or_default());
        }
        return fail(&format!(
            "the running gateway would refuse this file ({} errors)",
            errors.len()
        ));
    }
    if !status.is_success() {
        return fail(&format!("{url} answered {status}: {json}"));
    }
    println!("against {admin}:");
    let changes = &json["changes"];
    let mut any = false;
    for (key, label) in [
        ("routes_added", "routes added"),
        ("routes_removed", "routes removed"),
        ("routes_changed", "routes changed"),
        ("services_added", "services added"),
        ("services_removed", "services removed"),
        ("services_changed", "services changed"),
        ("sections_changed", "sections changed"),
    ] {
        let items: Vec<&str> = changes[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .collect();
        if !items.is_empty() {
            any = true;
            println!("  {label}: {}", items.join(", "));
        }
    }
    if changes["schema_changed"].as_bool() == Some(true) {
        any = true;
        println!("  the GraphQL schema changed");
    }
    if !any {
        println!("  no changes");
    }
    ExitCode::SUCCESS
}

fn report(errors: &ConfigErrors) -> ExitCode {
    eprintln!("{errors}");
    let n = errors.0.len();
    eprintln!(
        "{n} error{} found; nothing was started",
        if n == 1 { "" } else { "s" }
    );
    ExitCode::FAILURE
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

fn snapshot_with_listen(mut snapshot: Snapshot, listen: Option<SocketAddr>) -> Snapshot {
    if let Some(addr) = listen {
        snapshot.config.server.listen = addr;
    }
    snapshot
}

/// Builds the runtime `[server] worker_threads` asks for.
/// One worker is tokio's current-thread scheduler: every task on the thread that accepts, with
/// no cross-thread wake-ups or work-stealing queues (measured cheaper per request than a
/// one-worker multi-thread runtime; see bench/README.md).
fn run_runtime(worker_threads: usize, f: impl FnOnce(tokio::runtime::Runtime) -> ExitCode) -> ExitCode {
    let mut builder = if worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all();
    if worker_threads > 1 {
        builder.worker_threads(worker_threads);
    }
    match builder.build() {
        Ok(rt) => f(rt),
        Err(e) => fail(&format!("cannot start the runtime: {e}")),
    }
}

async fn run(path: PathBuf, env: SharedEnv, listen: Option<SocketAddr>, snapshot: Snapshot) -> ExitCode {
    let shutdown = shutdown_signal();
    let addr = snapshot.config.server.listen;
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => return fail(&format!("cannot listen on {addr}: {e}")),
    };
    let addr = listener.local_addr().unwrap_or(addr);
    let (gateway, _reloader) = match live(path, env, listen, snapshot).await {
        Ok(live) => live,
        Err(code) => return code,
    };
    tracing::info!(%addr, "gateway listening on http://{addr}");
    match serve(listener, gateway, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&format!("server failed: {e}")),
    }
}

/// The gateway for `snapshot`, reloaded when its files change (or on SIGHUP), with the admin API
/// on its own listener when `[admin]` asks for it.
async fn live(
    path: PathBuf,
    env: SharedEnv,
    listen: Option<SocketAddr>,
    snapshot: Snapshot,
) -> Result<(Arc<Gateway>, Arc<Reloader>), ExitCode> {
    let admin = snapshot.config.admin.clone();
    let gateway = Gateway::new(snapshot);
    let reloader = Reloader::new(path, env, Deps::default(), gateway.clone(), listen);
    reloader.watch();
    if let Some(admin) = admin {
        let listener = TcpListener::bind(admin.listen)
            .await
            .map_err(|e| fail(&format!("cannot listen on {} (admin): {e}", admin.listen)))?;
        let addr = listener.local_addr().unwrap_or(admin.listen);
        tracing::info!(%addr, "admin API on http://{addr}");
        crate::admin::spawn(listener, reloader.clone());
    }
    // The caller keeps the reloader while it serves: its watcher and SIGHUP handler hold it weakly.
    Ok((gateway, reloader))
}

/// What `gateway demo` suggests trying, with a working token when the config can sign one.
fn try_lines(gw: &str, token: Option<&str>) -> String {
    let mut out = format!(
        "\nGraphQL playground: {gw}/graphql (open in a browser{})\n",
        if token.is_some() {
            "; add #token=$TOKEN to the URL to sign in"
        } else {
            ""
        }
    );
    out.push_str(&format!(
        "\nTry:\n  curl '{gw}/api/products?ids=p1,p2'              # public route\n  \
         curl -i {gw}/api/users                           # protected: 401 without credentials\n  \
         curl -s {gw}/graphql -H 'content-type: application/json' -d '{{\"query\":\"{{ products {{ name price }} }}\"}}'\n"
    ));
    if let Some(token) = token {
        out.push_str(&format!(
            "\n  TOKEN={token}\n\n  \
             curl -H \"Authorization: Bearer $TOKEN\" {gw}/api/users/u1\n  \
             curl -H \"Authorization: Bearer $TOKEN\" '{gw}/api/orders?userId=u1'\n  \
             curl -H \"Authorization: Bearer $TOKEN\" {gw}/echo    # see x-user-id as the backend does\n  \
             curl -H \"Authorization: Bearer $TOKEN\" '{gw}/api/users/u1?delay_ms=300'   # slow backend\n  \
             curl -si -H \"Authorization: Bearer $TOKEN\" {gw}/api/users | grep -i ratelimit   # the gold tier's quota\n  \
             curl -s {gw}/graphql -H \"Authorization: Bearer $TOKEN\" -H 'content-type: application/json' \\\n    \
             -d '{{\"query\":\"{{ viewer {{ name orders {{ total items {{ quantity product {{ name price }} }} }} recommendations {{ name }} }} }}\"}}'\n"
        ));
    }
    out.push_str(&format!(
        "  curl -H 'x-api-key: demo-partner-key' '{gw}/api/orders?userId=u2'   # API key client\n  \
         curl -i '{gw}/api/products?fail=503'            # failing backend, passed through\n  \
         for i in 1 2 3 4 5 6 7; do curl -s -o /dev/null -w '%{{http_code}} ' {gw}/api/products; done; echo   # 429s once the burst of 5 is used\n  \
         curl -i '{gw}/api/slow?delay_ms=2000'           # route with a 1s timeout: 504\n  \
         curl -i {gw}/nope                                # 404 in the gateway's error format\n\nCtrl-C to stop."
    ));
    out
}

async fn demo(config: &Path, listen: Option<SocketAddr>) -> ExitCode {
    let shutdown = shutdown_signal();
    let running = match backends::spawn_all().await {
        Ok(b) => b,
        Err(e) => return fail(&format!("cannot start the demo backends: {e}")),
    };
    let urls: HashMap<String, String> = running
        .iter()
        .map(|b| (format!("{}_URL", b.service.name().to_uppercase()), b.url()))
        .collect();
    let env: SharedEnv = Arc::new(move |name: &str| urls.get(name).cloned().or_else(|| process_env(name)));
    let snapshot = match Snapshot::load(config, &*env) {
        Ok(s) => snapshot_with_listen(s, listen),
        Err(errors) => return report(&errors),
    };
    let _logs = logs::init(&snapshot.config.telemetry);
    let addr = snapshot.config.server.listen;
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            return fail(&format!(
                "cannot listen on {addr}: {e} (pick another address with --listen)"
            ));
        }
    };
    let gw = format!("http://{}", listener.local_addr().unwrap_or(addr));
    println!("gateway demo running on {gw}\n");
    for b in &running {
        println!("  demo backend {:<8} {}", b.service.name(), b.url());
    }
    let token = snapshot
        .config
        .auth
        .jwt
        .as_ref()
        .and_then(|jwt| crate::demo::token::mint(jwt, std::time::Duration::from_secs(24 * 3600)));
    println!("{}", try_lines(&gw, token.as_deref()));
    let (gateway, _reloader) = match live(config.to_path_buf(), env, listen, snapshot).await {
        Ok(live) => live,
        Err(code) => return code,
    };
    match serve(listener, gateway, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&format!("server failed: {e}")),
    }
}
