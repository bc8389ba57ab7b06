//! The GraphQL backend-for-frontend end to end: a real gateway serving `[graphql]` over real
//! backends that record what reaches them. Fan-out, batching (N+1), the response cache and
//! single-flight, fallbacks and `extensions.degraded`, timeouts, the limits that refuse an
//! operation before any backend call, CSRF, null propagation, `@auth`, mutations and retries,
//! GraphQL over HTTP (media types, statuses, GET), headers sent upstream, batched operations, and
//! `gateway check` on a broken schema directory.
//!
//! Waits are causal: a backend that holds its answer until the test opens a gate, counters polled
//! with `eventually`. The only timed backends are the ones a test measures against (a 200 ms
//! backend for fan-out, a 2 s one for timeouts).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::graphql::{Backend, Seen, graphql_table, json_reply, post, post_with, read, schema_dir};
use common::process::{check_command, run_to_end};
use common::{Rng, client, dead_url, error_body, eventually, gateway, hs256_token, send_in_time, unix_now};
use gateway::RunningServer;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::watch;

const ISS: &str = "https://id.test";
const AUD: &str = "gateway";
const SECRET: &str = "graphql-test-secret-0123456789-abcdefghij";
const GRAPHQL_RESPONSE: &str = "application/graphql-response+json; charset=utf-8";
const JSON: &str = "application/json; charset=utf-8";

// ---------------------------------------------------------------------------------------------
// Harness

/// A gateway with `[services.NAME]` for each `(name, url)`, the schema `sdl`, `graphql_extra` in
/// the `[graphql]` table and `rest` (more tables) after it.
async fn start(sdl: &str, services: &[(&str, &str)], graphql_extra: &str, rest: &str) -> RunningServer {
    let mut toml = String::new();
    for (name, url) in services {
        toml.push_str(&format!(
            "\n[services.{name}]\nurls = [\"{url}\"]\ntimeout = \"5s\"\n"
        ));
    }
    let schema = schema_dir(sdl);
    toml.push_str(&graphql_table(schema.path(), graphql_extra));
    toml.push_str(rest);
    // The schema is read once, at start: its directory may go when this returns.
    gateway(&toml).await
}

/// `[auth.jwt]` with one HS256 key, forwarding the subject as `x-user-id`.
fn auth_tables() -> String {
    format!(
        r#"
[auth.jwt]
issuers = ["{ISS}"]
audiences = ["{AUD}"]

[[auth.jwt.keys]]
kid = "hs"
algorithm = "HS256"
secret = "{SECRET}"

[auth.jwt.forward]
"x-user-id" = "sub"
"#
    )
}

/// A valid HS256 token for `sub` holding `scope` (space-separated scopes).
fn token(sub: &str, scope: &str) -> String {
    let now = unix_now();
    let claims = json!({
        "iss": ISS, "aud": AUD, "sub": sub, "iat": now, "exp": now + 3600, "scope": scope,
    });
    hs256_token(SECRET, "hs", &claims)
}

/// POSTs `query` with `Authorization: Bearer <token>`.
async fn post_as(base: &str, token: &str, query: &str) -> (StatusCode, Value) {
    let bearer = format!("Bearer {token}");
    let (status, _, body) = post_with(
        &client(),
        base,
        &json!({ "query": query }),
        &[
            ("accept", "application/graphql-response+json"),
            ("authorization", &bearer),
        ],
    )
    .await;
    (status, body)
}

/// The errors of a response, by the `path` they carry (joined with `.`).
fn error_at<'a>(body: &'a Value, path: &str) -> &'a Value {
    body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors in {body}"))
        .iter()
        .find(|e| {
            e["path"]
                .as_array()
                .map(|p| {
                    p.iter()
                        .map(|s| s.as_str().map_or_else(|| s.to_string(), str::to_owned))
                        .collect::<Vec<_>>()
                        .join(".")
                })
                .as_deref()
                == Some(path)
        })
        .unwrap_or_else(|| panic!("no error with path {path} in {body}"))
}

fn error_count(body: &Value) -> usize {
    body["errors"].as_array().map_or(0, Vec::len)
}

/// The `extensions.degraded` entry for `path`.
fn degraded_at<'a>(body: &'a Value, path: &[&str]) -> &'a Value {
    let path: Vec<Value> = path.iter().map(|s| json!(s)).collect();
    body["extensions"]["degraded"]
        .as_array()
        .unwrap_or_else(|| panic!("no extensions.degraded in {body}"))
        .iter()
        .find(|d| d["path"] == Value::Array(path.clone()))
        .unwrap_or_else(|| panic!("no degraded entry for {path:?} in {body}"))
}

/// The one error of a request error, its code, and that the operation did not run.
fn request_error_code(body: &Value) -> &str {
    assert!(body.get("data").is_none(), "a request error has no data: {body}");
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
}

/// A gate a backend waits on until the test opens it.
fn gate() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(false)
}

async fn passed(mut open: watch::Receiver<bool>) {
    let _ = open.wait_for(|&o| o).await;
}

/// A backend answering `value` after `delay`.
async fn slow_backend(delay: Duration, value: Value) -> Backend {
    Backend::start(move |_| {
        let value = value.clone();
        async move {
            tokio::time::sleep(delay).await;
            json_reply(200, &value)
        }
    })
    .await
}

/// A backend answering `{"id": <the path it was asked for>}`.
async fn path_echo() -> Backend {
    Backend::start(|seen: Seen| async move { json_reply(200, &json!({ "id": seen.path })) }).await
}

// ---------------------------------------------------------------------------------------------
// 1. Fan-out

/// Three root fields on three 200 ms backends: the calls run at once, so the query takes about
/// one backend's time, not three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_fields_are_fetched_concurrently() {
    let delay = Duration::from_millis(200);
    let a = slow_backend(delay, json!({"id": "a"})).await;
    let b = slow_backend(delay, json!({"id": "b"})).await;
    let c = slow_backend(delay, json!({"data": {"items": [{"id": "c1"}, {"id": "c2"}]}})).await;
    let gw = start(
        r#"
type Query {
  a: Item @http(service: "a", path: "/a")
  b: Item @http(service: "b", path: "/b")
  c: [Item!]! @http(service: "c", path: "/c", select: "data.items")
}
type Item { id: ID! }
"#,
        &[("a", &a.url), ("b", &b.url), ("c", &c.url)],
        "",
        "",
    )
    .await;
    let started = Instant::now();
    let (status, _, body) = post(
        &client(),
        &gw.url(),
        "{ a { id } b { id } c { id } }",
        Value::Null,
    )
    .await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"data": {"a": {"id": "a"}, "b": {"id": "b"}, "c": [{"id": "c1"}, {"id": "c2"}]}})
    );
    assert!(took >= delay, "answered before the backends did: {took:?}");
    assert!(
        took < Duration::from_millis(400),
        "the three calls were not concurrent: {took:?}"
    );
    assert_eq!((a.hits(), b.hits(), c.hits()), (1, 1, 1));
}

