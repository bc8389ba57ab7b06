//! Hot reload and the admin API end to end (`gateway/src/reload.rs`, `gateway/src/admin.rs`): a
//! real gateway built from a `routes.toml` on disk, reloaded by its file watcher, by
//! `Reloader::reload`, by `POST /admin/reload` and (for the real binary) by SIGHUP.
//!
//! Every test gets a directory of its own under the temp dir. Files are rewritten the way editors
//! do (a temp file renamed over the config) or in place. Waits are bounded polls of an observable
//! condition (the admin status, a route's answer); nothing sleeps to synchronize.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use common::process::{BIN, free_addr};
use common::{client, error_body, eventually, send_in_time};
use gateway::ratelimit::LimiterClock;
use gateway::reload::{Attempt, Reloader};
use gateway::snapshot::Deps;
use gateway::{Gateway, RunningServer, Snapshot};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// Any single request that gets no answer within this long fails its test.
const TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Harness

/// Replaces `path` the way editors save: write a sibling temp file, then rename it over `path`.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.tmp-save");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A live gateway: `routes.toml` in its own directory, the public listener, the reloader and the
/// admin API on a second listener. The directory is the last field, so it goes after the
/// watcher and the gateway that read it.
struct Live {
    path: PathBuf,
    gateway: Arc<Gateway>,
    reloader: Arc<Reloader>,
    public: RunningServer,
    admin: String,
    client: reqwest::Client,
    dir: TempDir,
}

impl Live {
    /// Serves `toml` (watching its files when `watch`).
    async fn start(toml: &str, watch: bool) -> Self {
        Self::start_in(common::temp_dir("reload-test"), toml, watch, Deps::default()).await
    }

    /// Serves `toml` written as `dir/routes.toml` (other files, like a schema, already in `dir`).
    async fn start_in(dir: TempDir, toml: &str, watch: bool, deps: Deps) -> Self {
        let path = dir.path().join("routes.toml");
        std::fs::write(&path, toml).unwrap();
        let snapshot = Snapshot::reload(&path, &|_| None, &deps, None)
            .unwrap_or_else(|e| panic!("test config is invalid:\n{e}"));
        let gateway = Gateway::new(snapshot);
        let reloader = Reloader::new(
            path.clone(),
            Arc::new(|_: &str| None),
            deps,
            gateway.clone(),
            None,
        );
        if watch {
            reloader.watch();
        }
        let public = RunningServer::start(gateway.clone(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let admin = common::serve(gateway::admin::router(reloader.clone())).await;
        Self {
            path,
            gateway,
            reloader,
            public,
            admin,
            client: client(),
            dir,
        }
    }

    /// Rewrites routes.toml as an editor would (temp file + rename).
    fn write(&self, toml: &str) {
        replace_file(&self.path, toml);
    }

    /// `Reloader::reload("admin")`, off the runtime's threads (it does blocking file I/O).
    async fn reload(&self) -> Attempt {
        let reloader = self.reloader.clone();
        tokio::task::spawn_blocking(move || reloader.reload("admin"))
            .await
            .unwrap()
    }

    /// GET on the public port: status and body text.
    async fn get(&self, path: &str) -> (u16, String) {
        let response = send_in_time(self.client.get(format!("{}{path}", self.public.url()))).await;
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    /// A request to the admin API (with `token` as the bearer token when given): status, JSON body.
    async fn admin_call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> (u16, Value, String) {
        let mut request = self.client.request(method, format!("{}{path}", self.admin));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = send_in_time(request).await;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null), text)
    }

    async fn admin_get(&self, path: &str) -> (u16, Value) {
        let (status, body, _) = self.admin_call(reqwest::Method::GET, path, None, None).await;
        (status, body)
    }

    async fn admin_post(&self, path: &str, body: Option<String>) -> (u16, Value) {
        let (status, body, _) = self.admin_call(reqwest::Method::POST, path, None, body).await;
        (status, body)
    }

    /// The `config` part of `GET /admin/status`: version, loaded_at, last_reload.
    async fn status(&self) -> Value {
        let (status, body) = self.admin_get("/admin/status").await;
        assert_eq!(status, 200, "{body}");
        body["config"].clone()
    }
}

/// A backend that counts the requests it gets and answers each with `status` and
/// "backend saw <path>".
struct Backend {
    url: String,
    hits: Arc<AtomicUsize>,
}

impl Backend {
    async fn start(status: u16) -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let app = Router::new().fallback(move |request: Request| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                (
                    StatusCode::from_u16(status).unwrap(),
                    format!("backend saw {}", request.uri().path()),
                )
            }
        });
        Self {
            url: common::serve(app).await,
            hits,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Service `svc` at `url` and the route `/stable` to it, then `rest`.
fn config(url: &str, rest: &str) -> String {
    format!(
        r#"[services.svc]
urls = ["{url}"]
timeout = "5s"

[[routes]]
path = "/stable"
service = "svc"
auth = "none"
{rest}"#
    )
}

/// An exact-path, no-auth route to `service`.
fn route_to(path: &str, service: &str) -> String {
    format!("\n[[routes]]\npath = \"{path}\"\nservice = \"{service}\"\nauth = \"none\"\n")
}

fn route(path: &str) -> String {
    route_to(path, "svc")
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} is not in the text"))
        + 1
}

/// The `line:column` right after `file:` in `error` (formatted `file:line:column: error: ...`).
fn location_in(error: &str, file: &str) -> Option<(usize, usize)> {
    let at = error.find(&format!("{file}:"))? + file.len() + 1;
    let mut parts = error[at..].splitn(3, ':');
    let line = parts.next()?.parse().ok()?;
    let column = parts.next()?.parse().ok()?;
    parts.next()?;
    Some((line, column))
}

