//! Rate limiting end to end (README "Rate limiting"): GCRA bursts and their refill on a fake
//! clock, per-client / per-IP / global keys, claim tiers, the server's default policy, concurrent
//! callers, and counters shared by two gateways through a real `redis-server` that is killed, hung
//! and restarted mid-test.
//!
//! Backends count the requests they receive, so "a 429 never reaches the backend" is checked by
//! counting, not assumed.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use common::redis::{RedisServer, Reply};
use common::{client, error_body, gateway, gateway_with};
use gateway::RunningServer;
use gateway::ratelimit::LimiterClock;
use gateway::snapshot::Deps;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

const ISS: &str = "https://id.test";
const AUD: &str = "gateway";
const SECRET: &str = "test-secret-0123456789-abcdefghijklmnop";
/// The API key of the client whose id is "alice" (like a token subject below).
const ALICE_KEY: &str = "alice-api-key-0123456789abcdef";
/// Any request that gets no answer within this long fails its test.
const TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Tokens

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// An HS256 token for `sub`, valid for an hour, with `extra` claims.
fn token(sub: &str, extra: &[(&str, Value)]) -> String {
    let mut claims = json!({
        "iss": ISS,
        "aud": AUD,
        "sub": sub,
        "iat": now(),
        "exp": now() + 3600,
    });
    for (name, value) in extra {
        claims[*name] = value.clone();
    }
    common::hs256_token(SECRET, "hs", &claims)
}

// ---------------------------------------------------------------------------------------------
// A backend that counts what reaches it

struct Backend {
    url: String,
    hits: Arc<AtomicUsize>,
}