/// Nested fields are concurrent too: a user (200 ms), then its orders and recommendations side
/// by side (200 ms each), and for every order, through the plain `lines` list, its lines'
/// products in one batched call beside the order's own `invoice` call (200 ms each): 600 ms, not
/// the 1000 ms of one call after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_fields_are_fetched_concurrently() {
    let delay = Duration::from_millis(200);
    let users = slow_backend(delay, json!({"id": "u1"})).await;
    let orders = slow_backend(
        delay,
        json!([{"id": "o1", "lines": [{"p": "p1"}, {"p": "p2"}]}, {"id": "o2", "lines": [{"p": "p2"}]}]),
    )
    .await;
    let recs = slow_backend(delay, json!([{"id": "p9"}])).await;
    let catalog = slow_backend(delay, json!([{"id": "p1"}, {"id": "p2"}])).await;
    let invoices = slow_backend(delay, json!({"id": "inv"})).await;
    let gw = start(
        r#"
type Query {
  user: User @http(service: "users", path: "/u1")
}
type User {
  id: ID!
  orders: [Order!]! @http(service: "orders", path: "/orders")
  recommendations: [Item!]! @http(service: "recs", path: "/recs")
}
type Order {
  id: ID!
  lines: [Line!]!
  invoice: Item @http(service: "invoices", path: "/{parent.id}")
}
type Line {
  product: Item @http(service: "catalog", path: "/products", query: {ids: "{parent.p}"}, batch: {key: "id"})
}
type Item { id: ID! }
"#,
        &[
            ("users", &users.url),
            ("orders", &orders.url),
            ("recs", &recs.url),
            ("catalog", &catalog.url),
            ("invoices", &invoices.url),
        ],
        "",
        "",
    )
    .await;
    let started = Instant::now();
    let (status, _, body) = post(
        &client(),
        &gw.url(),
        "{ user { id orders { id lines { product { id } } invoice { id } } recommendations { id } } }",
        Value::Null,
    )
    .await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"]["user"]["orders"][0],
        json!({"id": "o1", "lines": [{"product": {"id": "p1"}}, {"product": {"id": "p2"}}], "invoice": {"id": "inv"}}),
        "{body}"
    );
    assert_eq!(
        body["data"]["user"]["recommendations"],
        json!([{"id": "p9"}]),
        "{body}"
    );
    assert!(took >= delay * 3, "answered before the backends did: {took:?}");
    assert!(
        took < Duration::from_millis(900),
        "nested calls waited for each other: {took:?}"
    );
    assert_eq!(catalog.hits(), 1, "one batched catalog call");
    assert_eq!(invoices.hits(), 2);
}

// ---------------------------------------------------------------------------------------------
// 2. N+1

const ORDERS_SDL: &str = r#"
type Query {
  orders: [Order!]! @http(service: "orders", path: "/orders")
}
type Order {
  id: ID!
  productId: ID!
  product: Product
    @http(service: "catalog", path: "/products", query: {ids: "{parent.productId}"}, batch: {key: "id"})
  productRepeated: Product
    @http(service: "catalog", path: "/products", query: {id: "{parent.productId}"}, batch: {key: "id", separator: null})
}
type Product {
  id: ID!
  name: String!
}
"#;

/// Twenty orders, each with a product: ONE catalog call carrying every (distinct, sorted) id,
/// every order gets its own product, and one the catalog does not know is null.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sibling_fields_are_batched_into_one_call() {
    let product_of = |i: usize| {
        if i == 20 {
            "gone".to_owned()
        } else {
            format!("p{}", i % 7 + 1)
        }
    };
    let orders_json: Vec<Value> = (1..=20)
        .map(|i| json!({"id": format!("o{i}"), "productId": product_of(i)}))
        .collect();
    let orders = Backend::constant(Value::Array(orders_json)).await;
    // Knows p1..p7 (not "gone"); answers in reverse order, so matching must go by id.
    let catalog = Backend::start(|seen: Seen| async move {
        let mut ids: Vec<String> = seen
            .params("ids")
            .into_iter()
            .chain(seen.params("id"))
            .flat_map(|v| v.split(',').map(str::to_owned).collect::<Vec<_>>())
            .filter(|id| id.starts_with('p'))
            .collect();
        ids.reverse();
        let items: Vec<Value> = ids
            .iter()
            .map(|id| json!({"id": id, "name": format!("Product {id}")}))
            .collect();
        json_reply(200, &Value::Array(items))
    })
    .await;
    let gw = start(
        ORDERS_SDL,
        &[("orders", &orders.url), ("catalog", &catalog.url)],
        "",
        "",
    )
    .await;
    let expected_ids = ["gone", "p1", "p2", "p3", "p4", "p5", "p6", "p7"];

    let (status, _, body) = post(
        &client(),
        &gw.url(),
        "{ orders { id productId product { id name } } }",
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("errors").is_none(), "{body}");
    assert_eq!(
        catalog.hits(),
        1,
        "one catalog call for every order: {:?}",
        catalog.seen()
    );
    let call = &catalog.seen()[0];
    assert_eq!(call.path, "/products");
    assert_eq!(call.params("ids"), vec![expected_ids.join(",")]);
    let list = body["data"]["orders"].as_array().unwrap();
    assert_eq!(list.len(), 20);
    for (i, order) in list.iter().enumerate() {
        let want = product_of(i + 1);
        assert_eq!(order["productId"], want.as_str());
        if want == "gone" {
            assert_eq!(order["product"], Value::Null, "{order}");
        } else {
            assert_eq!(
                order["product"],
                json!({"id": want, "name": format!("Product {want}")})
            );
        }
    }

    // separator: null repeats the parameter.
    let (status, _, body) = post(
        &client(),
        &gw.url(),
        "{ orders { id productRepeated { id } } }",
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(catalog.hits(), 2, "{:?}", catalog.seen());
    assert_eq!(catalog.seen()[1].params("id"), expected_ids.to_vec());
    assert_eq!(body["data"]["orders"][0]["productRepeated"]["id"], "p2");
    assert_eq!(body["data"]["orders"][19]["productRepeated"], Value::Null);
}

// ---------------------------------------------------------------------------------------------
// 3. Cache

/// An identical query is answered from the cache; a per-user cached field answers each caller
/// with their own data, never another caller's cached entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_answers_are_reused_but_never_across_callers() {
    let catalog = path_echo().await;
    let users = Backend::start(|seen: Seen| async move {
        let who = seen.header("x-user-id").unwrap_or_else(|| "anonymous".into());
        json_reply(200, &json!({"id": who}))
    })
    .await;
    let gw = start(
        r#"
type Query {
  product(id: ID!): Item
    @http(service: "catalog", path: "/products/{args.id}", cache: "30s", forward_identity: false)
  me: Item @http(service: "users", path: "/me", cache: "30s")
}
type Item { id: ID! }
"#,
        &[("catalog", &catalog.url), ("users", &users.url)],
        "",
        &auth_tables(),
    )
    .await;
    let base = gw.url();
    let query = r#"{ product(id: "p1") { id } }"#;
    let (_, _, first) = post(&client(), &base, query, Value::Null).await;
    assert_eq!(first, json!({"data": {"product": {"id": "/products/p1"}}}));
    let (_, _, second) = post(&client(), &base, query, Value::Null).await;
    assert_eq!(second, first);
    assert_eq!(catalog.hits(), 1, "the second query reached the backend");
    // Another argument is another URL.
    let (_, _, other) = post(&client(), &base, r#"{ product(id: "p2") { id } }"#, Value::Null).await;
    assert_eq!(other["data"]["product"]["id"], "/products/p2");
    assert_eq!(catalog.hits(), 2);

    let (alice, bob) = (token("alice", ""), token("bob", ""));
    let (status, body) = post_as(&base, &alice, "{ me { id } }").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["me"]["id"], "alice", "{body}");
    let (_, body) = post_as(&base, &bob, "{ me { id } }").await;
    assert_eq!(
        body["data"]["me"]["id"], "bob",
        "bob got another caller's entry: {body}"
    );
    assert_eq!(users.hits(), 2);
    let (_, body) = post_as(&base, &alice, "{ me { id } }").await;
    assert_eq!(body["data"]["me"]["id"], "alice", "{body}");
    assert_eq!(
        users.hits(),
        2,
        "alice's second query was not answered from her cache entry"
    );
    let (_, _, body) = post(&client(), &base, "{ me { id } }", Value::Null).await;
    assert_eq!(body["data"]["me"]["id"], "anonymous", "{body}");
    assert_eq!(users.hits(), 3);
}

// ---------------------------------------------------------------------------------------------
// 4. Single-flight