/// The errors of the last reload, as strings.
fn errors_of(status: &Value) -> Vec<String> {
    status["last_reload"]["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// 1. Reloads under load

/// 8 clients hammer `/stable` (present in every version) and one client `/toggle` (added and
/// removed on alternate reloads) across 20 reloads: `/stable` never fails, `/toggle` is only ever
/// 200 or 404, and each reload's routes are live as soon as it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_change_under_load_without_failed_requests() {
    let backend = Backend::start(200).await;
    let without = config(&backend.url, "");
    let with = config(&backend.url, &route("/toggle"));
    let live = Live::start(&without, false).await;
    let base = live.public.url();

    let stop = Arc::new(AtomicBool::new(false));
    let stable_ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let toggle_seen = Arc::new(Mutex::new(Vec::<u16>::new()));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (stop, ok, failures, base) = (stop.clone(), stable_ok.clone(), failures.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let client = client();
            while !stop.load(Ordering::SeqCst) {
                let outcome = tokio::time::timeout(TIMEOUT, async {
                    let response = client.get(format!("{base}/stable")).send().await?;
                    let status = response.status().as_u16();
                    Ok::<_, reqwest::Error>((status, response.text().await?))
                })
                .await;
                match outcome {
                    Ok(Ok((200, body))) if body == "backend saw /stable" => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(Ok((status, body))) => {
                        failures.lock().unwrap().push(format!("/stable: {status} {body}"))
                    }
                    Ok(Err(e)) => failures.lock().unwrap().push(format!("/stable: {e:?}")),
                    Err(_) => failures.lock().unwrap().push("/stable: no answer in time".into()),
                }
            }
        }));
    }
    {
        let (stop, failures, seen, base) =
            (stop.clone(), failures.clone(), toggle_seen.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let client = client();
            while !stop.load(Ordering::SeqCst) {
                let outcome = tokio::time::timeout(TIMEOUT, async {
                    let response = client.get(format!("{base}/toggle")).send().await?;
                    let status = response.status().as_u16();
                    Ok::<_, reqwest::Error>((status, response.text().await?))
                })
                .await;
                match outcome {
                    Ok(Ok((status @ (200 | 404), _))) => seen.lock().unwrap().push(status),
                    Ok(Ok((status, body))) => {
                        failures.lock().unwrap().push(format!("/toggle: {status} {body}"))
                    }
                    Ok(Err(e)) => failures.lock().unwrap().push(format!("/toggle: {e:?}")),
                    Err(_) => failures.lock().unwrap().push("/toggle: no answer in time".into()),
                }
            }
        }));
    }

    for i in 0..20 {
        // Every reload happens under load: wait until more /stable requests went through.
        let before = stable_ok.load(Ordering::SeqCst);
        eventually("load between reloads", async || {
            stable_ok.load(Ordering::SeqCst) >= before + 20 || !failures.lock().unwrap().is_empty()
        })
        .await;
        let adding = i % 2 == 0;
        if i % 4 < 2 {
            live.write(if adding { &with } else { &without });
        } else {
            std::fs::write(&live.path, if adding { &with } else { &without }).unwrap();
        }
        let attempt = live.reload().await;
        assert_eq!(attempt.result, "applied", "reload {i}: {attempt:?}");
        if adding {
            assert_eq!(attempt.changes.routes_added.len(), 1, "reload {i}: {attempt:?}");
        } else {
            assert_eq!(attempt.changes.routes_removed.len(), 1, "reload {i}: {attempt:?}");
        }
        let (status, _) = live.get("/toggle").await;
        assert_eq!(
            status,
            if adding { 200 } else { 404 },
            "/toggle right after reload {i}"
        );
    }
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed requests: {:#?}",
        failures.len(),
        &failures[..failures.len().min(20)]
    );
    let ok = stable_ok.load(Ordering::SeqCst);
    assert!(ok >= 20 * 20, "only {ok} requests to /stable went through");
    let seen = toggle_seen.lock().unwrap();
    assert!(
        seen.contains(&200) && seen.contains(&404),
        "the load on /toggle saw {} answers",
        seen.len()
    );
}

// ---------------------------------------------------------------------------------------------
// 2. The file watcher

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_route_answers_within_two_seconds_of_the_file_write() {
    let backend = Backend::start(200).await;
    let live = Live::start(&config(&backend.url, ""), true).await;
    assert_eq!(live.get("/new").await.0, 404);

    let written = Instant::now();
    live.write(&config(&backend.url, &route("/new")));
    let mut answer = (0, String::new());
    while written.elapsed() < TIMEOUT {
        answer = live.get("/new").await;
        if answer.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = written.elapsed();
    assert_eq!(answer, (200, "backend saw /new".to_owned()), "after {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "the new route answered only after {took:?}"
    );
    let status = live.status().await;
    assert_eq!(status["last_reload"]["trigger"], "file", "{status}");
    assert_eq!(status["last_reload"]["result"], "applied", "{status}");
}

// ---------------------------------------------------------------------------------------------
// 3. Bad edits

const SDL: &str = r#"type Query {
  hello: Item @http(service: "svc", path: "/hello")
}
type Item { id: ID }
"#;