impl Backend {
    async fn start() -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let app = Router::new().fallback(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                "ok"
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

// ---------------------------------------------------------------------------------------------
// Configs

/// The counting backend as service `svc`, an HS256 key and the API key of "alice", then `rest`
/// (policies, `[server]`, routes, store).
fn config(backend: &str, rest: &str) -> String {
    let alice = hex::encode(Sha256::digest(ALICE_KEY.as_bytes()));
    format!(
        r#"
[services.svc]
urls = ["{backend}"]
timeout = "5s"

[auth.jwt]
issuers = ["{ISS}"]
audiences = ["{AUD}"]

[[auth.jwt.keys]]
kid = "hs"
algorithm = "HS256"
secret = "{SECRET}"

[[auth.api_keys]]
id = "alice"
sha256 = "{alice}"

{rest}
"#
    )
}

/// A public catch-all route using `policy`.
fn public_route(policy: &str) -> String {
    format!(
        r#"
[[routes]]
prefix = "/"
service = "svc"
auth = "none"
rate_limit = "{policy}"
"#
    )
}

/// `[rate_limits.NAME]` with `requests` per `per` and `burst`, counted per `key`.
fn policy(name: &str, requests: u32, per: &str, burst: u32, key: &str) -> String {
    format!(
        r#"
[rate_limits.{name}]
requests = {requests}
per = "{per}"
burst = {burst}
key = "{key}"
"#
    )
}

// ---------------------------------------------------------------------------------------------
// What a caller sees

/// The parts of an answer rate limiting is about. A 429's body has been checked already.
#[derive(Debug)]
struct Seen {
    status: u16,
    retry_after: Option<String>,
    policy: Option<String>,
    state: Option<String>,
}

impl Seen {
    /// `RateLimit: "<label>";r=<remaining>;t=<reset>`, parsed.
    fn state(&self) -> (String, u64, u64) {
        let state = self
            .state
            .as_deref()
            .unwrap_or_else(|| panic!("no RateLimit header: {self:?}"));
        parse_state(state).unwrap_or_else(|| panic!("malformed RateLimit header: {self:?}"))
    }

    fn retry_after(&self) -> u64 {
        self.retry_after
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no numeric Retry-After: {self:?}"))
    }

    fn has_no_ratelimit_headers(&self) -> bool {
        self.policy.is_none() && self.state.is_none()
    }
}

fn parse_state(state: &str) -> Option<(String, u64, u64)> {
    let mut parts = state.split(';');
    let label = parts.next()?.strip_prefix('"')?.strip_suffix('"')?.to_owned();
    let r = parts.next()?.strip_prefix("r=")?.parse().ok()?;
    let t = parts.next()?.strip_prefix("t=")?.parse().ok()?;
    parts.next().is_none().then_some((label, r, t))
}

/// Sends `request`; a 429 must be the gateway's `RATE_LIMITED` error in the SPEC.md format.
async fn send(request: reqwest::RequestBuilder) -> Seen {
    let response = common::send_in_time(request).await;
    let header = |name: &str| common::header(&response, name);
    let seen = Seen {
        status: response.status().as_u16(),
        retry_after: header("retry-after"),
        policy: header("ratelimit-policy"),
        state: header("ratelimit"),
    };
    if seen.status == 429 {
        error_body(response, 429, "RATE_LIMITED").await;
    } else {
        response.bytes().await.unwrap();
    }
    seen
}

fn statuses(seen: &[Seen]) -> Vec<u16> {
    seen.iter().map(|s| s.status).collect()
}

fn passed(seen: &[Seen]) -> usize {
    seen.iter().filter(|s| s.status == 200).count()
}

/// `n` times 200, then `m` times 429.
fn pass_then_deny(n: usize, m: usize) -> Vec<u16> {
    [vec![200; n], vec![429; m]].concat()
}

// ---------------------------------------------------------------------------------------------
// 1. Burst, 429, Retry-After and the RateLimit headers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_passes_then_429_with_retry_after_and_ratelimit_headers() {
    let backend = Backend::start().await;
    let toml = config(
        &backend.url,
        &(policy("default", 1, "1m", 5, "client") + &public_route("default")),
    );
    // A clock that stands still: every value below is exact, however slow the machine.
    let (clock, _fake) = LimiterClock::fake();
    let gw = gateway_with(&toml, &Deps { clock }).await;
    let http = client();

    let mut seen = Vec::new();
    for _ in 0..10 {
        seen.push(send(http.get(format!("{}/items", gw.url()))).await);
    }
    assert_eq!(statuses(&seen), pass_then_deny(5, 5), "{seen:#?}");
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.policy.as_deref(), Some(r#""default";q=1;w=60"#), "{s:?}");
        if i < 5 {
            // One request refills per minute: after the i-th, i+1 minutes until the bucket is full.
            let expected = format!(r#""default";r={};t={}"#, 4 - i, 60 * (i + 1));
            assert_eq!(s.state.as_deref(), Some(expected.as_str()), "request {i}");
            assert_eq!(s.retry_after, None, "request {i}");
        } else {
            assert_eq!(s.retry_after.as_deref(), Some("60"), "request {i}");
            assert_eq!(s.state.as_deref(), Some(r#""default";r=0;t=300"#), "request {i}");
        }
    }
    assert_eq!(backend.hits(), 5);
}

// ---------------------------------------------------------------------------------------------
// 2. Refill, on a fake clock

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_refills_one_request_per_interval_on_a_fake_clock() {
    let backend = Backend::start().await;
    let toml = config(
        &backend.url,
        &(policy("default", 1, "1m", 5, "client") + &public_route("default")),
    );
    let (clock, fake) = LimiterClock::fake();
    let gw = gateway_with(&toml, &Deps { clock }).await;
    let http = client();
    let get = async || send(http.get(gw.url())).await;
    let interval = Duration::from_secs(60);

    for remaining in (0..5).rev() {
        let s = get().await;
        assert_eq!(s.status, 200, "{s:?}");
        assert_eq!(s.state(), ("default".into(), remaining, 60 * (5 - remaining)));
    }
    let s = get().await;
    assert_eq!((s.status, s.retry_after()), (429, 60), "{s:?}");
    assert_eq!(s.state(), ("default".into(), 0, 300));

    // A millisecond early is still too early: Retry-After rounds up to a whole second.
    fake.advance(interval - Duration::from_millis(1));
    let s = get().await;
    assert_eq!((s.status, s.retry_after()), (429, 1), "{s:?}");
    assert_eq!(s.state(), ("default".into(), 0, 241));

    // One interval after the burst, exactly one more request passes.
    fake.advance(Duration::from_millis(1));
    let s = get().await;
    assert_eq!(s.status, 200, "{s:?}");
    assert_eq!(s.state(), ("default".into(), 0, 300));
    let s = get().await;
    assert_eq!((s.status, s.retry_after()), (429, 60), "{s:?}");

    // After `t` seconds the whole burst is back.
    fake.advance(Duration::from_secs(300));
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(get().await);
    }
    assert_eq!(statuses(&seen), pass_then_deny(5, 1), "{seen:#?}");
    assert_eq!(seen[0].state(), ("default".into(), 4, 60));
    assert_eq!(backend.hits(), 11);
}

// ---------------------------------------------------------------------------------------------
// 3. Clients are counted separately

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_flooding_does_not_use_up_anyone_elses_quota() {
    let backend = Backend::start().await;
    let rest = policy("default", 1, "1h", 5, "client")
        + r#"
[[routes]]
prefix = "/api"
service = "svc"
rate_limit = "default"

[[routes]]
prefix = "/open"
service = "svc"
auth = "optional"
rate_limit = "default"
"#;
    let gw = gateway(&config(&backend.url, &rest)).await;
    let http = client();
    let api = format!("{}/api/x", gw.url());

    let alice = token("alice", &[]);
    let mut flood = Vec::new();
    for _ in 0..200 {
        flood.push(send(http.get(&api).bearer_auth(&alice)).await);
    }
    assert_eq!(statuses(&flood), pass_then_deny(5, 195));

    // Another subject, an API key whose id is the same as the flooder's subject (tokens and API
    // keys never share a counter), and anonymous callers (counted by address) each get the whole
    // burst.
    let bob = token("bob", &[]);
    let others = [
        ("bob's token", http.get(&api).bearer_auth(&bob)),
        ("alice's API key", http.get(&api).header("x-api-key", ALICE_KEY)),
        ("anonymous", http.get(format!("{}/open/x", gw.url()))),
    ];
    for (who, request) in others {
        let mut seen = Vec::new();
        for _ in 0..8 {
            seen.push(send(request.try_clone().unwrap()).await);
        }
        assert_eq!(statuses(&seen), pass_then_deny(5, 3), "{who}: {seen:#?}");
        assert_eq!(seen[0].state(), ("default".into(), 4, 3600), "{who}");
    }
    assert_eq!(backend.hits(), 20);
}

// ---------------------------------------------------------------------------------------------
// 4. Tiers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_claim_picks_the_quota_and_other_values_get_the_base_one() {
    let backend = Backend::start().await;
    let rest = policy("default", 2, "1m", 2, "client")
        + r#"
[rate_limits.default.tiers]
claim = "plan"
gold = { requests = 6, per = "1m", burst = 6 }

[[routes]]
prefix = "/"
service = "svc"
rate_limit = "default"
"#;
    let gw = gateway(&config(&backend.url, &rest)).await;
    let http = client();
    let base = (r#""default";q=2;w=60"#, "default", 2);
    let gold = (r#""default.gold";q=6;w=60"#, "default.gold", 6);
    let cases = [
        ("plan gold", Some(token("g1", &[("plan", json!("gold"))])), gold),
        (
            "plan silver",
            Some(token("s1", &[("plan", json!("silver"))])),
            base,
        ),
        ("no plan", Some(token("n1", &[])), base),
        ("plan GOLD", Some(token("c1", &[("plan", json!("GOLD"))])), base),
        ("numeric plan", Some(token("x1", &[("plan", json!(1))])), base),
        (
            "plan [gold]",
            Some(token("a1", &[("plan", json!(["gold"]))])),
            base,
        ),
        ("API key", None, base),
    ];
    for (what, bearer, (policy_header, label, burst)) in cases {
        let mut seen = Vec::new();
        for _ in 0..10 {
            let request = http.get(gw.url());
            let request = match &bearer {
                Some(t) => request.bearer_auth(t),
                None => request.header("x-api-key", ALICE_KEY),
            };
            seen.push(send(request).await);
        }
        assert_eq!(
            statuses(&seen),
            pass_then_deny(burst, 10 - burst),
            "{what}: {seen:#?}"
        );
        for s in &seen {
            assert_eq!(s.policy.as_deref(), Some(policy_header), "{what}: {s:?}");
            assert_eq!(s.state().0, label, "{what}: {s:?}");
        }
        assert_eq!(seen[0].state().1, burst as u64 - 1, "{what}");
    }
}

// ---------------------------------------------------------------------------------------------
// 5. key = "ip" and X-Forwarded-For

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_from_an_untrusted_peer_do_not_evade_an_ip_limit() {
    let backend = Backend::start().await;
    let toml = config(
        &backend.url,
        &(policy("per-ip", 1, "1h", 3, "ip") + &public_route("per-ip")),
    );
    let gw = gateway(&toml).await;
    let http = client();
    let mut seen = Vec::new();
    for i in 1..=10 {
        let ip = format!("10.0.0.{i}");
        let request = http
            .get(gw.url())
            .header("x-forwarded-for", &ip)
            .header("x-real-ip", &ip)
            .header("forwarded", format!("for={ip}"));
        seen.push(send(request).await);
    }
    assert_eq!(statuses(&seen), pass_then_deny(3, 7), "{seen:#?}");
    assert_eq!(backend.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_ip_quota() {
    let backend = Backend::start().await;
    let rest = r#"
[server]
trusted_proxies = ["127.0.0.1"]
"#
    .to_owned()
        + &policy("per-ip", 1, "1h", 3, "ip")
        + &public_route("per-ip");
    let gw = gateway(&config(&backend.url, &rest)).await;
    let http = client();
    let burst_of = async |xff: Option<String>| {
        let mut seen = Vec::new();
        for _ in 0..5 {
            let mut request = http.get(gw.url());
            if let Some(xff) = &xff {
                request = request.header("x-forwarded-for", xff);
            }
            seen.push(send(request).await);
        }
        statuses(&seen)
    };
    for i in 1..=4 {
        assert_eq!(
            burst_of(Some(format!("10.0.0.{i}"))).await,
            pass_then_deny(3, 2),
            "10.0.0.{i}"
        );
    }
    // The proxy's own requests are another client.
    assert_eq!(burst_of(None).await, pass_then_deny(3, 2), "the proxy itself");
    // The chain is read from the right up to the first untrusted hop: whatever the client put in
    // front of it, 10.0.0.1 is still 10.0.0.1 (already over its quota).
    assert_eq!(burst_of(Some("203.0.113.9, 10.0.0.1".into())).await, vec![429; 5]);
    let mut seen = Vec::new();
    for i in 1..=5 {
        let xff = format!("198.51.100.{i}, 10.0.0.9");
        seen.push(send(http.get(gw.url()).header("x-forwarded-for", xff)).await);
    }
    assert_eq!(statuses(&seen), pass_then_deny(3, 2), "{seen:#?}");
    assert_eq!(backend.hits(), 6 * 3);
}

// ---------------------------------------------------------------------------------------------
// 6. Concurrency

/// Fires `n` requests at once (all released together by a barrier), the i-th to `urls[i % len]`;
/// returns their statuses.
async fn concurrently(urls: &[String], n: usize) -> Vec<u16> {
    let http = client();
    let barrier = Arc::new(Barrier::new(n));
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let request = http.get(&urls[i % urls.len()]);
        let barrier = barrier.clone();
        tasks.spawn(async move {
            barrier.wait().await;
            send(request).await.status
        });
    }
    let mut statuses = tasks.join_all().await;
    statuses.sort();
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_100_concurrent_requests_exactly_the_burst_passes() {
    let backend = Backend::start().await;
    let toml = config(
        &backend.url,
        &(policy("global", 1, "1h", 10, "global") + &public_route("global")),
    );
    let gw = gateway(&toml).await;
    let statuses = concurrently(&[gw.url()], 100).await;
    assert_eq!(statuses, pass_then_deny(10, 90));
    assert_eq!(backend.hits(), 10);
}

// ---------------------------------------------------------------------------------------------
// 7. Which routes are limited

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_default_applies_to_routes_without_a_policy_and_none_opts_out() {
    let backend = Backend::start().await;
    let routes = r#"
[[routes]]
prefix = "/plain"
service = "svc"
auth = "none"

[[routes]]
prefix = "/free"
service = "svc"
auth = "none"
rate_limit = "none"

[[routes]]
prefix = "/strict"
service = "svc"
auth = "none"
rate_limit = "strict"
"#;
    let policies = policy("default", 1, "1h", 2, "client") + &policy("strict", 1, "1h", 1, "client");
    let with_default = format!("[server]\nrate_limit = \"default\"\n{policies}{routes}");
    let gw = gateway(&config(&backend.url, &with_default)).await;
    let http = client();
    let hammer = async |gw: &RunningServer, path: &str, n: usize| {
        let mut seen = Vec::new();
        for _ in 0..n {
            seen.push(send(http.get(format!("{}{path}", gw.url()))).await);
        }
        seen
    };

    let plain = hammer(&gw, "/plain", 5).await;
    assert_eq!(statuses(&plain), pass_then_deny(2, 3), "{plain:#?}");
    assert!(
        plain
            .iter()
            .all(|s| s.policy.as_deref() == Some(r#""default";q=1;w=3600"#))
    );
    let strict = hammer(&gw, "/strict", 5).await;
    assert_eq!(statuses(&strict), pass_then_deny(1, 4), "{strict:#?}");
    assert!(strict.iter().all(|s| s.state().0 == "strict"), "{strict:#?}");
    let free = hammer(&gw, "/free", 30).await;
    assert_eq!(statuses(&free), vec![200; 30]);
    assert!(free.iter().all(Seen::has_no_ratelimit_headers), "{free:#?}");

    // Without a server default, a route that names no policy is not limited at all.
    let without_default = format!("{policies}{routes}");
    let gw = gateway(&config(&backend.url, &without_default)).await;
    let plain = hammer(&gw, "/plain", 30).await;
    assert_eq!(statuses(&plain), vec![200; 30]);
    assert!(plain.iter().all(Seen::has_no_ratelimit_headers), "{plain:#?}");
    let strict = hammer(&gw, "/strict", 3).await;
    assert_eq!(statuses(&strict), pass_then_deny(1, 2), "{strict:#?}");
    assert_eq!(backend.hits(), 2 + 1 + 30 + 30 + 1);
}

// ---------------------------------------------------------------------------------------------
// 8. A 429 costs the backend nothing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_request_never_reaches_the_backend() {
    let backend = Backend::start().await;
    let toml = config(
        &backend.url,
        &(policy("default", 1, "1h", 3, "client") + &public_route("default")),
    );
    // The real clock this time.
    let gw = gateway(&toml).await;
    // One keep-alive client: a 429 to an upload whose body was not read says `Connection: close`,
    // so the client's next request goes on a new connection (see the test below).
    let http = client();
    let mut passed_so_far = 0;
    for i in 0..30 {
        let url = format!("{}/things/{i}", gw.url());
        let request = match i % 3 {
            0 => http.get(url),
            1 => http.post(url).body(vec![b'x'; 64 * 1024]),
            _ => http.delete(url),
        };
        let s = send(request).await;
        if s.status == 200 {
            passed_so_far += 1;
        } else {
            assert_eq!(s.status, 429, "{s:?}");
            // One request refills per hour; the clock moved a little since the first one.
            assert!((3599..=3600).contains(&s.retry_after()), "{s:?}");
        }
        assert_eq!(backend.hits(), passed_so_far, "after request {i}");
    }
    assert_eq!(passed_so_far, 3);
}

/// A rate-limited client that uploads gets its 429 before the gateway read the body. The gateway
/// then closes the connection (hyper drains only what already arrived), so the 429 must say
/// `Connection: close`; otherwise a keep-alive client sends its next request on a dying connection
/// and gets a connection error instead of an answer. (Reading the body and answering the next
/// request would be correct too.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_to_an_upload_does_not_leave_a_keep_alive_connection_that_is_about_to_close() {
    let backend = Backend::start().await;
    let toml = config(
        &backend.url,
        &(policy("default", 1, "1h", 1, "client") + &public_route("default")),
    );
    let gw = gateway(&toml).await;
    assert_eq!(send(client().get(gw.url())).await.status, 200);

    // Over the quota: an upload, then a second request on the same connection.
    let size = 1024 * 1024;
    let mut request =
        format!("POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: {size}\r\n\r\n").into_bytes();
    request.extend(std::iter::repeat_n(b'x', size));
    request.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: gw\r\n\r\n");
    let addr = gw.addr;
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        // The gateway may stop reading part way: a failed write is part of what is observed.
        let _ = stream.write_all(&request);
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out);
        String::from_utf8_lossy(&out).to_ascii_lowercase()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("http/1.1 429"), "{answer}");
    let first = answer.split("\r\n\r\n").next().unwrap();
    let announced_close = first.lines().any(|l| l == "connection: close");
    let answered_both = answer.matches("http/1.1 429").count() == 2;
    assert!(
        announced_close || answered_both,
        "the 429 kept the connection alive, then the gateway closed it without answering the next request:\n{answer}"
    );
    assert_eq!(backend.hits(), 1);
}

/// README: "Every response of a limited route, 429 or not, carries" the RateLimit fields. A
/// request that passed the limiter and then failed upstream has been counted, so its 502 should
/// tell the client what is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_error_on_a_limited_route_still_carries_the_ratelimit_headers() {
    let toml = config(
        &common::dead_url(),
        &(policy("default", 1, "1h", 3, "client") + &public_route("default")),
    );
    let gw = gateway(&toml).await;
    let http = client();
    let s = send(http.get(gw.url())).await;
    assert_eq!(s.status, 502, "{s:?}");
    assert_eq!(s.policy.as_deref(), Some(r#""default";q=1;w=3600"#), "{s:?}");
    // The failed request was counted: two are left.
    assert_eq!(s.state.as_deref(), Some(r#""default";r=2;t=3600"#), "{s:?}");
}

// ---------------------------------------------------------------------------------------------
// 9. Shared counters in Redis

/// A store section for `redis`.
fn redis_store(redis: &RedisServer, on_error: &str, timeout: &str) -> String {
    format!(
        r#"
[rate_limit_store]
backend = "redis"
url = "{url}"
on_error = "{on_error}"
timeout = "{timeout}"
"#,
        url = redis.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_quota_through_redis() {
    let Some(redis) = RedisServer::start() else { return };
    let backend = Backend::start().await;
    // on_error = "deny" and a long timeout: if Redis failed, fewer requests would pass.
    let toml = config(
        &backend.url,
        &(policy("shared", 1, "1m", 6, "global")
            + &public_route("shared")
            + &redis_store(&redis, "deny", "2s")),
    );
    let a = gateway(&toml).await;
    let b = gateway(&toml).await;
    let http = client();
    let mut seen = Vec::new();
    for i in 0..14 {
        let gw = if i % 2 == 0 { &a } else { &b };
        seen.push(send(http.get(gw.url())).await);
    }
    assert_eq!(statuses(&seen), pass_then_deny(6, 8), "{seen:#?}");
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.policy.as_deref(), Some(r#""shared";q=1;w=60"#), "{s:?}");
        let (label, r, t) = s.state();
        assert_eq!(label, "shared");
        if i < 6 {
            // One count across both instances: 5, 4, 3, 2, 1, 0 whichever instance answered.
            assert_eq!(r, 5 - i as u64, "{seen:#?}");
            let full_in = 60 * (i as u64 + 1);
            assert!((full_in - 1..=full_in).contains(&t), "request {i}: {s:?}");
        } else {
            assert_eq!(r, 0);
            assert!((359..=360).contains(&t), "{s:?}");
            assert!((59..=60).contains(&s.retry_after()), "{s:?}");
        }
    }
    assert_eq!(backend.hits(), 6);

    // One key, named as documented (a hash tag around policy and client), expiring once the
    // quota is whole again.
    assert_eq!(redis.keys("gateway:rl:*"), ["gateway:rl:{shared:*}"]);
    let Reply::Int(ttl) = redis.command(&["PTTL", "gateway:rl:{shared:*}"]) else {
        panic!("PTTL did not answer with an integer")
    };
    assert!((1..=360_000).contains(&ttl), "PTTL {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_on_two_gateways_get_exactly_one_shared_burst() {
    let Some(redis) = RedisServer::start() else { return };
    let backend = Backend::start().await;
    let toml = config(
        &backend.url,
        &(policy("shared", 1, "1h", 10, "global")
            + &public_route("shared")
            + &redis_store(&redis, "deny", "2s")),
    );
    let a = gateway(&toml).await;
    let b = gateway(&toml).await;
    let statuses = concurrently(&[a.url(), b.url()], 80).await;
    assert_eq!(statuses, pass_then_deny(10, 70));
    assert_eq!(backend.hits(), 10);
}

/// Two gateways sharing a per-IP policy (burst 3, one request an hour) through `redis`, behind a
/// trusted proxy so each phase of a test can be a fresh client (`X-Forwarded-For`).
struct Pair {
    redis: RedisServer,
    backend: Backend,
    a: RunningServer,
    b: RunningServer,
    http: reqwest::Client,
    next_client: AtomicUsize,
}

const PAIR_BURST: usize = 3;

impl Pair {
    async fn start(on_error: &str, timeout: &str) -> Option<Self> {
        let redis = RedisServer::start()?;
        let backend = Backend::start().await;
        let rest = "[server]\ntrusted_proxies = [\"127.0.0.1\"]\nrequest_timeout = \"10s\"\n".to_owned()
            + &policy("shared", 1, "1h", PAIR_BURST as u32, "ip")
            + &public_route("shared")
            + &redis_store(&redis, on_error, timeout);
        let toml = config(&backend.url, &rest);
        Some(Self {
            a: gateway(&toml).await,
            b: gateway(&toml).await,
            redis,
            backend,
            http: client(),
            next_client: AtomicUsize::new(1),
        })
    }

    /// An address no earlier request of this test came from.
    fn fresh_client(&self) -> String {
        let n = self.next_client.fetch_add(1, Ordering::SeqCst);
        format!("10.{}.{}.{}", n >> 16 & 255, n >> 8 & 255, n & 255)
    }

    /// One request from `client`, to gateway a (`to_b` false) or b, failing the test if it takes
    /// longer than `within`.
    async fn request(&self, client: &str, to_b: bool, within: Duration) -> Seen {
        let gw = if to_b { &self.b } else { &self.a };
        let request = self.http.get(gw.url()).header("x-forwarded-for", client);
        tokio::time::timeout(within, send(request))
            .await
            .unwrap_or_else(|_| panic!("no answer within {within:?}"))
    }

    /// `n` requests from one fresh client, alternating between the two gateways (a first).
    async fn alternate(&self, n: usize) -> Vec<Seen> {
        let client = self.fresh_client();
        let mut seen = Vec::new();
        for i in 0..n {
            seen.push(self.request(&client, i % 2 == 1, TIMEOUT).await);
        }
        seen
    }

    /// Whether a fresh client gets exactly one burst across both gateways, each answer counted
    /// in Redis: 200s with r = 2, 1, 0, then 429s, all with a reset an hour or more away (the `deny`
    /// fallback's would be 1 s).
    async fn shares_one_quota(&self) -> bool {
        let seen = self.alternate(2 * PAIR_BURST).await;
        statuses(&seen) == pass_then_deny(PAIR_BURST, PAIR_BURST)
            && seen.iter().enumerate().all(|(i, s)| {
                let Some((label, r, t)) = s.state.as_deref().and_then(parse_state) else {
                    return false;
                };
                let expected_r = PAIR_BURST.saturating_sub(i + 1) as u64;
                label == "shared" && r == expected_r && t >= 3600
            })
    }

    async fn eventually_shared(&self, what: &str) {
        common::eventually(what, async || self.shares_one_quota().await).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_with_on_error_deny_answers_429_at_once_then_sharing_resumes() {
    let Some(mut pair) = Pair::start("deny", "500ms").await else {
        return;
    };
    pair.eventually_shared("the gateways to share counts through Redis")
        .await;
    let hits = pair.backend.hits();

    pair.redis.kill();
    let client = pair.fresh_client();
    let batch = Instant::now();
    for i in 0..5 {
        // A request that waited on the dead Redis would hang here and fail the test.
        let s = pair.request(&client, i % 2 == 1, Duration::from_secs(2)).await;
        assert_eq!((s.status, s.retry_after()), (429, 1), "{s:?}");
        assert_eq!(s.policy.as_deref(), Some(r#""shared";q=1;w=3600"#), "{s:?}");
        assert_eq!(s.state.as_deref(), Some(r#""shared";r=0;t=1"#), "{s:?}");
    }
    // Well inside request_timeout (10 s): the store's timeout and back-off, not the deadline, cut
    // the waits short.
    assert!(batch.elapsed() < Duration::from_secs(5), "{:?}", batch.elapsed());
    assert_eq!(pair.backend.hits(), hits, "a denied request reached the backend");

    pair.redis.restart();
    pair.eventually_shared("sharing to resume after Redis restarted")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_with_on_error_allow_lets_requests_through_without_headers() {
    let Some(mut pair) = Pair::start("allow", "500ms").await else {
        return;
    };
    pair.eventually_shared("the gateways to share counts through Redis")
        .await;
    let hits = pair.backend.hits();

    pair.redis.kill();
    let client = pair.fresh_client();
    for i in 0..10 {
        let s = pair.request(&client, i % 2 == 1, Duration::from_secs(2)).await;
        assert_eq!(s.status, 200, "{s:?}");
        // Nothing is known about the quota, so nothing is claimed about it.
        assert!(s.has_no_ratelimit_headers(), "{s:?}");
    }
    assert_eq!(pair.backend.hits(), hits + 10);

    pair.redis.restart();
    pair.eventually_shared("sharing to resume after Redis restarted")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_with_on_error_local_makes_each_gateway_count_alone() {
    let Some(mut pair) = Pair::start("local", "500ms").await else {
        return;
    };
    pair.eventually_shared("the gateways to share counts through Redis")
        .await;

    pair.redis.kill();
    // One fresh client, alternating: each instance lets its own burst through.
    let seen = pair.alternate(4 * PAIR_BURST).await;
    let (on_a, on_b): (Vec<_>, Vec<_>) = seen.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    for (name, answers) in [("a", on_a), ("b", on_b)] {
        let answers: Vec<&Seen> = answers.into_iter().map(|(_, s)| s).collect();
        let got: Vec<u16> = answers.iter().map(|s| s.status).collect();
        assert_eq!(
            got,
            pass_then_deny(PAIR_BURST, PAIR_BURST),
            "gateway {name}: {answers:#?}"
        );
        let remaining: Vec<u64> = answers[..PAIR_BURST].iter().map(|s| s.state().1).collect();
        assert_eq!(remaining, [2, 1, 0], "gateway {name}");
    }
    assert_eq!(passed(&seen), 2 * PAIR_BURST);

    pair.redis.restart();
    pair.eventually_shared("sharing to resume after Redis restarted")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_delays_requests_by_at_most_its_timeout_and_is_backed_off() {
    let Some(pair) = Pair::start("deny", "1s").await else {
        return;
    };
    pair.eventually_shared("the gateways to share counts through Redis")
        .await;

    // SIGSTOP: connections stay open and nothing is ever answered.
    pair.redis.pause();
    let client = pair.fresh_client();
    let batch = Instant::now();
    for _ in 0..6 {
        let s = pair.request(&client, false, Duration::from_secs(3)).await;
        assert_eq!(s.status, 429, "{s:?}");
        assert_eq!(s.state.as_deref(), Some(r#""shared";r=0;t=1"#), "{s:?}");
    }
    // Each of these would wait the whole 1 s timeout (6 s in all) if a failed Redis were asked
    // again by every request; the back-off lets only a probe wait.
    let took = batch.elapsed();
    assert!(took < Duration::from_secs(4), "{took:?}");

    pair.redis.resume();
    pair.eventually_shared("sharing to resume after Redis answers again")
        .await;
}