/// Fifty concurrent identical queries on a cold cache: one backend call, fifty answers. Every
/// query also asks an uncached `probe`; when the probe backend has seen all fifty, every query's
/// `product` call is waiting, and only then does the catalog answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_calls_share_one_backend_call() {
    let (open, opened) = gate();
    let catalog = Backend::start(move |_| {
        let opened = opened.clone();
        async move {
            passed(opened).await;
            json_reply(200, &json!({"id": "p1"}))
        }
    })
    .await;
    let probe = Backend::constant(json!({"id": "probe"})).await;
    let gw = start(
        r#"
type Query {
  product(id: ID!): Item
    @http(service: "catalog", path: "/products/{args.id}", cache: "30s", forward_identity: false)
  probe: Item @http(service: "probe", path: "/probe")
}
type Item { id: ID! }
"#,
        &[("catalog", &catalog.url), ("probe", &probe.url)],
        "",
        "",
    )
    .await;
    let base = gw.url();
    let http = client();
    let queries: Vec<_> = (0..50)
        .map(|_| {
            let (http, base) = (http.clone(), base.clone());
            tokio::spawn(async move {
                post(
                    &http,
                    &base,
                    r#"{ product(id: "p1") { id } probe { id } }"#,
                    Value::Null,
                )
                .await
            })
        })
        .collect();
    eventually("all fifty queries running", async || probe.hits() == 50).await;
    open.send_replace(true);
    for query in queries {
        let (status, _, body) = query.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["product"]["id"], "p1", "{body}");
    }
    assert_eq!(catalog.hits(), 1, "identical concurrent calls were not shared");
}

// ---------------------------------------------------------------------------------------------
// 5. Fallbacks and status codes

/// A backend that fails (503, or nothing listening): `stale` answers the last good value,
/// a literal answers itself, no fallback is null with an error; `extensions.degraded` lists
/// each, and the healthy field is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_calls_fall_back_and_are_listed_as_degraded() {
    let up = Arc::new(AtomicBool::new(true));
    let flaky = {
        let up = up.clone();
        Backend::start(move |seen: Seen| {
            let up = up.load(Ordering::SeqCst);
            async move {
                if !up {
                    return json_reply(503, &json!({"error": "down"}));
                }
                match seen.path.as_str() {
                    "/list" => json_reply(200, &json!([{"id": "l1"}])),
                    path => json_reply(200, &json!({"id": format!("fresh {path}")})),
                }
            }
        })
        .await
    };
    let good = path_echo().await;
    let down = dead_url();
    let gw = start(
        r#"
type Query {
  warm: Item @http(service: "flaky", path: "/warm", fallback: "stale")
  cold: Item @http(service: "flaky", path: "/cold", fallback: "stale")
  list: [Item!]! @http(service: "flaky", path: "/list", fallback: "[]")
  obj: Item @http(service: "flaky", path: "/obj", fallback: "{\"id\":\"unknown\"}")
  plain: Item @http(service: "flaky", path: "/plain")
  down: Item @http(service: "down", path: "/down")
  downList: [Item!]! @http(service: "down", path: "/list", fallback: "[]")
  good: Item @http(service: "good", path: "/good")
}
type Item { id: ID! }
"#,
        &[("flaky", &flaky.url), ("down", &down), ("good", &good.url)],
        "",
        r#"
[services.flaky.retry]
attempts = 1

[services.down.retry]
attempts = 1
"#,
    )
    .await;
    let base = gw.url();
    // Warm: the last good answer of `warm` is kept although it has no `cache`.
    let (_, _, body) = post(&client(), &base, "{ warm { id } }", Value::Null).await;
    assert_eq!(body, json!({"data": {"warm": {"id": "fresh /warm"}}}));

    up.store(false, Ordering::SeqCst);
    let (status, _, body) = post(
        &client(),
        &base,
        "{ warm { id } cold { id } list { id } obj { id } plain { id } down { id } downList { id } good { id } }",
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let data = &body["data"];
    assert_eq!(data["warm"], json!({"id": "fresh /warm"}), "{body}");
    assert_eq!(data["cold"], Value::Null, "{body}");
    assert_eq!(data["list"], json!([]), "{body}");
    assert_eq!(data["obj"], json!({"id": "unknown"}), "{body}");
    assert_eq!(data["plain"], Value::Null, "{body}");
    assert_eq!(data["down"], Value::Null, "{body}");
    assert_eq!(data["downList"], json!([]), "{body}");
    assert_eq!(data["good"], json!({"id": "/good"}), "{body}");

    assert_eq!(error_count(&body), 3, "cold, plain and down fail: {body}");
    let plain = error_at(&body, "plain");
    assert_eq!(plain["extensions"]["code"], "UPSTREAM_UNAVAILABLE", "{body}");
    assert_eq!(plain["extensions"]["status"], 503, "{body}");
    assert_eq!(
        error_at(&body, "cold")["extensions"]["code"],
        "UPSTREAM_UNAVAILABLE"
    );
    assert_eq!(
        error_at(&body, "down")["extensions"]["code"],
        "UPSTREAM_UNAVAILABLE"
    );

    for (path, reason, fallback) in [
        ("warm", "UPSTREAM_UNAVAILABLE", "stale"),
        ("cold", "UPSTREAM_UNAVAILABLE", "none"),
        ("list", "UPSTREAM_UNAVAILABLE", "literal"),
        ("obj", "UPSTREAM_UNAVAILABLE", "literal"),
        ("plain", "UPSTREAM_UNAVAILABLE", "none"),
        ("down", "UPSTREAM_UNAVAILABLE", "none"),
        ("downList", "UPSTREAM_UNAVAILABLE", "literal"),
    ] {
        let entry = degraded_at(&body, &[path]);
        assert_eq!(entry["reason"], reason, "{path}: {entry}");
        assert_eq!(entry["fallback"], fallback, "{path}: {entry}");
    }
    assert_eq!(
        body["extensions"]["degraded"].as_array().unwrap().len(),
        7,
        "only failed fields are degraded: {body}"
    );
}

/// 404 is null without an error; another 4xx is UPSTREAM_REJECTED whatever the fallback; a 5xx
/// is UPSTREAM_UNAVAILABLE with the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_statuses_map_to_error_codes() {
    let backend = Backend::start(|seen: Seen| async move {
        match seen.path.as_str() {
            "/missing" => json_reply(404, &json!({"error": "not found"})),
            "/bad" => json_reply(400, &json!({"error": "bad"})),
            "/boom" => json_reply(500, &json!({"error": "boom"})),
            _ => json_reply(200, &json!({"id": "ok"})),
        }
    })
    .await;
    let gw = start(
        r#"
type Query {
  missing: Item @http(service: "svc", path: "/missing")
  rejected: Item @http(service: "svc", path: "/bad", fallback: "{\"id\":\"fallback\"}")
  broken: Item @http(service: "svc", path: "/boom")
  ok: Item @http(service: "svc", path: "/ok")
}
type Item { id: ID! }
"#,
        &[("svc", &backend.url)],
        "",
        "\n[services.svc.retry]\nattempts = 1\n",
    )
    .await;
    let (status, _, body) = post(
        &client(),
        &gw.url(),
        "{ missing { id } rejected { id } broken { id } ok { id } }",
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"],
        json!({"missing": null, "rejected": null, "broken": null, "ok": {"id": "ok"}}),
        "{body}"
    );
    assert_eq!(error_count(&body), 2, "a 404 is no error: {body}");
    let rejected = error_at(&body, "rejected");
    assert_eq!(rejected["extensions"]["code"], "UPSTREAM_REJECTED");
    assert_eq!(rejected["extensions"]["status"], 400);
    let broken = error_at(&body, "broken");
    assert_eq!(broken["extensions"]["code"], "UPSTREAM_UNAVAILABLE");
    assert_eq!(broken["extensions"]["status"], 500);
}

/// Once the service's breaker opens, a field fails with CIRCUIT_OPEN and no call is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_fails_fields_with_circuit_open() {
    let backend = Backend::start(|_| async { json_reply(503, &json!({"error": "down"})) }).await;
    let gw = start(
        r#"
type Query { item: Item @http(service: "svc", path: "/item") }
type Item { id: ID! }
"#,
        &[("svc", &backend.url)],
        "",
        r#"
[services.svc.retry]
attempts = 1

[services.svc.circuit_breaker]
failure_rate = 0.5
min_requests = 2
open_for = "60s"
"#,
    )
    .await;
    for _ in 0..2 {
        let (_, _, body) = post(&client(), &gw.url(), "{ item { id } }", Value::Null).await;
        assert_eq!(
            error_at(&body, "item")["extensions"]["code"],
            "UPSTREAM_UNAVAILABLE",
            "{body}"
        );
    }
    assert_eq!(backend.hits(), 2);
    let (status, _, body) = post(&client(), &gw.url(), "{ item { id } }", Value::Null).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["item"], Value::Null);
    assert_eq!(
        error_at(&body, "item")["extensions"]["code"],
        "CIRCUIT_OPEN",
        "{body}"
    );
    assert_eq!(degraded_at(&body, &["item"])["fallback"], "none");
    assert_eq!(backend.hits(), 2, "an open breaker still called the backend");
}