/// Invalid TOML, an unknown service, a broken schema file, a schema with a field defined twice
/// (which async-graphql's builder would panic on), a half-written file and a deleted file, one
/// after the other, picked up by the watcher: each leaves the active config serving and shows as
/// a failed reload with its location; the fix after each is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_edit_changes_nothing_and_the_fix_recovers() {
    let backend = Backend::start(200).await;
    let dir = common::temp_dir("reload-test");
    std::fs::create_dir_all(dir.path().join("schema")).unwrap();
    let schema_file = dir.path().join("schema").join("schema.graphql");
    std::fs::write(&schema_file, SDL).unwrap();
    let good = |generation: usize| {
        config(
            &backend.url,
            &format!(
                "{}\n[graphql]\nschema = \"schema\"\n",
                route(&format!("/gen{generation}"))
            ),
        )
    };
    let live = Live::start_in(dir, &good(0), true, Deps::default()).await;
    let file = live.path.display().to_string();
    let graphql = async |live: &Live| {
        let response = send_in_time(
            live.client
                .post(format!("{}/graphql", live.public.url()))
                .header("content-type", "application/json")
                .body(json!({"query": "{ __typename }"}).to_string()),
        )
        .await;
        response.status().as_u16()
    };
    assert_eq!(graphql(&live).await, 200);

    let mut generation = 0;
    for case in [
        "invalid TOML",
        "unknown service",
        "broken schema",
        "field defined twice",
        "half-written file",
        "deleted file",
    ] {
        let version = live.status().await["version"].clone();
        let mut expected_line = None;
        let mut expected_file = file.clone();
        let mut mentions = "";
        match case {
            "invalid TOML" => {
                let text = format!("{}\n[[routes]\npath = \"/broken\"\n", good(generation + 1));
                expected_line = Some(line_of(&text, "/broken") - 1);
                live.write(&text);
            }
            "unknown service" => {
                let text = format!("{}{}", good(generation + 1), route_to("/ghost", "ghost"));
                expected_line = Some(line_of(&text, "service = \"ghost\""));
                mentions = "ghost";
                live.write(&text);
            }
            "broken schema" => {
                std::fs::write(
                    &schema_file,
                    "type Query {\n  hello: Item @http(service: \"svc\"\n",
                )
                .unwrap();
                expected_file = schema_file.display().to_string();
            }
            "field defined twice" => {
                let text = SDL.replace("type Item { id: ID }", "type Item { id: ID\n  id: ID }");
                replace_file(&schema_file, &text);
                expected_file = schema_file.display().to_string();
                expected_line = Some(line_of(&text, "  id: ID }"));
                mentions = "Item.id is defined twice";
            }
            "half-written file" => {
                let whole = good(generation + 1);
                let cut = whole.find(&format!("path = \"/gen{}\"", generation + 1)).unwrap() + 5;
                std::fs::write(&live.path, &whole[..cut]).unwrap();
            }
            "deleted file" => {
                std::fs::remove_file(&live.path).unwrap();
                mentions = "cannot read";
            }
            _ => unreachable!(),
        }
        // The watcher tries it and fails.
        let mut status = Value::Null;
        eventually(&format!("{case}: a failed reload"), async || {
            status = live.status().await;
            status["last_reload"]["result"] == "failed"
        })
        .await;
        assert_eq!(status["last_reload"]["trigger"], "file", "{case}: {status}");
        assert_eq!(
            status["version"], version,
            "{case}: the version changed: {status}"
        );
        let errors = errors_of(&status);
        assert!(!errors.is_empty(), "{case}: no errors in {status}");
        let located = errors
            .iter()
            .find_map(|e| location_in(e, &expected_file).map(|loc| (e.clone(), loc)));
        let Some((error, (line, _column))) = located else {
            panic!("{case}: no error located as {expected_file}:LINE:COLUMN in {errors:#?}")
        };
        if let Some(expected) = expected_line {
            assert_eq!(line, expected, "{case}: wrong line in {error}");
        }
        assert!(
            error.contains(mentions),
            "{case}: {error} does not mention {mentions:?}"
        );
        // The old config keeps serving.
        assert_eq!(live.get("/stable").await.0, 200, "{case}");
        assert_eq!(live.get(&format!("/gen{generation}")).await.0, 200, "{case}");
        assert_eq!(live.get("/broken").await.0, 404, "{case}");
        assert_eq!(live.get("/ghost").await.0, 404, "{case}");
        assert_eq!(graphql(&live).await, 200, "{case}");

        // The fix is applied.
        if case == "broken schema" || case == "field defined twice" {
            std::fs::write(&schema_file, SDL).unwrap();
        }
        generation += 1;
        live.write(&good(generation));
        eventually(&format!("{case}: the fix applied"), async || {
            status = live.status().await;
            status["last_reload"]["result"] == "applied"
                && live.get(&format!("/gen{generation}")).await.0 == 200
        })
        .await;
        assert_ne!(status["version"], version, "{case}: {status}");
        assert!(errors_of(&status).is_empty(), "{case}: {status}");
        assert_eq!(
            live.get(&format!("/gen{}", generation - 1)).await.0,
            404,
            "{case}"
        );
        assert_eq!(graphql(&live).await, 200, "{case}");
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Rate-limit counters

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_bucket_survives_an_unrelated_reload() {
    let backend = Backend::start(200).await;
    let policy = |requests: u32| {
        format!(
            "\n[rate_limits.tight]\nrequests = {requests}\nper = \"1m\"\nburst = 2\nkey = \"ip\"\n{}rate_limit = \"tight\"\n",
            route("/limited")
        )
    };
    let (clock, _fake) = LimiterClock::fake();
    let live = Live::start_in(
        common::temp_dir("reload-test"),
        &config(&backend.url, &policy(2)),
        false,
        Deps { clock },
    )
    .await;
    assert_eq!(live.get("/limited").await.0, 200);
    assert_eq!(live.get("/limited").await.0, 200);
    let response = send_in_time(live.client.get(format!("{}/limited", live.public.url()))).await;
    error_body(response, 429, "RATE_LIMITED").await;
    let hits = backend.hits();

    // An unrelated route: the policy's counters are kept.
    live.write(&config(
        &backend.url,
        &format!("{}{}", policy(2), route("/unrelated")),
    ));
    let attempt = live.reload().await;
    assert_eq!(attempt.result, "applied", "{attempt:?}");
    assert_eq!(live.get("/unrelated").await.0, 200);
    let response = send_in_time(live.client.get(format!("{}/limited", live.public.url()))).await;
    error_body(response, 429, "RATE_LIMITED").await;
    assert_eq!(backend.hits(), hits + 1, "only /unrelated reached the backend");

    // Contrast: a changed policy starts with a full bucket.
    live.write(&config(
        &backend.url,
        &format!("{}{}", policy(3), route("/unrelated")),
    ));
    let attempt = live.reload().await;
    assert_eq!(attempt.result, "applied", "{attempt:?}");
    assert_eq!(
        live.get("/limited").await.0,
        200,
        "a changed policy should start afresh"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Breaker state

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_state_of_an_unchanged_service_survives() {
    let failing = Backend::start(500).await;
    let healthy = Backend::start(200).await;
    let toml = |svc_timeout: &str, rest: &str| {
        format!(
            r#"[services.svc]
urls = ["{failing}"]
timeout = "{svc_timeout}"

[services.svc.circuit_breaker]
min_requests = 2
failure_rate = 0.5
open_for = "1m"
window = "10s"

[services.svc.retry]
attempts = 1

[services.other]
urls = ["{healthy}"]
timeout = "5s"
{svc}{other}{rest}"#,
            failing = failing.url,
            healthy = healthy.url,
            svc = route_to("/svc", "svc"),
            other = route_to("/stable", "other"),
        )
    };
    let live = Live::start(&toml("5s", ""), false).await;
    let url = format!("{}/svc", live.public.url());

    // Fail until the breaker opens.
    let mut opened = false;
    for _ in 0..10 {
        let response = send_in_time(live.client.get(&url)).await;
        if response.status() == 503 {
            error_body(response, 503, "CIRCUIT_OPEN").await;
            opened = true;
            break;
        }
        assert_eq!(response.status(), 500, "the backend's own answer");
    }
    assert!(opened, "the breaker never opened");
    let hits = failing.hits();
    let breaker = async |live: &Live| {
        let (_, body) = live.admin_get("/admin/status").await;
        body["services"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "svc"))
            .map(|s| s["breaker"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(breaker(&live).await, "open");

    // An unrelated route (and service section untouched): still open, the backend untouched.
    live.write(&toml("5s", &route_to("/other", "other")));
    let attempt = live.reload().await;
    assert_eq!(attempt.result, "applied", "{attempt:?}");
    assert!(attempt.changes.services_changed.is_empty(), "{attempt:?}");
    assert_eq!(live.get("/other").await.0, 200);
    let response = send_in_time(live.client.get(&url)).await;
    error_body(response, 503, "CIRCUIT_OPEN").await;
    assert_eq!(
        failing.hits(),
        hits,
        "the open breaker let a request through after the reload"
    );
    assert_eq!(breaker(&live).await, "open");

    // Contrast: a changed service section starts with a fresh breaker.
    live.write(&toml("4s", &route_to("/other", "other")));
    let attempt = live.reload().await;
    assert_eq!(attempt.result, "applied", "{attempt:?}");
    assert_eq!(
        attempt.changes.services_changed,
        vec!["svc".to_owned()],
        "{attempt:?}"
    );
    let response = send_in_time(live.client.get(&url)).await;
    assert_eq!(
        response.status(),
        500,
        "a fresh breaker passes the request to the backend"
    );
    assert_eq!(failing.hits(), hits + 1);
}

// ---------------------------------------------------------------------------------------------
// 6. The admin API

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reload_and_status() {
    let backend = Backend::start(200).await;
    let live = Live::start(&config(&backend.url, ""), false).await;

    let (status, body) = live.admin_get("/healthz").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = live.admin_get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    let before = live.status().await;
    assert!(
        before["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{before}"
    );
    assert_eq!(before["last_reload"], Value::Null, "{before}");
    assert_eq!(
        body["version"], before["version"],
        "/readyz reports the active version"
    );

    // Nothing changed.
    let (status, body) = live.admin_post("/admin/reload", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], "unchanged", "{body}");
    assert_eq!(body["trigger"], "admin", "{body}");
    assert_eq!(live.status().await["version"], before["version"]);

    // An edit.
    live.write(&config(&backend.url, &route("/added")));
    let (status, body) = live.admin_post("/admin/reload", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], "applied", "{body}");
    let added = body["changes"]["routes_added"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        added.len() == 1 && added[0].as_str().unwrap().contains("/added"),
        "{body}"
    );
    let after = live.status().await;
    assert_ne!(after["version"], before["version"], "{after}");
    assert_eq!(after["last_reload"]["result"], "applied", "{after}");
    assert_eq!(after["last_reload"]["trigger"], "admin", "{after}");
    assert_eq!(live.get("/added").await.0, 200);
    let (status, ready) = live.admin_get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["version"], after["version"], "{ready}");
    let (_, full) = live.admin_get("/admin/status").await;
    assert_eq!(full["routes"], 2, "{full}");
    assert_eq!(full["draining"], false, "{full}");

    // A bad edit: 422 with the errors, nothing changes.
    live.write(&config(&backend.url, &route_to("/ghost", "ghost")));
    let (status, body) = live.admin_post("/admin/reload", None).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["result"], "failed", "{body}");
    assert!(body["errors"].as_array().is_some_and(|e| !e.is_empty()), "{body}");
    assert_eq!(live.status().await["version"], after["version"]);
    assert_eq!(live.get("/added").await.0, 200);
    let (status, _) = live.admin_get("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_is_not_on_the_public_port() {
    let backend = Backend::start(200).await;
    let live = Live::start(&config(&backend.url, ""), false).await;
    for path in ["/admin/status", "/admin/config"] {
        let response = send_in_time(live.client.get(format!("{}{path}", live.public.url()))).await;
        error_body(response, 404, "ROUTE_NOT_FOUND").await;
    }
    let response = send_in_time(live.client.post(format!("{}/admin/reload", live.public.url()))).await;
    error_body(response, 404, "ROUTE_NOT_FOUND").await;
    assert_eq!(backend.hits(), 0);
    let (status, body) = live.admin_get("/admin/status").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["config"]["last_reload"],
        Value::Null,
        "the public POST reloaded: {body}"
    );
}

/// The admin listener, like the public one, cuts off a client that never finishes its request
/// head (`header_read_timeout`) instead of holding the connection forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_cuts_off_a_client_that_never_finishes_its_headers() {
    let backend = Backend::start(200).await;
    let toml = format!(
        "[server]\nheader_read_timeout = \"300ms\"\n\n{}",
        config(&backend.url, "")
    );
    let live = Live::start(&toml, false).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    gateway::admin::spawn(listener, live.reloader.clone());
    let response = send_in_time(live.client.get(format!("http://{addr}/healthz"))).await;
    assert_eq!(response.status(), 200);
    // Half a request head, and nothing at all: both are cut off.
    for sent in [&b"GET /healthz HTTP/1.1\r\nHost: admin\r\nX-Slow: "[..], b""] {
        let reply = common::until_closed(addr, sent)
            .await
            .unwrap_or_else(|e| panic!("the admin listener kept a connection that sent {sent:?} open: {e}"));
        assert!(reply.is_empty() || reply.starts_with("HTTP/1.1 408"), "{reply}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_admin_config() {
    const JWT_SECRET: &str = "a-literal-hs256-secret-0123456789abcdef";
    const ADMIN_TOKEN: &str = "admin-token-0123456789";
    const REDIS_PASSWORD: &str = "redis-password-hunter2";
    let api_key_sha = hex::encode(Sha256::digest(b"partner-api-key-0123456789"));
    let backend = Backend::start(200).await;
    let toml = config(
        &backend.url,
        &format!(
            r#"
[admin]
token = "{ADMIN_TOKEN}"

[auth.jwt]
issuers = ["https://id.test"]

[[auth.jwt.keys]]
kid = "hs"
algorithm = "HS256"
secret = "{JWT_SECRET}"

[[auth.api_keys]]
id = "partner"
sha256 = "{api_key_sha}"

[rate_limit_store]
backend = "redis"
url = "redis://:{REDIS_PASSWORD}@{redis}/0"
on_error = "local"
"#,
            redis = common::dead_url().trim_start_matches("http://"),
        ),
    );
    let live = Live::start(&toml, false).await;
    let secrets = [JWT_SECRET, ADMIN_TOKEN, REDIS_PASSWORD, api_key_sha.as_str()];

    let (status, body, text) = live
        .admin_call(reqwest::Method::GET, "/admin/config", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(status, 200, "{text}");
    for secret in secrets {
        assert!(!text.contains(secret), "{secret} shows in /admin/config: {text}");
    }
    // The rest of the config is there.
    assert_eq!(body["config"]["auth"]["api_keys"][0]["id"], "partner", "{text}");
    assert_eq!(
        body["config"]["services"]["svc"]["urls"][0],
        backend.url.as_str(),
        "{text}"
    );
    assert!(
        body["config"]["rate_limit_store"]["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("redis://")),
        "{text}"
    );

    // Nor in the other admin answers.
    for (method, path) in [
        (reqwest::Method::GET, "/admin/status"),
        (reqwest::Method::POST, "/admin/reload"),
    ] {
        let (status, _, text) = live.admin_call(method, path, Some(ADMIN_TOKEN), None).await;
        assert_eq!(status, 200, "{path}: {text}");
        for secret in secrets {
            assert!(!text.contains(secret), "{secret} shows in {path}: {text}");
        }
    }

    // No token, or a wrong one: 401 on every /admin route; health stays open.
    for token in [None, Some("admin-token-wrong-456789"), Some("")] {
        for (method, path) in [
            (reqwest::Method::GET, "/admin/config"),
            (reqwest::Method::GET, "/admin/status"),
            (reqwest::Method::POST, "/admin/reload"),
            (reqwest::Method::POST, "/admin/check"),
        ] {
            let (status, body, text) = live.admin_call(method, path, token, Some(toml.clone())).await;
            assert_eq!(status, 401, "{path} with {token:?}: {text}");
            assert_eq!(body["error"]["code"], "UNAUTHENTICATED", "{text}");
            assert_eq!(
                body["error"]["request_id"].as_str().map(str::len),
                Some(36),
                "{text}"
            );
            for secret in secrets {
                assert!(!text.contains(secret), "{secret} shows in {path}: {text}");
            }
        }
    }
    assert_eq!(live.admin_get("/healthz").await.0, 200);

    // Admin errors are in the SPEC.md format too, with the client's request id when it sent one.
    let response = send_in_time(
        live.client
            .get(format!("{}/admin/status", live.admin))
            .header("x-request-id", "admin-call-1"),
    )
    .await;
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["x-request-id"], "admin-call-1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["request_id"], "admin-call-1", "{body}");
    let (status, body) = live.admin_get("/admin/nope").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "ROUTE_NOT_FOUND", "{body}");
    let response = send_in_time(live.client.post(format!("{}/healthz", live.admin))).await;
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET,HEAD");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "METHOD_NOT_ALLOWED", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_check_reports_changes_or_errors() {
    let backend = Backend::start(200).await;
    let original = config(&backend.url, "");
    let live = Live::start(&original, false).await;
    let before = live.status().await;

    let (status, body) = live
        .admin_post("/admin/check", Some(config(&backend.url, &route("/added"))))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["valid"], true, "{body}");
    let added = body["changes"]["routes_added"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        added.len() == 1 && added[0].as_str().unwrap().contains("/added"),
        "{body}"
    );
    assert_ne!(body["version"], before["version"], "{body}");

    let bad = config(&backend.url, &route_to("/ghost", "ghost"));
    let line = line_of(&bad, "service = \"ghost\"");
    let (status, body) = live.admin_post("/admin/check", Some(bad.clone())).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["valid"], false, "{body}");
    let errors: Vec<String> = body["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default();
    let file = live.path.display().to_string();
    assert!(
        errors
            .iter()
            .any(|e| location_in(e, &file).is_some_and(|(l, _)| l == line) && e.contains("ghost")),
        "no error at {file}:{line}:COLUMN naming the service in {errors:#?}"
    );

    // Nothing was applied.
    let after = live.status().await;
    assert_eq!(after["version"], before["version"], "{after}");
    assert_eq!(after["last_reload"], Value::Null, "{after}");
    assert_eq!(live.get("/added").await.0, 404);
    assert_eq!(live.get("/stable").await.0, 200);
    assert_eq!(std::fs::read_to_string(&live.path).unwrap(), original);
    assert_eq!(live.gateway.snapshot().config.routes.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// 10. SIGHUP on the real binary

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIGHUP reloads: the admin status says so (trigger "sighup"). The config path is a symlink to
/// a file in a subdirectory, which is edited in place: a change the file watcher (the config's
/// directory, not recursive) does not see, so only the SIGHUP can apply it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_real_binary() {
    let backend = Backend::start(200).await;
    let dir = common::temp_dir("reload-test");
    let (public, admin) = (free_addr(), free_addr());
    let text = |rest: &str| format!("[admin]\nlisten = \"{admin}\"\n\n{}", config(&backend.url, rest));
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let target = dir.path().join("data").join("routes.toml");
    std::fs::write(&target, text("")).unwrap();
    let path = dir.path().join("routes.toml");
    std::os::unix::fs::symlink(&target, &path).unwrap();
    let stderr = dir.path().join("stderr.log");
    let mut child = Proc(
        Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(&path)
            .arg("--listen")
            .arg(public.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap(),
    );
    let log = || std::fs::read_to_string(&stderr).unwrap_or_default();
    let client = client();
    let admin_status = async || -> Option<Value> {
        let response =
            tokio::time::timeout(TIMEOUT, client.get(format!("http://{admin}/admin/status")).send())
                .await
                .ok()?
                .ok()?;
        response.json().await.ok()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("the gateway exited ({status}) before serving:\n{}", log());
        }
        let public_ok = matches!(
            tokio::time::timeout(TIMEOUT, client.get(format!("http://{public}/stable")).send()).await,
            Ok(Ok(r)) if r.status() == 200
        );
        if public_ok && admin_status().await.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway is not serving after 30 s:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hangup = |pid: u32| {
        let sent = Command::new("kill")
            .arg("-HUP")
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(sent.success());
    };
    let pid = child.0.id();

    // Polls the admin status until `done` holds (the gateway must stay up meanwhile).
    let mut wait_for = async |what: &str, done: &dyn Fn(&Value) -> bool| -> Value {
        let deadline = Instant::now() + TIMEOUT;
        let mut status = Value::Null;
        loop {
            if let Some(exit) = child.0.try_wait().unwrap() {
                panic!("the gateway exited ({exit}) on SIGHUP:\n{}", log());
            }
            if let Some(s) = admin_status().await {
                status = s["config"].clone();
                if done(&status) {
                    return status;
                }
            }
            assert!(Instant::now() < deadline, "{what}: {status}\n{}", log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };

    // A SIGHUP with nothing changed.
    hangup(pid);
    let status = wait_for("no SIGHUP reload in the status", &|s| {
        s["last_reload"]["trigger"] == "sighup"
    })
    .await;
    assert_eq!(status["last_reload"]["result"], "unchanged", "{status}");

    // An edit only a SIGHUP picks up.
    std::fs::write(&target, text(&route("/added"))).unwrap();
    hangup(pid);
    let status = wait_for("the edit was not applied", &|s| {
        s["last_reload"]["result"] == "applied"
    })
    .await;
    assert_eq!(status["last_reload"]["trigger"], "sighup", "{status}");
    let response = send_in_time(client.get(format!("http://{public}/added"))).await;
    assert_eq!(response.status(), 200, "{}", log());
    assert_eq!(response.text().await.unwrap(), "backend saw /added");

    drop(child);
}

// ---------------------------------------------------------------------------------------------
// 11. What else a reload must see

/// `[graphql]` added by a reload: its schema directory is watched from then on, like one present
/// at startup (README: the config reloads "when routes.toml or any file of the GraphQL schema
/// directory changes").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_directory_added_by_a_reload_is_watched() {
    let backend = Backend::start(200).await;
    let live = Live::start(&config(&backend.url, ""), true).await;
    let schema_file = live.dir.path().join("schema").join("schema.graphql");
    std::fs::create_dir_all(schema_file.parent().unwrap()).unwrap();
    std::fs::write(&schema_file, SDL).unwrap();
    live.write(&config(&backend.url, "\n[graphql]\nschema = \"schema\"\n"));
    let query = async |field: &str| {
        let response = send_in_time(
            live.client
                .post(format!("{}/graphql", live.public.url()))
                .header("content-type", "application/json")
                .header("accept", "application/graphql-response+json")
                .body(json!({"query": format!("{{ {field} {{ id }} }}")}).to_string()),
        )
        .await;
        response.status().as_u16()
    };
    eventually("the GraphQL endpoint", async || query("hello").await == 200).await;
    let version = live.status().await["version"].clone();

    std::fs::write(
        &schema_file,
        SDL.replace(
            "type Item",
            "extend type Query {\n  added: Item @http(service: \"svc\", path: \"/added\")\n}\ntype Item",
        ),
    )
    .unwrap();
    let mut status = Value::Null;
    let polled = tokio::time::timeout(TIMEOUT, async {
        loop {
            status = live.status().await;
            if status["version"] != version {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if polled.is_err() {
        // Tell a watcher that missed the edit from a reload that cannot see it.
        let attempt = live.reload().await;
        panic!(
            "the edit of {} was not reloaded within {TIMEOUT:?} (status: {status}); an explicit reload \
             then gives: {} {:?}",
            schema_file.display(),
            attempt.result,
            attempt.changes
        );
    }
    assert_eq!(status["last_reload"]["trigger"], "file", "{status}");
    assert_eq!(
        status["last_reload"]["changes"]["schema_changed"], true,
        "{status}"
    );
    assert_eq!(query("added").await, 200);
}

/// A PEM file named by `public_key_pem` is part of the config: after the file is replaced (a key
/// rotation), a reload ("exactly the startup path") verifies tokens with the new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_file_takes_effect_on_reload() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let backend = Backend::start(200).await;
    let dir = common::temp_dir("reload-test");
    std::fs::create_dir_all(dir.path().join("keys")).unwrap();
    let pem = dir.path().join("keys").join("idp.pem");
    std::fs::copy("tests/fixtures/keys/rsa.pub.pem", &pem).unwrap();
    let toml = format!(
        r#"[services.svc]
urls = ["{url}"]
timeout = "5s"

[[routes]]
path = "/private"
service = "svc"
auth = "required"

[auth.jwt]
issuers = ["https://id.test"]

[[auth.jwt.keys]]
kid = "idp"
algorithm = "RS256"
public_key_pem = "keys/idp.pem"
"#,
        url = backend.url
    );
    let live = Live::start_in(dir, &toml, false, Deps::default()).await;
    let token = |fixture: &str| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("idp".into());
        let key =
            EncodingKey::from_rsa_pem(&std::fs::read(format!("tests/fixtures/keys/{fixture}.pem")).unwrap())
                .unwrap();
        jsonwebtoken::encode(
            &header,
            &json!({"iss": "https://id.test", "sub": "alice", "iat": now, "exp": now + 3600}),
            &key,
        )
        .unwrap()
    };
    let call = async |fixture: &str| {
        send_in_time(
            live.client
                .get(format!("{}/private", live.public.url()))
                .bearer_auth(token(fixture)),
        )
        .await
        .status()
        .as_u16()
    };
    assert_eq!(call("rsa").await, 200);
    assert_eq!(call("rsa2").await, 401);

    // Rotate the key file, then reload.
    replace_file(
        &pem,
        &std::fs::read_to_string("tests/fixtures/keys/rsa2.pub.pem").unwrap(),
    );
    let (status, body) = live.admin_post("/admin/reload", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["result"], "applied",
        "the rotated key file was not picked up: {body}"
    );
    assert_eq!(call("rsa2").await, 200, "a token of the new key");
    assert_eq!(call("rsa").await, 401, "a token of the retired key");
}

/// `/readyz` fails as soon as shutdown begins (while in-flight requests drain), so a load
/// balancer stops sending; `/healthz` still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_while_draining() {
    let (release, released) = tokio::sync::watch::channel(false);
    let app = Router::new().fallback(move || {
        let mut released = released.clone();
        async move {
            let _ = released.wait_for(|r| *r).await;
            "done"
        }
    });
    let backend = common::serve(app).await;
    let mut live = Live::start(&config(&backend, ""), false).await;
    assert_eq!(live.admin_get("/readyz").await.0, 200);
    // A request in flight keeps the gateway draining once shutdown begins.
    let url = format!("{}/stable", live.public.url());
    let in_flight = tokio::spawn(async move { client().get(url).send().await.map(|r| r.status()) });
    eventually("the slow request to reach the backend", async || {
        live_in_flight(&live).await
    })
    .await;
    live.public.begin_shutdown();
    eventually("/readyz to fail while draining", async || {
        live.admin_get("/readyz").await.0 == 503
    })
    .await;
    assert_eq!(live.admin_get("/healthz").await.0, 200);
    release.send(true).unwrap();
    let status = tokio::time::timeout(TIMEOUT, in_flight)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(status, 200, "the in-flight request finished during the drain");
}

/// Whether the gateway's service has a request in flight (from `/admin/status`).
async fn live_in_flight(live: &Live) -> bool {
    let (_, body) = live.admin_get("/admin/status").await;
    body["services"][0]["in_flight"].as_u64() == Some(1)
}

/// `gateway check --against` prints what a file would change on a running gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_against_prints_what_would_change() {
    let backend = Backend::start(200).await;
    let live = Live::start(&config(&backend.url, ""), false).await;
    let candidate = live.dir.path().join("candidate.toml");
    std::fs::write(&candidate, config(&backend.url, &route("/new"))).unwrap();
    let admin = live.admin.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["check", "--config"])
            .arg(&candidate)
            .args(["--against", &admin])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("routes added: * /new"), "{stdout}");
    // Nothing was applied.
    assert_eq!(live.get("/new").await.0, 404);
}

/// Cached GraphQL answers survive a reload that changes neither `[graphql]` nor a service (here:
/// a route and the schema's other field), and are dropped when the service changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_cache_entries_survive_an_unrelated_reload() {
    // A JSON backend that counts its calls.
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = Router::new().fallback(move |request: Request| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            axum::Json(json!(format!("backend saw {}", request.uri().path())))
        }
    });
    let url = common::serve(app).await;
    let dir = common::temp_dir("reload-test");
    std::fs::create_dir_all(dir.path().join("schema")).unwrap();
    let schema = |other: &str| {
        format!(
            "type Query {{\n  seen: String @http(service: \"svc\", path: \"/cached\", cache: \"10m\")\n  {other}: String @http(service: \"svc\", path: \"/other\")\n}}\n"
        )
    };
    std::fs::write(dir.path().join("schema").join("schema.graphql"), schema("a")).unwrap();
    let text = |rest: &str, timeout: &str| {
        config(&url, rest).replace("timeout = \"5s\"", &format!("timeout = \"{timeout}\""))
            + "\n[graphql]\nschema = \"schema\"\n"
    };
    let live = Live::start_in(dir, &text("", "5s"), false, Deps::default()).await;
    let query = async |live: &Live| {
        let response = send_in_time(
            live.client
                .post(format!("{}/graphql", live.public.url()))
                .header("content-type", "application/json")
                .body(json!({"query": "{ seen }"}).to_string()),
        )
        .await;
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["data"]["seen"], "backend saw /cached", "{body}");
    };
    query(&live).await;
    query(&live).await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the second query is answered from the cache"
    );

    // A new route and a changed schema field: the cached call is the same call.
    std::fs::write(live.dir.path().join("schema").join("schema.graphql"), schema("b")).unwrap();
    live.write(&text(&route("/new"), "5s"));
    assert_eq!(live.reload().await.result, "applied");
    query(&live).await;
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the cache survived the reload");

    // The service changed: its answers may differ, so the cache starts empty.
    live.write(&text(&route("/new"), "6s"));
    assert_eq!(live.reload().await.result, "applied");
    query(&live).await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "a changed service starts from an empty cache"
    );
}