// ---------------------------------------------------------------------------------------------
// 6. Timeouts

/// A field's own timeout bounds its call: a 2 s backend costs a 100 ms field 100 ms, answered
/// by its fallback or with UPSTREAM_TIMEOUT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_timeout_cuts_a_slow_backend_short() {
    let slow = slow_backend(Duration::from_secs(2), json!([{"id": "late"}])).await;
    let good = path_echo().await;
    let gw = start(
        r#"
type Query {
  recommended: [Item!]! @http(service: "slow", path: "/list", timeout: "100ms", fallback: "[]")
  one: Item @http(service: "slow", path: "/one", timeout: "100ms")
  good: Item @http(service: "good", path: "/good")
}
type Item { id: ID! }
"#,
        &[("slow", &slow.url), ("good", &good.url)],
        "",
        "",
    )
    .await;
    let started = Instant::now();
    let (status, _, body) = post(
        &client(),
        &gw.url(),
        "{ recommended { id } one { id } good { id } }",
        Value::Null,
    )
    .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1000),
        "the field timeouts did not cut the call: {took:?}"
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"],
        json!({"recommended": [], "one": null, "good": {"id": "/good"}}),
        "{body}"
    );
    assert_eq!(
        error_at(&body, "one")["extensions"]["code"],
        "UPSTREAM_TIMEOUT",
        "{body}"
    );
    assert_eq!(error_count(&body), 1, "{body}");
    let entry = degraded_at(&body, &["recommended"]);
    assert_eq!(entry["reason"], "UPSTREAM_TIMEOUT");
    assert_eq!(entry["fallback"], "literal");
    assert_eq!(degraded_at(&body, &["one"])["fallback"], "none");
}

// ---------------------------------------------------------------------------------------------
// 7. Limits

const NODE_SDL: &str = r#"
type Query {
  node: Node @http(service: "svc", path: "/node")
}
type Node {
  id: ID!
  child: Node
}
"#;

/// Every limit refuses the operation before it runs: a request error (400 in the GraphQL
/// response media type) with its code, and not one backend call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refuse_operations_without_calling_a_backend() {
    let backend = Backend::constant(json!({"id": "n"})).await;
    let gw = start(NODE_SDL, &[("svc", &backend.url)], "", "").await;
    let base = gw.url();

    let deep = format!("{{ node {{ {}id{} }} }}", "child { ".repeat(20), " }".repeat(20));
    let roots: String = (0..21).map(|i| format!("n{i}: node {{ id }} ")).collect();
    let aliases: String = (0..1000).map(|i| format!("a{i}: id ")).collect();
    let complex = format!("{{ node {{ {} }} }}", "id ".repeat(1100));
    let big = format!("{{ node {{ id }} }}\n#{}", "x".repeat(70 * 1024));
    let tokens = format!("{{ node {{ {} }} }}", "id ".repeat(6000));
    for (what, query, code) in [
        ("depth 21", deep, "GRAPHQL_VALIDATION_FAILED"),
        ("21 root fields", format!("{{ {roots} }}"), "TOO_MANY_ROOT_FIELDS"),
        (
            "1000 aliases",
            format!("{{ node {{ {aliases} }} }}"),
            "TOO_MANY_ALIASES",
        ),
        ("complexity 1100", complex, "GRAPHQL_VALIDATION_FAILED"),
        ("70 KiB query", big, "QUERY_TOO_LARGE"),
        ("6000 tokens", tokens, "QUERY_TOO_LARGE"),
    ] {
        assert!(query.len() < 1 << 20);
        let (status, headers, body) = post(&client(), &base, &query, Value::Null).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(headers["content-type"], GRAPHQL_RESPONSE, "{what}");
        assert_eq!(request_error_code(&body), code, "{what}: {body}");
    }

    // A batch with batching off.
    let batch = json!([{"query": "{ node { id } }"}, {"query": "{ node { id } }"}]);
    let (status, _, body) = post_with(
        &client(),
        &base,
        &batch,
        &[("accept", "application/graphql-response+json")],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(request_error_code(&body), "BAD_REQUEST", "{body}");

    assert_eq!(backend.hits(), 0, "a refused operation reached the backend");
    // The same gateway answers an operation within the limits.
    let (status, _, body) = post(&client(), &base, "{ node { id } }", Value::Null).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"data": {"node": {"id": "n"}}}))
    );
}

// ---------------------------------------------------------------------------------------------
// 8. CSRF

/// Requests a browser could send cross-site without a preflight are refused before anything
/// runs; JSON POSTs and GETs with a preflight header pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csrf_prevention_refuses_simple_requests() {
    let backend = Backend::constant(json!({"id": "n"})).await;
    let gw = start(NODE_SDL, &[("svc", &backend.url)], "", "").await;
    let url = format!("{}/graphql", gw.url());
    let http = client();
    let query = "{ node { id } }";
    let body = json!({ "query": query }).to_string();

    let get = http.get(&url).query(&[("query", query)]);
    error_body(send_in_time(get).await, 400, "CSRF_REJECTED").await;
    for content_type in [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let request = http
            .post(&url)
            .header("content-type", content_type)
            .body(body.clone());
        error_body(send_in_time(request).await, 400, "CSRF_REJECTED").await;
    }
    let no_type = http.post(&url).body(body.clone());
    error_body(send_in_time(no_type).await, 400, "CSRF_REJECTED").await;
    assert_eq!(backend.hits(), 0, "a refused request reached the backend");

    let json_post = http
        .post(&url)
        .header("content-type", "application/json")
        .body(body.clone());
    let (status, _, answer) = read(send_in_time(json_post).await).await;
    assert_eq!(
        (status, answer),
        (StatusCode::OK, json!({"data": {"node": {"id": "n"}}}))
    );
    for preflight in [
        "apollo-require-preflight",
        "x-apollo-operation-name",
        "graphql-require-preflight",
    ] {
        let get = http
            .get(&url)
            .query(&[("query", query)])
            .header(preflight, "true");
        let (status, _, answer) = read(send_in_time(get).await).await;
        assert_eq!(status, 200, "{preflight}: {answer}");
        assert_eq!(answer, json!({"data": {"node": {"id": "n"}}}), "{preflight}");
    }
    // A preflighted text/plain POST passes CSRF, then is not JSON: 415.
    let plain = http
        .post(&url)
        .header("content-type", "text/plain")
        .header("apollo-require-preflight", "true")
        .body(body.clone());
    error_body(send_in_time(plain).await, 415, "UNSUPPORTED_MEDIA_TYPE").await;
    assert_eq!(backend.hits(), 4);
}

// ---------------------------------------------------------------------------------------------
// 9. Null propagation

/// A failed `String!` nulls its nullable parent object; a failed non-null root field nulls
/// `data`. Either way one error, with its path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_non_null_field_nulls_its_nearest_nullable_parent() {
    let good = Backend::start(|seen: Seen| async move { json_reply(200, &json!({"id": seen.path})) }).await;
    let down = dead_url();
    let gw = start(
        r#"
type Query {
  account: Account @http(service: "good", path: "/account")
  other: Item @http(service: "good", path: "/other")
  must: String! @http(service: "down", path: "/must")
}
type Account {
  id: ID!
  name: String! @http(service: "down", path: "/name")
}
type Item { id: ID! }
"#,
        &[("good", &good.url), ("down", &down)],
        "",
        "\n[services.down.retry]\nattempts = 1\n",
    )
    .await;
    let (status, _, body) = post(
        &client(),
        &gw.url(),
        "{ account { id name } other { id } }",
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"],
        json!({"account": null, "other": {"id": "/other"}}),
        "{body}"
    );
    assert_eq!(error_count(&body), 1, "{body}");
    assert_eq!(
        error_at(&body, "account.name")["extensions"]["code"],
        "UPSTREAM_UNAVAILABLE"
    );

    let (status, _, body) = post(&client(), &gw.url(), "{ other { id } must }", Value::Null).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"], Value::Null, "{body}");
    assert_eq!(error_count(&body), 1, "{body}");
    assert_eq!(
        error_at(&body, "must")["extensions"]["code"],
        "UPSTREAM_UNAVAILABLE"
    );
}

// ---------------------------------------------------------------------------------------------
// 10. @auth

/// `@auth` on a field or a type: a caller without it (or its scopes) gets null and FORBIDDEN for
/// that field alone, and the field's backend is not called; a caller with the scopes gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_guards_single_fields() {
    let backend = Backend::start(|seen: Seen| async move {
        json_reply(200, &json!({"id": seen.path, "email": "ada@example.com"}))
    })
    .await;
    let gw = start(
        r#"
type Query {
  public: Item @http(service: "svc", path: "/public")
  secret: Item @http(service: "svc", path: "/secret") @auth
  orders: Item @http(service: "svc", path: "/orders") @auth(scopes: ["orders:read"])
  admin: Admin @http(service: "svc", path: "/admin")
}
type Item {
  id: ID!
  email: String @auth
}
type Admin @auth(scopes: ["admin"]) {
  id: ID!
}
"#,
        &[("svc", &backend.url)],
        "",
        &auth_tables(),
    )
    .await;
    let base = gw.url();
    let query = "{ public { id email } secret { id } orders { id } admin { id } }";

    let (status, _, body) = post(&client(), &base, query, Value::Null).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"],
        json!({"public": {"id": "/public", "email": null}, "secret": null, "orders": null, "admin": null}),
        "{body}"
    );
    assert_eq!(error_count(&body), 4, "{body}");
    for path in ["public.email", "secret", "orders", "admin"] {
        assert_eq!(
            error_at(&body, path)["extensions"]["code"],
            "FORBIDDEN",
            "{path}: {body}"
        );
    }
    let paths: Vec<String> = backend.seen().iter().map(|s| s.path.clone()).collect();
    assert_eq!(paths, ["/public"], "a forbidden field called its backend");

    let (status, body) = post_as(&base, &token("alice", "orders:read"), query).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"],
        json!({
            "public": {"id": "/public", "email": "ada@example.com"},
            "secret": {"id": "/secret"},
            "orders": {"id": "/orders"},
            "admin": null,
        }),
        "{body}"
    );
    assert_eq!(error_count(&body), 1, "{body}");
    assert_eq!(error_at(&body, "admin")["extensions"]["code"], "FORBIDDEN");

    let (_, body) = post_as(&base, &token("root", "orders:read admin"), query).await;
    assert_eq!(body["data"]["admin"], json!({"id": "/admin"}), "{body}");
    assert!(body.get("errors").is_none(), "{body}");
}

// ---------------------------------------------------------------------------------------------
// 11. Mutations

const USERS_SDL: &str = r#"
type Query {
  user(id: ID!): User @http(service: "users", path: "/users/{args.id}")
}
type Mutation {
  createUser(input: NewUser!): User
    @http(service: "users", method: "POST", path: "/users", body: "{args.input}")
  failUser(input: NewUser!): User
    @http(service: "flaky", method: "POST", path: "/fail", body: "{args.input}")
}
input NewUser {
  name: String!
  email: String!
}
type User {
  id: ID!
  name: String!
  email: String
}
"#;

/// Without a `schema { ... }` block, the type named `Mutation` is the mutation root (GraphQL
/// spec, "Root Operation Types"; the demo schema relies on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_named_mutation_is_the_mutation_root() {
    let users = Backend::start(|seen: Seen| async move {
        let mut user = seen.json();
        user["id"] = json!("u1");
        json_reply(201, &user)
    })
    .await;
    let gw = start(USERS_SDL, &[("users", &users.url), ("flaky", &users.url)], "", "").await;
    let create = "mutation($input: NewUser!) { createUser(input: $input) { id name } }";
    let input = json!({"name": "Ada", "email": "ada@example.com"});
    let (status, _, body) = post(&client(), &gw.url(), create, json!({ "input": input })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"data": {"createUser": {"id": "u1", "name": "Ada"}}}));
    assert_eq!(users.hits(), 1);
}

/// A mutation POSTs its input as JSON; it cannot run over GET; a failed POST is not retried
/// unless the client sent an Idempotency-Key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutations_post_json_and_are_retried_only_with_an_idempotency_key() {
    let users = Backend::start(|seen: Seen| async move {
        let mut user = seen.json();
        user["id"] = json!("u1");
        json_reply(201, &user)
    })
    .await;
    let flaky = Backend::start(|_| async { json_reply(503, &json!({"error": "down"})) }).await;
    // The explicit schema block keeps this test independent of the default root type names
    // (see `a_type_named_mutation_is_the_mutation_root`).
    let gw = start(
        &format!("schema {{ query: Query mutation: Mutation }}\n{USERS_SDL}"),
        &[("users", &users.url), ("flaky", &flaky.url)],
        "",
        r#"
[services.flaky.retry]
attempts = 3
on = ["503"]
backoff = "1ms"
"#,
    )
    .await;
    let base = gw.url();
    let create = "mutation($input: NewUser!) { createUser(input: $input) { id name email } }";
    let input = json!({"name": "Ada", "email": "ada@example.com"});
    let (status, _, body) = post(&client(), &base, create, json!({ "input": input })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"data": {"createUser": {"id": "u1", "name": "Ada", "email": "ada@example.com"}}})
    );
    let seen = users.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/users");
    assert_eq!(
        seen[0].header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(seen[0].json(), input);

    // Over GET: 405, POST allowed, nothing called.
    let get = client()
        .get(format!("{base}/graphql"))
        .query(&[(
            "query",
            r#"mutation { createUser(input: {name: "A", email: "a@b"}) { id } }"#,
        )])
        .header("apollo-require-preflight", "true");
    let response = send_in_time(get).await;
    assert_eq!(common::header(&response, "allow").as_deref(), Some("POST"));
    error_body(response, 405, "METHOD_NOT_ALLOWED").await;
    assert_eq!(users.hits(), 1);

    // A failing POST: once, despite `attempts = 3`.
    let fail = "mutation($input: NewUser!) { failUser(input: $input) { id } }";
    let (status, _, body) = post(&client(), &base, fail, json!({ "input": input })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["failUser"], Value::Null, "{body}");
    assert_eq!(
        error_at(&body, "failUser")["extensions"]["code"],
        "UPSTREAM_UNAVAILABLE"
    );
    assert_eq!(flaky.hits(), 1, "a POST without an Idempotency-Key was retried");

    // With an Idempotency-Key: three attempts, each carrying the key.
    let (_, _, body) = post_with(
        &client(),
        &base,
        &json!({"query": fail, "variables": {"input": input}}),
        &[
            ("accept", "application/graphql-response+json"),
            ("idempotency-key", "key-123"),
        ],
    )
    .await;
    assert_eq!(
        error_at(&body, "failUser")["extensions"]["code"],
        "UPSTREAM_UNAVAILABLE"
    );
    assert_eq!(
        flaky.hits(),
        4,
        "an idempotent POST was not retried: {:?}",
        flaky.seen()
    );
    for attempt in &flaky.seen()[1..] {
        assert_eq!(attempt.header("idempotency-key").as_deref(), Some("key-123"));
        assert_eq!(attempt.json(), input);
    }
}

// ---------------------------------------------------------------------------------------------
// 12. GraphQL over HTTP