/// The JWKS keys survive a reload that leaves `[auth]` alone: with the identity provider down
/// since the reload, tokens still verify (a rebuilt authenticator would have no keys and answer
/// 503 AUTH_UNAVAILABLE), and no refetch is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_keys_survive_a_reload_while_the_identity_provider_is_down() {
    use axum::response::IntoResponse;
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let key = EncodingKey::from_rsa_pem(&std::fs::read("tests/fixtures/keys/rsa.pem").unwrap()).unwrap();
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let jwks = json!({ "keys": [jwk] });
    let (fetches, down) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
    let (counter, failing) = (fetches.clone(), down.clone());
    let idp = common::serve(Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let (counter, failing, jwks) = (counter.clone(), failing.clone(), jwks.clone());
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                if failing.load(Ordering::SeqCst) {
                    return StatusCode::SERVICE_UNAVAILABLE.into_response();
                }
                axum::Json(jwks).into_response()
            }
        }),
    ))
    .await;
    let backend = Backend::start(200).await;
    let text = |rest: &str| {
        format!(
            "{}\n[auth.jwt]\nissuers = [\"https://id.test\"]\njwks_url = \"{idp}/jwks.json\"\n\n[[routes]]\npath = \"/private\"\nservice = \"svc\"\n",
            config(&backend.url, rest)
        )
    };
    let live = Live::start(&text(""), false).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k1".into());
    let token = jsonwebtoken::encode(
        &header,
        &json!({"iss": "https://id.test", "sub": "alice", "iat": now, "exp": now + 3600}),
        &key,
    )
    .unwrap();
    let call = async || {
        send_in_time(
            live.client
                .get(format!("{}/private", live.public.url()))
                .bearer_auth(&token),
        )
        .await
        .status()
        .as_u16()
    };
    eventually("the startup JWKS fetch", async || call().await == 200).await;
    down.store(true, Ordering::SeqCst);
    let before = fetches.load(Ordering::SeqCst);
    live.write(&text(&route("/new")));
    assert_eq!(live.reload().await.result, "applied");
    assert_eq!(live.get("/new").await.0, 200, "the reload applied");
    assert_eq!(call().await, 200, "the kept keys verify the token");
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        before,
        "no refetch after the reload"
    );
}