/// The response media type follows Accept; request errors are 400 in the GraphQL response media
/// type and 200 in legacy JSON; malformed bodies are 400; GET runs queries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_over_http_media_types_and_statuses() {
    let backend = Backend::constant(json!({"id": "n"})).await;
    let gw = start(NODE_SDL, &[("svc", &backend.url)], "", "").await;
    let base = gw.url();
    let http = client();
    const NEW: &str = "application/graphql-response+json";
    const LEGACY: &str = "application/json";
    let ok = json!({"data": {"node": {"id": "n"}}});

    // A good query in each media type.
    for (accept, content_type) in [
        (NEW, GRAPHQL_RESPONSE),
        (LEGACY, JSON),
        (
            "application/graphql-response+json, application/json;q=0.9",
            GRAPHQL_RESPONSE,
        ),
        ("application/json, application/graphql-response+json;q=0.5", JSON),
    ] {
        let (status, headers, body) = post_with(
            &http,
            &base,
            &json!({"query": "{ node { id } }"}),
            &[("accept", accept)],
        )
        .await;
        assert_eq!(status, 200, "{accept}: {body}");
        assert_eq!(headers["content-type"], content_type, "{accept}");
        assert_eq!(body, ok, "{accept}");
    }

    // Parse and validation errors.
    for (query, code) in [
        ("{ node { id ", "GRAPHQL_PARSE_FAILED"),
        ("{ nope }", "GRAPHQL_VALIDATION_FAILED"),
        ("{ node }", "GRAPHQL_VALIDATION_FAILED"),
    ] {
        let body = json!({ "query": query });
        let (status, headers, answer) = post_with(&http, &base, &body, &[("accept", NEW)]).await;
        assert_eq!(status, 400, "{query}: {answer}");
        assert_eq!(headers["content-type"], GRAPHQL_RESPONSE);
        assert_eq!(request_error_code(&answer), code, "{query}: {answer}");
        let (status, headers, answer) = post_with(&http, &base, &body, &[("accept", LEGACY)]).await;
        assert_eq!(status, 200, "{query}: {answer}");
        assert_eq!(headers["content-type"], JSON);
        assert_eq!(request_error_code(&answer), code, "{query}: {answer}");
    }

    // Malformed bodies are 400 in either media type.
    for accept in [NEW, LEGACY] {
        for raw in ["not json", "{\"variables\": {}}", "[1, 2]", "{\"query\": 42}"] {
            let request = http
                .post(format!("{base}/graphql"))
                .header("content-type", "application/json")
                .header("accept", accept)
                .body(raw);
            let (status, _, answer) = read(send_in_time(request).await).await;
            assert_eq!(status, 400, "{accept} {raw}: {answer}");
            assert_eq!(
                request_error_code(&answer),
                "BAD_REQUEST",
                "{accept} {raw}: {answer}"
            );
        }
    }

    // A JSON-looking body in another media type.
    let xml = http
        .post(format!("{base}/graphql"))
        .header("content-type", "application/xml")
        .body(json!({"query": "{ node { id } }"}).to_string());
    error_body(send_in_time(xml).await, 415, "UNSUPPORTED_MEDIA_TYPE").await;

    // GET with variables.
    let get = http
        .get(format!("{base}/graphql"))
        .query(&[
            (
                "query",
                "query Q($skip: Boolean!) { node { id child @skip(if: $skip) { id } } }",
            ),
            ("variables", r#"{"skip": true}"#),
            ("operationName", "Q"),
        ])
        .header("apollo-require-preflight", "true")
        .header("accept", NEW);
    let (status, headers, body) = read(send_in_time(get).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["content-type"], GRAPHQL_RESPONSE);
    assert_eq!(body, ok);
    assert_eq!(backend.hits(), 5);
}

// ---------------------------------------------------------------------------------------------
// 13. Headers upstream

/// Each backend call carries the client's request id and trace context.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_calls_carry_the_request_id_and_trace_context() {
    let a = path_echo().await;
    let b = path_echo().await;
    let gw = start(
        r#"
type Query {
  a: Item @http(service: "a", path: "/a")
  b: Item @http(service: "b", path: "/b", forward_identity: false)
}
type Item { id: ID! }
"#,
        &[("a", &a.url), ("b", &b.url)],
        "",
        "",
    )
    .await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (status, headers, body) = post_with(
        &client(),
        &gw.url(),
        &json!({"query": "{ a { id } b { id } }"}),
        &[("x-request-id", "gql-test-42"), ("traceparent", traceparent)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-request-id"], "gql-test-42");
    for backend in [&a, &b] {
        let seen = backend.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].header("x-request-id").as_deref(), Some("gql-test-42"));
        assert_eq!(seen[0].header("traceparent").as_deref(), Some(traceparent));
    }
    // Without a request id or a (valid) traceparent from the client: the request id is the
    // gateway's own, as the client sees it, and every call of the request joins one trace of the
    // request's own.
    for client_trace in [None, Some("not-a-traceparent")] {
        let extra: Vec<(&str, &str)> = client_trace.iter().map(|t| ("traceparent", *t)).collect();
        let (_, headers, body) = post_with(
            &client(),
            &gw.url(),
            &json!({"query": "{ a { id } b { id } }"}),
            &extra,
        )
        .await;
        assert!(body.get("errors").is_none(), "{body}");
        let id = headers["x-request-id"].to_str().unwrap();
        let (call_a, call_b) = (a.seen().pop().unwrap(), b.seen().pop().unwrap());
        assert_eq!(call_a.header("x-request-id").as_deref(), Some(id));
        assert_eq!(call_b.header("x-request-id").as_deref(), Some(id));
        let trace_a = call_a.header("traceparent").expect("no traceparent upstream");
        let trace_b = call_b.header("traceparent").expect("no traceparent upstream");
        let parts: Vec<&str> = trace_a.split('-').collect();
        assert!(
            parts.len() == 4
                && parts[0] == "00"
                && parts[1].len() == 32
                && parts[2].len() == 16
                && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
                && parts[1] != "0".repeat(32),
            "not a W3C traceparent: {trace_a}"
        );
        assert_ne!(
            Some(trace_a.as_str()),
            client_trace,
            "an invalid traceparent was passed on"
        );
        assert_eq!(
            trace_a.split('-').nth(1),
            trace_b.split('-').nth(1),
            "the calls of one request are in different traces"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 14. Batched operations

/// With `batching = true` a JSON array of operations answers an array of results, in order; each
/// operation past the first counts against the rate limit, before any runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_operations_answer_in_order_and_count_against_the_rate_limit() {
    let backend = path_echo().await;
    let sdl = r#"
type Query {
  a: Item @http(service: "svc", path: "/a")
  b: Item @http(service: "svc", path: "/b")
}
type Item { id: ID! }
"#;
    let gw = start(
        sdl,
        &[("svc", &backend.url)],
        "batching = true\nmax_batch = 3",
        "",
    )
    .await;
    let batch = json!([{"query": "{ a { id } }"}, {"query": "query B { b { id } }", "operationName": "B"}]);
    let (status, headers, body) = post_with(&client(), &gw.url(), &batch, &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        headers["content-type"].to_str().unwrap().contains("json"),
        "{headers:?}"
    );
    assert_eq!(
        body,
        json!([{"data": {"a": {"id": "/a"}}}, {"data": {"b": {"id": "/b"}}}])
    );
    assert_eq!(backend.hits(), 2);
    // More than max_batch.
    let four = Value::Array(vec![json!({"query": "{ a { id } }"}); 4]);
    let (status, _, body) = post_with(&client(), &gw.url(), &four, &[]).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(request_error_code(&body), "BAD_REQUEST");
    assert_eq!(backend.hits(), 2);

    let limited = path_echo().await;
    let gw = start(
        sdl,
        &[("svc", &limited.url)],
        "batching = true\nrate_limit = \"tight\"",
        r#"
[rate_limits.tight]
requests = 2
per = "1m"
burst = 2
key = "global"
"#,
    )
    .await;
    let three = Value::Array(vec![json!({"query": "{ a { id } }"}); 3]);
    let request = client()
        .post(format!("{}/graphql", gw.url()))
        .header("content-type", "application/json")
        .body(three.to_string());
    error_body(send_in_time(request).await, 429, "RATE_LIMITED").await;
    assert_eq!(limited.hits(), 0, "an over-limit batch reached the backend");
}

// ---------------------------------------------------------------------------------------------
// Templates and @from

/// `{args.x}`, `{parent.x}`, `{identity.sub}` and `{identity.claims.x}` reach the backend,
/// URL-encoded in the path and query and as they are in headers; `@from` reads another key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_render_arguments_parents_and_identity() {
    let backend = Backend::start(|seen: Seen| async move {
        if seen.path == "/friends" {
            json_reply(200, &json!([{"id": "f1", "profile": {"first_name": "Grace"}}]))
        } else {
            json_reply(200, &json!({"id": "u1", "profile": {"first_name": "Ada"}}))
        }
    })
    .await;
    let gw = start(
        r#"
type Query {
  viewer: User
    @http(service: "svc", path: "/users/{identity.sub}", query: {tenant: "{identity.claims.tenant}"})
    @auth
  user(id: ID!): User @http(service: "svc", path: "/users/{args.id}", headers: {x_asked_for: "{args.id}"})
}
type User {
  id: ID!
  firstName: String @from(key: "profile.first_name")
  friends: [User!]! @http(service: "svc", path: "/friends", query: {of: "{parent.id}"})
}
"#,
        &[("svc", &backend.url)],
        "",
        &auth_tables(),
    )
    .await;
    let (status, _, body) = post(
        &client(),
        &gw.url(),
        "query($id: ID!) { user(id: $id) { id firstName friends { id firstName } } }",
        json!({"id": "a/b c?d"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"data": {"user": {"id": "u1", "firstName": "Ada", "friends": [{"id": "f1", "firstName": "Grace"}]}}})
    );
    let seen = backend.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].path, "/users/a%2Fb%20c%3Fd");
    // `_` in a header name is sent as `-` (GraphQL names cannot hold `-`).
    assert_eq!(seen[0].header("x-asked-for").as_deref(), Some("a/b c?d"));
    assert_eq!(seen[1].path, "/friends");
    assert_eq!(seen[1].params("of"), ["u1"]);

    let now = unix_now();
    let claims = json!({
        "iss": ISS, "aud": AUD, "sub": "alice@example.com", "iat": now, "exp": now + 3600,
        "tenant": "acme & co",
    });
    let token = hs256_token(SECRET, "hs", &claims);
    let (status, body) = post_as(&gw.url(), &token, "{ viewer { id firstName } }").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"data": {"viewer": {"id": "u1", "firstName": "Ada"}}})
    );
    let call = backend.seen().pop().unwrap();
    assert_eq!(call.path, "/users/alice%40example.com");
    assert_eq!(call.params("tenant"), ["acme & co"]);
    assert_eq!(call.header("x-user-id").as_deref(), Some("alice@example.com"));
}

// ---------------------------------------------------------------------------------------------
// 15. gateway check

/// Runs `gateway-cli check --config <path>`; returns (exit code, stdout, stderr).
fn check(config: &Path) -> (Option<i32>, String, String) {
    let (status, stdout, stderr) = run_to_end(check_command(config));
    (status.code(), stdout, stderr)
}

/// A directory holding a `schema` directory of `files` and a config naming it, removed when the
/// returned guard drops; returns the guard and the config's path.
fn config_with_schema(files: &[(&str, &str)]) -> (TempDir, PathBuf) {
    let dir = common::temp_dir("graphql-test");
    let schema = dir.path().join("schema");
    std::fs::create_dir(&schema).unwrap();
    for (name, text) in files {
        std::fs::write(schema.join(name), text).unwrap();
    }
    let config = dir.path().join("routes.toml");
    std::fs::write(
        &config,
        format!(
            "[services.svc]\nurls = [\"http://127.0.0.1:9\"]\n{}",
            graphql_table(&schema, "")
        ),
    )
    .unwrap();
    (dir, config)
}

const UNKNOWN_SERVICE: &str = "type Query {\n  a: String @http(service: \"nope\")\n}\n";
const SYNTAX_ERROR: &str = "type Broken {\n  id: ID!\n  oops(\n}\n";

#[test]
fn check_locates_an_unknown_service_in_the_schema() {
    let (_dir, config) = config_with_schema(&[("schema.graphql", UNKNOWN_SERVICE)]);
    let (code, stdout, stderr) = check(&config);
    assert_eq!(code, Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains("schema.graphql:2:28: error:") && stderr.contains("nope"),
        "stderr:\n{stderr}"
    );
}

#[test]
fn check_locates_a_schema_syntax_error() {
    let (_dir, config) = config_with_schema(&[
        ("broken.graphql", SYNTAX_ERROR),
        (
            "schema.graphql",
            "type Query { a: String @http(service: \"svc\") }\n",
        ),
    ]);
    let (code, stdout, stderr) = check(&config);
    assert_eq!(code, Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("broken.graphql:4:"), "stderr:\n{stderr}");
}

/// A syntax error in one file and an unknown service in another: both at once, each located.
#[test]
fn check_reports_a_syntax_error_and_an_unknown_service_together() {
    let (_dir, config) = config_with_schema(&[
        ("broken.graphql", SYNTAX_ERROR),
        ("schema.graphql", UNKNOWN_SERVICE),
    ]);
    let (code, stdout, stderr) = check(&config);
    assert_eq!(code, Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains("broken.graphql:4:"),
        "the syntax error is missing:\n{stderr}"
    );
    assert!(
        stderr.contains("schema.graphql:2:28: error:"),
        "the unknown service is missing:\n{stderr}"
    );
}

/// A name defined twice (a field, in one definition or in an `extend type` in another file, an
/// argument, an input field, an enum value) is an error located where it is defined again, not
/// a crash: async-graphql's schema builder panics on a repeated field, and a hot reload goes
/// through the same check. An error in an extension (a field's, an argument's, an input field's,
/// the type's directive's) is located in the extension's file.
#[test]
fn check_reports_names_defined_twice() {
    let first = r#"type Query {
  a: String @http(service: "svc")
  a: Int @http(service: "svc")
  b(x: Int, x: String): String @http(service: "svc")
}
input Filter {
  name: String
  name: Int
}
enum Color { RED RED }
"#;
    let second = r#"extend type Query @http(service: "svc") {
  a: String @http(service: "svc")
  c: String @http(service: "nope")
  d(y: Nope): String @http(service: "svc")
}
extend input Filter { z: Nope }
"#;
    let (_dir, config) = config_with_schema(&[("a.graphql", first), ("b.graphql", second)]);
    let (code, stdout, stderr) = check(&config);
    assert_eq!(code, Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "stderr:\n{stderr}");
    for (at, says) in [
        ("a.graphql:3:3:", "field Query.a is defined twice"),
        ("a.graphql:4:13:", "argument `x` of Query.b is defined twice"),
        ("a.graphql:8:3:", "input field Filter.name is defined twice"),
        ("a.graphql:10:18:", "enum value Color.RED is defined twice"),
        ("b.graphql:1:19:", "@http is not allowed on type Query"),
        ("b.graphql:2:3:", "field Query.a is defined twice"),
        ("b.graphql:3:28:", "nope"),
        ("b.graphql:4:8:", "unknown type Nope"),
        ("b.graphql:6:26:", "unknown type Nope"),
    ] {
        let line = stderr.lines().find(|l| l.contains(&format!("{at} error:")));
        assert!(
            line.is_some_and(|l| l.contains(says)),
            "no {at} error: ... {says}:\n{stderr}"
        );
    }
}