/// `[telemetry] log_format = "json"`: every stderr line of the real binary is a JSON object, the
/// request's access line names the route pattern, status and request id, and the bearer token the
/// client sent appears nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_parse_and_never_hold_the_token() {
    let backend = Backend::start(200).await;
    let dir = common::temp_dir("reload-test");
    let public = free_addr();
    let secret = "json-log-test-secret-0123456789abcdef";
    let path = dir.path().join("routes.toml");
    std::fs::write(
        &path,
        format!(
            "[telemetry]\nlog_format = \"json\"\n\n[auth.jwt]\nissuers = [\"https://id.test\"]\n\n[[auth.jwt.keys]]\nkid = \"k\"\nalgorithm = \"HS256\"\nsecret = \"{secret}\"\n\n{}",
            config(&backend.url, "").replace("auth = \"none\"", "auth = \"required\"")
        ),
    )
    .unwrap();
    let stderr = dir.path().join("stderr.log");
    let child = Proc(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&path)
            .args(["--listen", &public.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap(),
    );
    let now = common::unix_now();
    let token = common::hs256_token(
        secret,
        "k",
        &json!({"iss": "https://id.test", "sub": "alice", "iat": now, "exp": now + 600}),
    );
    let client = client();
    let url = format!("http://{public}/stable");
    eventually("the gateway to serve", async || {
        matches!(
            tokio::time::timeout(TIMEOUT, client.get(&url).bearer_auth(&token).header("x-request-id", "json-log-req").send()).await,
            Ok(Ok(r)) if r.status() == 200
        )
    })
    .await;
    let log = || std::fs::read_to_string(&stderr).unwrap_or_default();
    eventually("the access line", async || log().contains("json-log-req")).await;
    drop(child);
    let text = log();
    assert!(!text.contains(&token), "the token was logged:\n{text}");
    assert!(!text.contains(secret), "the key was logged:\n{text}");
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let access = lines
        .iter()
        .find(|l| l["request_id"] == "json-log-req")
        .unwrap_or_else(|| panic!("no access line in:\n{text}"));
    assert_eq!(access["target"], "access");
    assert_eq!(access["route"], "/stable");
    assert_eq!(access["status"], 200);
    assert_eq!(access["client"], "alice");
    assert!(access["duration_ms"].as_f64().is_some(), "{access}");
}