/// Operations to start from; selections to put in after a `{` (most keep the document valid and
/// reach the resolvers); and pieces to splice in anywhere: braces, spreads, fragments,
/// variables, directives, odd literals.
const SEED_OPERATIONS: [&str; 5] = [
    r#"{ user { id name orders { id items { quantity product { id name price } } } } products { id name } }"#,
    r#"query Q($id: ID!, $b: Boolean!) { product(id: $id) @include(if: $b) { id ...P } } fragment P on Product { name price }"#,
    r#"{ a: products { id } b: products { name } user { orders { items { product { price } } } } __typename }"#,
    r#"{ __schema { types { name fields { name args { name } } } } }"#,
    r#"query { user { ... on User { id name @skip(if: false) } } }"#,
];
const SELECTIONS: [&str; 10] = [
    "__typename ",
    "id ",
    "name ",
    "a: products { id } ",
    "user { orders { id } } ",
    "products @skip(if: true) { id } ",
    "product(id: \"p2\") { price } ",
    "... on Query { __typename } ",
    "items { product { name } } ",
    "x: user { y: name } ",
];
const PIECES: [&str; 16] = [
    "{",
    "}",
    "(",
    ")",
    "...",
    " on ",
    "$id",
    "@include(if: $b)",
    ":",
    "null",
    "\"p1\"",
    "-1",
    "99999999999999999999",
    "1e999",
    "fragment F on Query { ...F }",
    "\n#",
];

fn mutate_operation(rng: &mut Rng) -> String {
    let mut text = SEED_OPERATIONS[rng.below(SEED_OPERATIONS.len())].to_owned();
    for _ in 0..rng.below(4) {
        let at = text.floor_char_boundary(rng.below(text.len() + 1));
        match rng.below(4) {
            0 | 1 => {
                let braces: Vec<usize> = text.match_indices('{').map(|(i, _)| i + 1).collect();
                if !braces.is_empty() {
                    let after = braces[rng.below(braces.len())];
                    text.insert_str(after, &format!(" {}", SELECTIONS[rng.below(SELECTIONS.len())]));
                }
            }
            2 => text.insert_str(at, PIECES[rng.below(PIECES.len())]),
            _ => {
                let end = text.floor_char_boundary(at + 1 + rng.below(12));
                text.replace_range(at..end, "");
            }
        }
    }
    text
}

/// 400 operations mutated from valid ones (a fixed seed), alone, with variables or in batches,
/// against a schema with nested fan-out, batching, `@from` and a fallback: every one is answered
/// (200 with data or errors, or a 4xx), none breaks the connection (a panic in the handler
/// would) or answers 5xx, and a valid query still gets its data after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_operations_are_answered_never_crash() {
    let users = Backend::start(|_| async { json_reply(200, &json!({"id": "u1", "name": "Ada"})) }).await;
    let orders = Backend::start(|_| async {
        json_reply(200, &json!([{"id": "o1", "items": [{"productId": "p1", "quantity": 2}, {"productId": "p2", "quantity": 1}]}]))
    })
    .await;
    let catalog = Backend::start(|_| async {
        json_reply(200, &json!([{"id": "p1", "name": "A", "priceCents": 100}, {"id": "p2", "name": "B", "priceCents": 250}]))
    })
    .await;
    let sdl = r#"
type Query {
  user: User @http(service: "users", path: "/u1")
  products: [Product!]! @http(service: "catalog", cache: "30s", fallback: "[]")
  product(id: ID!): Product @http(service: "catalog", path: "/{args.id}")
}
type User {
  id: ID!
  name: String!
  orders: [Order!]! @http(service: "orders", query: {userId: "{parent.id}"})
}
type Order { id: ID! items: [Item!]! }
type Item {
  productId: ID!
  quantity: Int!
  product: Product @http(service: "catalog", query: {ids: "{parent.productId}"}, batch: {key: "id"})
}
type Product { id: ID! name: String! price: Int! @from(key: "priceCents") }
"#;
    let services = [
        ("users", users.url.as_str()),
        ("orders", orders.url.as_str()),
        ("catalog", catalog.url.as_str()),
    ];
    let gw = start(
        sdl,
        &services,
        "batching = true\nmax_batch = 4\nintrospection = true",
        "",
    )
    .await;

    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let variables = [
        json!(null),
        json!({"id": "p1", "b": true}),
        json!({"id": "p2", "b": true}),
        json!({"id": ["x"]}),
        json!("x"),
        json!({"b": 1}),
    ];
    let one = |rng: &mut Rng| {
        let query = mutate_operation(rng);
        json!({"query": query, "variables": variables[rng.below(variables.len())]})
    };
    let bodies: Vec<Value> = (0..400)
        .map(|_| match rng.below(6) {
            0 => Value::Array((0..1 + rng.below(5)).map(|_| one(&mut rng)).collect()),
            _ => one(&mut rng),
        })
        .collect();
    let client = client();
    let url = gw.url();
    for chunk in bodies.chunks(8) {
        let answers = chunk.iter().map(|body| post_with(&client, &url, body, &[]));
        for ((status, _, answer), body) in futures_util::future::join_all(answers)
            .await
            .into_iter()
            .zip(chunk)
        {
            assert!(
                status.is_success() || status.is_client_error(),
                "{status} {answer} for {body}"
            );
            // A call's own task that panics is answered as a cancelled call, inside a 200.
            assert!(!answer.to_string().contains("INTERNAL"), "{answer} for {body}");
        }
    }

    let (status, _, body) = post(&client, &url, SEED_OPERATIONS[0], Value::Null).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"]["user"]["orders"][0]["items"][1]["product"]["price"], 250,
        "{body}"
    );
}

/// `x-gateway-calls: 1` with `expose_calls = true`: `extensions.calls` is the fan-out timeline
/// (each call's field path, service, start and duration, cache use); without either, nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_timings_show_the_fan_out_when_asked() {
    let delay = Duration::from_millis(100);
    let users = slow_backend(delay, json!({"id": "u1"})).await;
    let orders = slow_backend(delay, json!([{"id": "o1"}])).await;
    let recs = slow_backend(delay, json!([{"id": "p1"}])).await;
    let sdl = r#"
type Query { user: User @http(service: "users", path: "/u1") }
type User {
  id: ID!
  orders: [Item!]! @http(service: "orders", path: "/orders", cache: "1m")
  recommendations: [Item!]! @http(service: "recs", path: "/recs")
}
type Item { id: ID! }
"#;
    let services = [
        ("users", users.url.as_str()),
        ("orders", orders.url.as_str()),
        ("recs", recs.url.as_str()),
    ];
    let gw = start(sdl, &services, "expose_calls = true\n", "").await;
    let query = "{ user { id orders { id } recommendations { id } } }";
    let header = [("x-gateway-calls", "1")];
    let (status, _, body) = post_with(&client(), &gw.url(), &json!({"query": query}), &header).await;
    assert_eq!(status, 200, "{body}");
    let calls = body["extensions"]["calls"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(calls.len(), 3, "{body}");
    let call = |path: &str| {
        calls
            .iter()
            .find(|c| c["path"] == path)
            .unwrap_or_else(|| panic!("{path}: {body}"))
    };
    let (user, orders_call, recs_call) = (call("user"), call("user.orders"), call("user.recommendations"));
    assert_eq!(user["service"], "users");
    assert_eq!(orders_call["cache"], "miss");
    assert_eq!(recs_call["cache"], "none");
    let ms = |c: &Value, k: &str| c[k].as_f64().unwrap();
    assert!(ms(user, "duration_ms") >= 100.0, "{body}");
    // The children start when the user arrives, side by side.
    assert!(
        ms(orders_call, "start_ms") >= 100.0 && ms(recs_call, "start_ms") >= 100.0,
        "{body}"
    );
    assert!(
        (ms(orders_call, "start_ms") - ms(recs_call, "start_ms")).abs() < 50.0,
        "{body}"
    );
    // Again: the cached orders are a hit.
    let (_, _, body) = post_with(&client(), &gw.url(), &json!({"query": query}), &header).await;
    let calls = body["extensions"]["calls"].as_array().unwrap();
    assert!(
        calls
            .iter()
            .any(|c| c["path"] == "user.orders" && c["cache"] == "hit"),
        "{body}"
    );
    // Not asked: nothing.
    let (_, _, body) = post(&client(), &gw.url(), query, Value::Null).await;
    assert!(body.get("extensions").is_none(), "{body}");
    // Not allowed by the config: nothing, even when asked.
    let gw = start(sdl, &services, "", "").await;
    let (_, _, body) = post_with(&client(), &gw.url(), &json!({"query": query}), &header).await;
    assert!(body.get("extensions").is_none(), "{body}");
}
