//! Authentication end to end (SPEC.md Authentication): JWTs of every algorithm family from static
//! keys and a live JWKS, key rotation, an identity provider that is down at startup, unknown-kid
//! floods, forged tokens, API keys, scopes, and the identity headers sent upstream.
//!
//! The JWKS is a real HTTP server on loopback whose key set can be changed while the gateway runs
//! and which counts how often it is fetched.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::RawQuery;
use axum::response::IntoResponse;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{USERS, demo, error_body, gateway};
use gateway::RunningServer;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const ISS: &str = "https://id.test";
const AUD: &str = "gateway";
/// The static HS256 key's secret.
const SECRET: &str = "test-secret-0123456789-abcdefghijklmnop";
/// A symmetric key published in the JWKS (which the gateway must never accept).
const JWKS_OCT_SECRET: &str = "jwks-published-secret-0123456789-abcdef";
const KEY_A: &str = "key-a-3f9c1d8e7b6a5f4e3d2c1b0a";
const KEY_B: &str = "key-b-0a1b2c3d4e5f6a7b8c9d0e1f";
const SCOPES: &str = "orders:read profile";
const TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Tokens

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Valid claims for `sub`: right issuer and audience, issued now, expiring in an hour.
fn claims(sub: &str) -> Value {
    json!({
        "iss": ISS,
        "aud": AUD,
        "sub": sub,
        "iat": now(),
        "exp": now() + 3600,
        "scope": SCOPES,
    })
}

/// `claims(sub)` with `edits` applied (set with a value, remove with `Value::Null`).
fn claims_with(sub: &str, edits: &[(&str, Value)]) -> Value {
    let mut c = claims(sub);
    let map = c.as_object_mut().unwrap();
    for (name, value) in edits {
        if value.is_null() {
            map.remove(*name);
        } else {
            map.insert((*name).to_owned(), value.clone());
        }
    }
    c
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("tests/fixtures/keys/{name}.pem")).unwrap()
}

/// The signing key for `alg`: `key` is a fixture name (rsa, rsa2, ec256, ec384, ed25519), or
/// the HMAC secret itself for HS*.
fn encoding_key(key: &str, alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => EncodingKey::from_secret(key.as_bytes()),
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&fixture(key)).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&fixture(key)).unwrap(),
        _ => EncodingKey::from_rsa_pem(&fixture(key)).unwrap(),
    }
}

fn sign_with(header: Header, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn sign(alg: Algorithm, key: &str, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    sign_with(header, &encoding_key(key, alg), claims)
}

/// An HS256 token from the static `hs` key.
fn hs_token(claims: &Value) -> String {
    sign(Algorithm::HS256, SECRET, "hs", claims)
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token put together by hand: any header JSON, any claims, any signature bytes.
fn forge(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(signature)
    )
}

/// The public JWK of a fixture key (or an `oct` JWK of a secret), pinned to `alg`, named `kid`.
fn jwk(key: &str, alg: Algorithm, kid: &str) -> Value {
    let mut jwk = Jwk::from_encoding_key(&encoding_key(key, alg), alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    serde_json::to_value(jwk).unwrap()
}

/// A JWK without `alg`: the gateway infers the usual algorithm from the key type.
fn jwk_without_alg(key: &str, alg: Algorithm, kid: &str) -> Value {
    let mut v = jwk(key, alg, kid);
    v.as_object_mut().unwrap().remove("alg");
    v
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

// ---------------------------------------------------------------------------------------------
// A JWKS endpoint whose keys can change at runtime, counting its fetches

#[derive(Clone, Default)]
struct JwksServer {
    keys: Arc<Mutex<Vec<Value>>>,
    hits: Arc<AtomicUsize>,
    /// While set, the endpoint answers 503.
    failing: Arc<AtomicBool>,
    /// The query string of the last fetch.
    last_query: Arc<Mutex<Option<String>>>,
}

impl JwksServer {
    fn new(keys: Vec<Value>) -> Self {
        let server = Self::default();
        server.set(keys);
        server
    }

    fn set(&self, keys: Vec<Value>) {
        *self.keys.lock().unwrap() = keys;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn router(&self) -> Router {
        let this = self.clone();
        Router::new().route(
            "/jwks.json",
            get(move |RawQuery(query): RawQuery| {
                let this = this.clone();
                async move {
                    this.hits.fetch_add(1, Ordering::SeqCst);
                    *this.last_query.lock().unwrap() = query;
                    if this.failing.load(Ordering::SeqCst) {
                        return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
                    }
                    let keys = this.keys.lock().unwrap().clone();
                    axum::Json(json!({ "keys": keys })).into_response()
                }
            }),
        )
    }

    /// Serves on a free port; returns the JWKS URL.
    async fn start(&self) -> String {
        format!("{}/jwks.json", common::serve(self.router()).await)
    }

    /// Serves on `addr` (a port reserved earlier).
    async fn start_on(&self, addr: SocketAddr) {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let app = self.router();
        tokio::spawn(async move { axum::serve(listener, app).await });
    }

    /// Waits until the gateway fetched the JWKS at least `n` times.
    async fn wait_for_hits(&self, n: usize) {
        common::eventually(&format!("{n} JWKS fetch(es)"), async || self.hits() >= n).await;
    }

    /// Waits for the gateway's startup fetch, and a moment for it to parse the answer: a token
    /// that arrived before the keys were stored would spend the unknown-kid cooldown.
    async fn wait_loaded(&self) {
        self.wait_for_hits(1).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway

/// The standard config: the echo backend behind four routes (`/echo` required, `/echo/public`
/// none, `/echo/optional` optional, `/echo/orders` needing orders:read), every static key, two
/// API keys, and identity forwarding. `auth_extra` goes into `[auth]`, `jwt_extra` into
/// `[auth.jwt]`.
fn config(backend: &str, auth_extra: &str, jwt_extra: &str) -> String {
    let pem = String::from_utf8(fixture("rsa.pub")).unwrap();
    format!(
        r#"
[services.svc]
urls = ["{backend}"]
timeout = "5s"

[auth]
{auth_extra}

[auth.jwt]
issuers = ["{ISS}"]
audiences = ["{AUD}"]
leeway = "30s"
{jwt_extra}

[[auth.jwt.keys]]
kid = "hs"
algorithm = "HS256"
secret = "{SECRET}"

[[auth.jwt.keys]]
kid = "rs"
algorithm = "RS256"
public_key_pem = "tests/fixtures/keys/rsa.pub.pem"

# The same RSA key again, pinned to PS256 and given inline.
[[auth.jwt.keys]]
kid = "ps"
algorithm = "PS256"
public_key_pem = '''
{pem}'''

[[auth.jwt.keys]]
kid = "es256"
algorithm = "ES256"
public_key_pem = "tests/fixtures/keys/ec256.pub.pem"

[[auth.jwt.keys]]
kid = "es384"
algorithm = "ES384"
public_key_pem = "tests/fixtures/keys/ec384.pub.pem"

[[auth.jwt.keys]]
kid = "ed"
algorithm = "EdDSA"
public_key_pem = "tests/fixtures/keys/ed25519.pub.pem"

[auth.jwt.forward]
"x-user-id" = "sub"
"x-user-scopes" = "scope"

[[auth.api_keys]]
id = "partner-a"
sha256 = "{hash_a}"
scopes = ["catalog:read"]

[[auth.api_keys]]
id = "partner-b"
sha256 = "{hash_b}"
scopes = ["orders:read", "catalog:read"]

[[routes]]
prefix = "/echo"
service = "svc"

[[routes]]
prefix = "/echo/public"
service = "svc"
auth = "none"

[[routes]]
prefix = "/echo/optional"
service = "svc"
auth = "optional"

[[routes]]
prefix = "/echo/orders"
service = "svc"
scopes = ["orders:read"]
"#,
        hash_a = sha256_hex(KEY_A),
        hash_b = sha256_hex(KEY_B),
    )
}

struct Env {
    gw: RunningServer,
    // Kept alive for as long as the gateway needs it.
    _backend: gateway::demo::backends::RunningBackend,
    client: reqwest::Client,
}

async fn env(auth_extra: &str, jwt_extra: &str) -> Env {
    let backend = demo(USERS).await;
    let gw = gateway(&config(&backend.url(), auth_extra, jwt_extra)).await;
    Env {
        gw,
        _backend: backend,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(TIMEOUT)
            .build()
            .unwrap(),
    }
}

/// `jwt_extra` for a JWKS at `url`.
fn jwks_settings(url: &str, refresh: &str, cooldown: &str) -> String {
    format!("jwks_url = \"{url}\"\njwks_refresh = \"{refresh}\"\njwks_cooldown = \"{cooldown}\"")
}

impl Env {
    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(format!("{}{path}", self.gw.url()))
    }

    async fn with_token(&self, path: &str, token: &str) -> reqwest::Response {
        self.get(path).bearer_auth(token).send().await.unwrap()
    }

    async fn with_key(&self, path: &str, key: &str) -> reqwest::Response {
        self.get(path).header("x-api-key", key).send().await.unwrap()
    }

    async fn status_with_token(&self, path: &str, token: &str) -> u16 {
        self.with_token(path, token).await.status().as_u16()
    }
}

// ---------------------------------------------------------------------------------------------
// Assertions

/// The request headers the echo backend received (asserting the gateway answered 200).
async fn upstream_headers(r: reqwest::Response) -> Value {
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    body["headers"].clone()
}

fn header_str(r: &reqwest::Response, name: &str) -> String {
    common::header(r, name).unwrap_or_default()
}

/// A 401 UNAUTHENTICATED with an `invalid_token` challenge whose body holds no part of `token`.
async fn assert_invalid_token(r: reqwest::Response, token: &str, what: &str) {
    assert_eq!(r.status(), 401, "{what}: expected 401");
    let challenge = header_str(&r, "www-authenticate");
    assert!(
        challenge.starts_with(r#"Bearer realm="gateway""#) && challenge.contains(r#"error="invalid_token""#),
        "{what}: WWW-Authenticate is {challenge:?}"
    );
    let body = error_body(r, 401, "UNAUTHENTICATED").await.to_string();
    assert!(!body.contains(token), "{what}: the token is echoed in {body}");
    for part in token.split('.').filter(|p| p.len() >= 16) {
        assert!(
            !body.contains(&part[..16]),
            "{what}: part of the token is echoed in {body}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Valid tokens of every algorithm family

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_tokens_of_every_algorithm_reach_the_backend_with_their_identity() {
    let jwks = JwksServer::new(vec![
        jwk("rsa2", Algorithm::RS256, "jwks-rs"),
        jwk("rsa2", Algorithm::PS256, "jwks-ps"),
        jwk("ec256", Algorithm::ES256, "jwks-es256"),
        jwk("ec384", Algorithm::ES384, "jwks-es384"),
        jwk("ed25519", Algorithm::EdDSA, "jwks-ed"),
        jwk_without_alg("rsa", Algorithm::RS256, "jwks-rs-noalg"),
        jwk_without_alg("ec256", Algorithm::ES256, "jwks-es-noalg"),
        // Keys the gateway cannot use are skipped without spoiling the rest of the set.
        json!({"kty": "weird", "kid": "junk-1"}),
        json!({"kty": "RSA", "kid": "junk-2", "n": "!!", "e": "AQAB"}),
        json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"}),
    ]);
    // The JWKS URL's query string is sent along (some providers select a tenant with it).
    let url = format!("{}?tenant=t1", jwks.start().await);
    let env = env("", &jwks_settings(&url, "5m", "30s")).await;
    jwks.wait_for_hits(1).await;
    assert_eq!(jwks.last_query.lock().unwrap().as_deref(), Some("tenant=t1"));

    let cases = [
        (Algorithm::HS256, SECRET, "hs"),
        (Algorithm::RS256, "rsa", "rs"),
        (Algorithm::PS256, "rsa", "ps"),
        (Algorithm::ES256, "ec256", "es256"),
        (Algorithm::ES384, "ec384", "es384"),
        (Algorithm::EdDSA, "ed25519", "ed"),
        (Algorithm::RS256, "rsa2", "jwks-rs"),
        (Algorithm::PS256, "rsa2", "jwks-ps"),
        (Algorithm::ES256, "ec256", "jwks-es256"),
        (Algorithm::ES384, "ec384", "jwks-es384"),
        (Algorithm::EdDSA, "ed25519", "jwks-ed"),
        (Algorithm::RS256, "rsa", "jwks-rs-noalg"),
        (Algorithm::ES256, "ec256", "jwks-es-noalg"),
    ];
    for (alg, key, kid) in cases {
        let sub = format!("user-{kid}");
        let token = sign(alg, key, kid, &claims(&sub));
        let r = env.with_token("/echo", &token).await;
        assert_eq!(r.status(), 200, "{alg:?} token with kid {kid}");
        let h = upstream_headers(r).await;
        assert_eq!(h["x-user-id"], json!([sub]), "{kid}: {h}");
        assert_eq!(h["x-user-scopes"], json!([SCOPES]), "{kid}: {h}");
        assert_eq!(
            h["authorization"],
            json!([format!("Bearer {token}")]),
            "{kid}: {h}"
        );
        // Served again from the verified-token cache, with the same identity.
        let h = upstream_headers(env.with_token("/echo", &token).await).await;
        assert_eq!(h["x-user-id"], json!([sub]), "{kid} (cached): {h}");
    }

    // Clock skew within the leeway (30 s) is tolerated on exp, nbf and iat.
    let skewed = claims_with(
        "skewed",
        &[
            ("exp", json!(now() - 10)),
            ("nbf", json!(now() + 10)),
            ("iat", json!(now() + 10)),
        ],
    );
    let h = upstream_headers(env.with_token("/echo", &hs_token(&skewed)).await).await;
    assert_eq!(h["x-user-id"][0], "skewed");
    // An `exp` at the very end of time neither breaks verification nor the cache.
    let forever = hs_token(&claims_with("forever", &[("exp", json!(u64::MAX))]));
    for _ in 0..2 {
        let h = upstream_headers(env.with_token("/echo", &forever).await).await;
        assert_eq!(h["x-user-id"][0], "forever");
    }
    // `aud` may be an array naming the gateway among others.
    let multi = claims_with("multi-aud", &[("aud", json!(["other", AUD]))]);
    assert_eq!(env.status_with_token("/echo", &hs_token(&multi)).await, 200);
    // The scheme is case-insensitive (RFC 6750 §2.1 via RFC 7235).
    let token = hs_token(&claims("lower"));
    let r = env
        .get("/echo")
        .header(AUTHORIZATION, format!("bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(upstream_headers(r).await["x-user-id"][0], "lower");
}

// ---------------------------------------------------------------------------------------------
// 2. Key rotation

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_kid_in_the_jwks_is_accepted_without_restart() {
    let jwks = JwksServer::new(vec![jwk("rsa", Algorithm::RS256, "k1")]);
    let url = jwks.start().await;
    // A long refresh: only the unknown-kid refetch can pick up the new key in time.
    let env = env("", &jwks_settings(&url, "5m", "30s")).await;
    jwks.wait_loaded().await;
    let t1 = sign(Algorithm::RS256, "rsa", "k1", &claims("u1"));
    common::eventually("k1 accepted", async || {
        env.status_with_token("/echo", &t1).await == 200
    })
    .await;
    assert_eq!(jwks.hits(), 1, "a known kid must not refetch the JWKS");

    // The provider rotates: k2 is published, tokens signed with it arrive.
    jwks.set(vec![
        jwk("rsa", Algorithm::RS256, "k1"),
        jwk("ec256", Algorithm::ES256, "k2"),
    ]);
    let t2 = sign(Algorithm::ES256, "ec256", "k2", &claims("u2"));
    let h = upstream_headers(env.with_token("/echo", &t2).await).await;
    assert_eq!(h["x-user-id"][0], "u2");
    assert_eq!(jwks.hits(), 2, "exactly one refetch for the new kid");
    // Both keys work now, without further fetches.
    assert_eq!(env.status_with_token("/echo", &t1).await, 200);
    assert_eq!(env.status_with_token("/echo", &t2).await, 200);
    assert_eq!(jwks.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_removed_from_the_jwks_is_rejected_after_a_refresh_even_for_cached_tokens() {
    let jwks = JwksServer::new(vec![
        jwk("rsa", Algorithm::RS256, "k1"),
        jwk("rsa2", Algorithm::RS256, "k2"),
    ]);
    let url = jwks.start().await;
    let env = env("", &jwks_settings(&url, "1s", "1s")).await;
    jwks.wait_for_hits(1).await;

    let t1 = sign(Algorithm::RS256, "rsa", "k1", &claims("u1"));
    let t2 = sign(Algorithm::RS256, "rsa2", "k2", &claims("u2"));
    common::eventually("k1 accepted", async || {
        env.status_with_token("/echo", &t1).await == 200
    })
    .await;
    // Verified (and so cached) across several background refreshes of an unchanged JWKS.
    let hits = jwks.hits();
    jwks.wait_for_hits(hits + 2).await;
    assert_eq!(env.status_with_token("/echo", &t1).await, 200);
    assert_eq!(env.status_with_token("/echo", &t2).await, 200);

    // k1 is withdrawn (say, compromised): the cached t1 must stop working.
    jwks.set(vec![jwk("rsa2", Algorithm::RS256, "k2")]);
    common::eventually("the cached k1 token rejected", async || {
        env.status_with_token("/echo", &t1).await == 401
    })
    .await;
    assert_invalid_token(
        env.with_token("/echo", &t1).await,
        &t1,
        "cached token of a removed key",
    )
    .await;
    let fresh = sign(Algorithm::RS256, "rsa", "k1", &claims("u1-fresh"));
    assert_invalid_token(
        env.with_token("/echo", &fresh).await,
        &fresh,
        "new token of a removed key",
    )
    .await;
    assert_eq!(
        env.status_with_token("/echo", &t2).await,
        200,
        "k2 is still published"
    );

    // k2 keeps its kid but gets new key material: tokens of the old k2 key stop working too.
    jwks.set(vec![jwk("ec256", Algorithm::ES256, "k2")]);
    common::eventually("the cached old-k2 token rejected", async || {
        env.status_with_token("/echo", &t2).await == 401
    })
    .await;
    let t2_new = sign(Algorithm::ES256, "ec256", "k2", &claims("u2-new"));
    let h = upstream_headers(env.with_token("/echo", &t2_new).await).await;
    assert_eq!(h["x-user-id"][0], "u2-new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_jwks_fails_later_the_last_good_keys_keep_serving() {
    let jwks = JwksServer::new(vec![jwk("rsa", Algorithm::RS256, "k1")]);
    let url = jwks.start().await;
    let env = env("", &jwks_settings(&url, "1s", "1s")).await;
    jwks.wait_loaded().await;
    let t1 = sign(Algorithm::RS256, "rsa", "k1", &claims("u1"));
    assert_eq!(env.status_with_token("/echo", &t1).await, 200);

    jwks.failing.store(true, Ordering::SeqCst);
    let hits = jwks.hits();
    jwks.wait_for_hits(hits + 2).await;
    // Cached and fresh tokens of the last good key set still pass; nothing turns into a 503.
    assert_eq!(env.status_with_token("/echo", &t1).await, 200);
    let fresh = sign(Algorithm::RS256, "rsa", "k1", &claims("u1-fresh"));
    let h = upstream_headers(env.with_token("/echo", &fresh).await).await;
    assert_eq!(h["x-user-id"][0], "u1-fresh");
    // A JWKS with a single key also verifies tokens that carry no `kid`.
    let kidless = sign_with(
        Header::new(Algorithm::RS256),
        &encoding_key("rsa", Algorithm::RS256),
        &claims("no-kid"),
    );
    let h = upstream_headers(env.with_token("/echo", &kidless).await).await;
    assert_eq!(h["x-user-id"][0], "no-kid");
    // An unknown kid is a 401 (the keys did load once), not a 503.
    let unknown = sign(Algorithm::RS256, "rsa", "k9", &claims("u1"));
    assert_invalid_token(env.with_token("/echo", &unknown).await, &unknown, "unknown kid").await;
}

// ---------------------------------------------------------------------------------------------
// 3. The identity provider is down at startup

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_down_at_startup_gives_503_until_it_comes_up() {
    // Reserve a port, then leave it closed: the JWKS is down when the gateway starts.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let url = format!("http://{addr}/jwks.json");
    let env = env("", &jwks_settings(&url, "1s", "1s")).await;

    let token = sign(Algorithm::RS256, "rsa2", "idp-1", &claims("u1"));
    for _ in 0..3 {
        let r = env.with_token("/echo", &token).await;
        assert_eq!(r.status(), 503, "a JWKS token while the JWKS never loaded");
        assert!(
            !header_str(&r, "retry-after").is_empty(),
            "503 without Retry-After"
        );
        assert!(
            !header_str(&r, "www-authenticate").contains("invalid_token"),
            "the token is not known to be invalid"
        );
        let body = error_body(r, 503, "AUTH_UNAVAILABLE").await.to_string();
        assert!(!body.contains(&token), "{body}");
    }
    // Meanwhile public routes and static-key tokens are unaffected.
    let r = env.get("/echo/public").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = upstream_headers(env.with_token("/echo", &hs_token(&claims("static"))).await).await;
    assert_eq!(h["x-user-id"][0], "static");

    // The provider comes up on that address; the gateway recovers without a restart.
    let jwks = JwksServer::new(vec![jwk("rsa2", Algorithm::RS256, "idp-1")]);
    jwks.start_on(addr).await;
    common::eventually("the JWKS token accepted", async || {
        env.status_with_token("/echo", &token).await == 200
    })
    .await;
    let h = upstream_headers(env.with_token("/echo", &token).await).await;
    assert_eq!(h["x-user-id"][0], "u1");
    assert!(jwks.hits() >= 1);
    // Loaded now: an unknown kid is a plain 401, no longer a 503.
    let unknown = sign(Algorithm::RS256, "rsa2", "idp-unknown", &claims("u1"));
    assert_invalid_token(env.with_token("/echo", &unknown).await, &unknown, "unknown kid").await;
}

// ---------------------------------------------------------------------------------------------
// 4. Unknown-kid floods

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_unknown_kids_fetches_the_jwks_at_most_once_per_cooldown() {
    let jwks = JwksServer::new(vec![jwk("rsa", Algorithm::RS256, "k1")]);
    let url = jwks.start().await;
    let env = env("", &jwks_settings(&url, "5m", "30s")).await;
    // Let the startup fetch finish (so a known-kid request cannot spend the cooldown), then
    // confirm it did: a valid JWKS token passes without another fetch.
    jwks.wait_loaded().await;
    let valid = sign(Algorithm::RS256, "rsa", "k1", &claims("u1"));
    assert_eq!(env.status_with_token("/echo", &valid).await, 200);
    let before = jwks.hits();
    assert_eq!(before, 1, "the startup fetch only");

    let floods = (0..50).map(|i| {
        let request = env.get("/echo");
        async move {
            let kid = format!("rnd-{i}-{}", now());
            let token = sign(Algorithm::RS256, "rsa", &kid, &claims("attacker"));
            (request.bearer_auth(&token).send().await.unwrap(), token)
        }
    });
    let answers = futures_util::future::join_all(floods).await;
    for (r, token) in answers {
        assert_invalid_token(r, &token, "random kid").await;
    }
    let grew = jwks.hits() - before;
    assert!(grew <= 1, "50 unknown kids caused {grew} JWKS fetches");
    // And a known kid still passes.
    assert_eq!(env.status_with_token("/echo", &valid).await, 200);
}

// ---------------------------------------------------------------------------------------------
// 5. Forged and invalid tokens

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_malformed_tokens_are_401() {
    let jwks = JwksServer::new(vec![
        jwk("rsa2", Algorithm::RS256, "jwks-rs"),
        jwk(JWKS_OCT_SECRET, Algorithm::HS256, "jwks-oct"),
        {
            let mut enc = jwk("ec256", Algorithm::ES256, "jwks-enc");
            enc["use"] = json!("enc");
            enc
        },
    ]);
    let url = jwks.start().await;
    let env = env("", &jwks_settings(&url, "5m", "30s")).await;
    let jwks_valid = sign(Algorithm::RS256, "rsa2", "jwks-rs", &claims("u1"));
    common::eventually("the JWKS loaded", async || {
        env.status_with_token("/echo", &jwks_valid).await == 200
    })
    .await;

    let valid_rs = sign(Algorithm::RS256, "rsa", "rs", &claims("u1"));
    let [h_rs, _, sig_rs] = <[&str; 3]>::try_from(valid_rs.split('.').collect::<Vec<_>>()).unwrap();
    let rsa_pub_pem = fixture("rsa.pub");
    let hs_with = |header: Header, claims: &Value| {
        sign_with(header, &EncodingKey::from_secret(SECRET.as_bytes()), claims)
    };
    let mut crit = Header::new(Algorithm::HS256);
    crit.kid = Some("hs".into());
    crit.crit = Some(vec!["exp".into()]);
    let mut confused = Header::new(Algorithm::HS256);
    confused.kid = Some("rs".into());
    let mut confused_jwks = confused.clone();
    confused_jwks.kid = Some("jwks-rs".into());
    // The attacker's own key, offered in the token header (embedded, or by URL).
    let attacker = encoding_key("rsa2", Algorithm::RS256);
    let mut embedded = Header::new(Algorithm::RS256);
    embedded.kid = Some("rs".into());
    embedded.jwk = Some(Jwk::from_encoding_key(&attacker, Algorithm::RS256).unwrap());
    let attacker_jwks = JwksServer::new(vec![jwk("rsa2", Algorithm::RS256, "attacker")]);
    let mut jku = Header::new(Algorithm::RS256);
    jku.kid = Some("attacker".into());
    jku.jku = Some(attacker_jwks.start().await);
    let mut huge = claims("u1");
    huge["pad"] = json!("x".repeat(100 * 1024));

    let cases: Vec<(&str, String)> = vec![
        (
            "alg none",
            forge(&json!({"alg": "none", "typ": "JWT"}), &claims("u1"), b""),
        ),
        (
            "alg none with a kid",
            forge(&json!({"alg": "none", "kid": "hs"}), &claims("u1"), b""),
        ),
        (
            "alg None",
            forge(&json!({"alg": "None", "typ": "JWT"}), &claims("u1"), b""),
        ),
        (
            "alg NONE",
            forge(&json!({"alg": "NONE", "kid": "rs"}), &claims("u1"), b""),
        ),
        (
            "HS256 keyed with the RSA public key (static kid)",
            sign_with(confused, &EncodingKey::from_secret(&rsa_pub_pem), &claims("u1")),
        ),
        (
            "HS256 keyed with the RSA public key (JWKS kid)",
            sign_with(
                confused_jwks,
                &EncodingKey::from_secret(&rsa_pub_pem),
                &claims("u1"),
            ),
        ),
        (
            "HS256 with a symmetric key published in the JWKS",
            sign(Algorithm::HS256, JWKS_OCT_SECRET, "jwks-oct", &claims("u1")),
        ),
        (
            "ES256 with a JWKS key marked `use: enc`",
            sign(Algorithm::ES256, "ec256", "jwks-enc", &claims("u1")),
        ),
        (
            "RS256 with an empty signature",
            format!("{}.", valid_rs.rsplit_once('.').unwrap().0),
        ),
        (
            "ES256 with r = s = 0 (CVE-2022-21449)",
            forge(
                &json!({"alg": "ES256", "typ": "JWT", "kid": "es256"}),
                &claims("u1"),
                &[0u8; 64],
            ),
        ),
        (
            "tampered payload",
            format!("{h_rs}.{}.{sig_rs}", b64(claims("admin").to_string().as_bytes())),
        ),
        (
            "RS256 signed by another key",
            sign(Algorithm::RS256, "rsa2", "rs", &claims("u1")),
        ),
        (
            "the signing key embedded in the header (jwk)",
            sign_with(embedded, &attacker, &claims("u1")),
        ),
        (
            "the signing key's JWKS named in the header (jku)",
            sign_with(jku, &attacker, &claims("u1")),
        ),
        (
            "expired beyond the leeway",
            hs_token(&claims_with(
                "u1",
                &[("exp", json!(now() - 3600)), ("iat", json!(now() - 7200))],
            )),
        ),
        (
            "nbf in the future beyond the leeway",
            hs_token(&claims_with("u1", &[("nbf", json!(now() + 3600))])),
        ),
        (
            "iat in the future beyond the leeway",
            hs_token(&claims_with("u1", &[("iat", json!(now() + 3600))])),
        ),
        (
            "exp as a string",
            hs_token(&claims_with("u1", &[("exp", json!((now() + 3600).to_string()))])),
        ),
        (
            "missing exp",
            hs_token(&claims_with("u1", &[("exp", Value::Null)])),
        ),
        (
            "missing iss",
            hs_token(&claims_with("u1", &[("iss", Value::Null)])),
        ),
        (
            "missing aud",
            hs_token(&claims_with("u1", &[("aud", Value::Null)])),
        ),
        (
            "wrong iss",
            hs_token(&claims_with("u1", &[("iss", json!("https://evil.test"))])),
        ),
        (
            "wrong aud",
            hs_token(&claims_with("u1", &[("aud", json!("other-api"))])),
        ),
        (
            "sub of the wrong type",
            hs_token(&claims_with("u1", &[("sub", json!(42))])),
        ),
        (
            "unknown static-style kid",
            sign(Algorithm::HS256, SECRET, "nope", &claims("u1")),
        ),
        (
            "unknown kid with the JWKS loaded",
            sign(Algorithm::RS256, "rsa2", "jwks-unknown", &claims("u1")),
        ),
        (
            "no kid (every key has one)",
            sign_with(
                Header::new(Algorithm::HS256),
                &EncodingKey::from_secret(SECRET.as_bytes()),
                &claims("u1"),
            ),
        ),
        ("malformed base64", "a.b!.c".to_owned()),
        ("two segments", format!("{h_rs}.{sig_rs}")),
        (
            "not JSON",
            format!("{}.{}.{sig_rs}", b64(b"not json"), b64(b"{}")),
        ),
        ("a 100 KB token", hs_token(&huge)),
        ("a crit header", hs_with(crit, &claims("u1"))),
    ];
    for (what, token) in &cases {
        assert_invalid_token(env.with_token("/echo", token).await, token, what).await;
        assert_eq!(attacker_jwks.hits(), 0, "{what}: the gateway fetched a `jku`");
        // "optional" verifies credentials that are present: no silent downgrade to anonymous.
        assert_invalid_token(env.with_token("/echo/optional", token).await, token, what).await;
    }

    // Credentials that are not a bearer token.
    for value in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer a b", "Token abc"] {
        let r = env
            .get("/echo")
            .header(AUTHORIZATION, value)
            .send()
            .await
            .unwrap();
        assert_invalid_token(r, "dXNlcjpwYXNz", value).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_one_credential_is_401() {
    let env = env("", "").await;
    let t1 = hs_token(&claims("u1"));
    let t2 = hs_token(&claims("u2"));

    // Two Authorization headers, each valid on its own.
    let mut headers = HeaderMap::new();
    headers.append(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {t1}")).unwrap(),
    );
    headers.append(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {t2}")).unwrap(),
    );
    let r = env.get("/echo").headers(headers.clone()).send().await.unwrap();
    assert_invalid_token(r, &t1, "two Authorization headers").await;
    let r = env.get("/echo/optional").headers(headers).send().await.unwrap();
    assert_invalid_token(r, &t1, "two Authorization headers (optional route)").await;

    // The same, on the wire.
    let raw = common::raw(
        env.gw.addr,
        &format!(
            "GET /echo HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {t1}\r\nAuthorization: Bearer {t1}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(common::first_status(&raw), 401, "{raw}");
    assert!(raw.contains(r#"error="invalid_token""#), "{raw}");

    // A token and an API key together, each valid on its own.
    let r = env
        .get("/echo")
        .bearer_auth(&t1)
        .header("x-api-key", KEY_A)
        .send()
        .await
        .unwrap();
    assert_invalid_token(r, &t1, "a token and an API key").await;
    // Two API keys.
    let r = env
        .get("/echo")
        .header("x-api-key", KEY_A)
        .header("x-api-key", KEY_B)
        .send()
        .await
        .unwrap();
    assert_invalid_token(r, KEY_A, "two API keys").await;
}

// ---------------------------------------------------------------------------------------------
// 6. API keys, missing credentials and scopes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_authenticate_and_never_reach_the_backend() {
    let env = env("", "").await;
    let r = env.with_key("/echo", KEY_A).await;
    let h = upstream_headers(r).await;
    assert_eq!(h["x-user-id"], json!(["partner-a"]), "{h}");
    assert_eq!(h["x-user-scopes"], json!(["catalog:read"]), "{h}");
    assert!(
        h.get("x-api-key").is_none(),
        "the API key reached the backend: {h}"
    );
    assert!(h.get("authorization").is_none(), "{h}");

    // Wrong key, a near miss, and an empty one.
    for wrong in ["wrong-key", &KEY_A[..KEY_A.len() - 1], ""] {
        let r = env.with_key("/echo", wrong).await;
        assert_eq!(r.status(), 401, "API key {wrong:?}");
        assert!(header_str(&r, "www-authenticate").contains(r#"error="invalid_token""#));
        let body = error_body(r, 401, "UNAUTHENTICATED").await.to_string();
        assert!(wrong.is_empty() || !body.contains(wrong), "{body}");
    }
    // An API key on a public route is still stripped.
    let h = upstream_headers(env.with_key("/echo/public", KEY_A).await).await;
    assert!(h.get("x-api-key").is_none(), "{h}");
    assert!(h.get("x-user-id").is_none(), "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_api_key_header_is_used_and_stripped() {
    let env = env(r#"api_key_header = "x-partner-key""#, "").await;
    let r = env
        .get("/echo")
        .header("x-partner-key", KEY_B)
        .send()
        .await
        .unwrap();
    let h = upstream_headers(r).await;
    assert_eq!(h["x-user-id"][0], "partner-b");
    assert!(h.get("x-partner-key").is_none(), "{h}");
    // x-api-key is just another header now: not a credential.
    let r = env.with_key("/echo", KEY_B).await;
    assert_eq!(header_str(&r, "www-authenticate"), r#"Bearer realm="gateway""#);
    error_body(r, 401, "UNAUTHENTICATED").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_credentials_get_a_challenge_without_an_error_code() {
    let env = env("", "").await;
    for path in ["/echo", "/echo/orders", "/echo/deeper/path"] {
        let r = env.get(path).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert_eq!(
            header_str(&r, "www-authenticate"),
            r#"Bearer realm="gateway""#,
            "{path}"
        );
        error_body(r, 401, "UNAUTHENTICATED").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_scopes_are_required_of_api_keys_and_tokens() {
    let env = env("", "").await;
    // partner-a holds only catalog:read.
    let r = env.with_key("/echo/orders", KEY_A).await;
    assert_eq!(r.status(), 403);
    let challenge = header_str(&r, "www-authenticate");
    assert!(
        challenge.contains(r#"error="insufficient_scope""#) && challenge.contains("orders:read"),
        "{challenge}"
    );
    let body = error_body(r, 403, "FORBIDDEN").await;
    assert!(
        body["error"]["message"].as_str().unwrap().contains("orders:read"),
        "{body}"
    );
    // partner-b holds orders:read.
    let h = upstream_headers(env.with_key("/echo/orders", KEY_B).await).await;
    assert_eq!(h["x-user-id"][0], "partner-b");

    // A token with scope "orders:read profile" passes.
    let h = upstream_headers(env.with_token("/echo/orders", &hs_token(&claims("u1"))).await).await;
    assert_eq!(h["x-user-id"][0], "u1");
    // Without it, 403; a look-alike scope does not count.
    for scope in [json!("profile"), json!("orders:write orders:readx"), json!("")] {
        let token = hs_token(&claims_with("u1", &[("scope", scope.clone())]));
        let r = env.with_token("/echo/orders", &token).await;
        assert_eq!(r.status(), 403, "scope {scope}");
        assert!(header_str(&r, "www-authenticate").contains(r#"error="insufficient_scope""#));
        let body = error_body(r, 403, "FORBIDDEN").await.to_string();
        assert!(!body.contains(&token), "{body}");
    }
    let no_scope = hs_token(&claims_with("u1", &[("scope", Value::Null)]));
    let r = env.with_token("/echo/orders", &no_scope).await;
    error_body(r, 403, "FORBIDDEN").await;
    // The unscoped route takes the same token.
    assert_eq!(env.status_with_token("/echo", &no_scope).await, 200);
    // An array-valued `scp` (most providers) counts too.
    let scp = hs_token(&claims_with(
        "u1",
        &[("scope", Value::Null), ("scp", json!(["orders:read"]))],
    ));
    assert_eq!(env.status_with_token("/echo/orders", &scp).await, 200);
}

// ---------------------------------------------------------------------------------------------
// 7. Identity headers cannot be spoofed; optional and public routes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sent_identity_headers_are_replaced_or_removed() {
    let env = env("", "").await;
    let token = hs_token(&claims("u1"));
    let r = env
        .get("/echo")
        .bearer_auth(&token)
        .header("x-user-id", "admin")
        .header("x-user-scopes", "orders:write admin")
        .send()
        .await
        .unwrap();
    let h = upstream_headers(r).await;
    assert_eq!(h["x-user-id"], json!(["u1"]), "{h}");
    assert_eq!(h["x-user-scopes"], json!([SCOPES]), "{h}");

    // A token without `scope`: the client's x-user-scopes is dropped, not kept.
    let bare = hs_token(&claims_with("u2", &[("scope", Value::Null)]));
    let r = env
        .get("/echo")
        .bearer_auth(&bare)
        .header("X-User-Scopes", "admin")
        .send()
        .await
        .unwrap();
    let h = upstream_headers(r).await;
    assert_eq!(h["x-user-id"], json!(["u2"]), "{h}");
    assert!(h.get("x-user-scopes").is_none(), "{h}");

    // A public route: the gateway sets nothing and removes the client's copies.
    for creds in [None, Some(token.as_str())] {
        let mut request = env
            .get("/echo/public")
            .header("x-user-id", "admin")
            .header("x-user-id", "root")
            .header("x-user-scopes", "admin");
        if let Some(t) = creds {
            request = request.bearer_auth(t);
        }
        let h = upstream_headers(request.send().await.unwrap()).await;
        assert!(h.get("x-user-id").is_none(), "{h}");
        assert!(h.get("x-user-scopes").is_none(), "{h}");
    }

    // The same over raw HTTP with odd casing.
    let raw = common::raw(
        env.gw.addr,
        "GET /echo/public HTTP/1.1\r\nHost: gw\r\nX-USER-ID: admin\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(common::first_status(&raw), 200, "{raw}");
    assert!(!raw.to_ascii_lowercase().contains("x-user-id"), "{raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_routes_ignore_credentials_even_invalid_ones() {
    let env = env("", "").await;
    let expired = hs_token(&claims_with("u1", &[("exp", json!(now() - 3600))]));
    for token in ["garbage", "a.b!.c", expired.as_str()] {
        let r = env.with_token("/echo/public", token).await;
        let h = upstream_headers(r).await;
        assert!(h.get("x-user-id").is_none(), "{h}");
    }
    let h = upstream_headers(env.with_key("/echo/public", "wrong-key").await).await;
    assert!(h.get("x-api-key").is_none(), "{h}");
    let r = env.get("/echo/public").send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_auth_lets_anonymous_callers_through_but_not_bad_credentials() {
    let env = env("", "").await;
    // No credentials: anonymous, and a spoofed identity header does not survive.
    let r = env
        .get("/echo/optional")
        .header("x-user-id", "admin")
        .send()
        .await
        .unwrap();
    let h = upstream_headers(r).await;
    assert!(h.get("x-user-id").is_none(), "{h}");
    // Valid credentials: identified.
    let h = upstream_headers(env.with_token("/echo/optional", &hs_token(&claims("u1"))).await).await;
    assert_eq!(h["x-user-id"][0], "u1");
    let h = upstream_headers(env.with_key("/echo/optional", KEY_A).await).await;
    assert_eq!(h["x-user-id"][0], "partner-a");
    // Bad credentials: 401, never a downgrade to anonymous.
    let bad = hs_token(&claims_with("u1", &[("iss", json!("https://evil.test"))]));
    assert_invalid_token(env.with_token("/echo/optional", &bad).await, &bad, "wrong iss").await;
    let r = env.with_key("/echo/optional", "wrong-key").await;
    error_body(r, 401, "UNAUTHENTICATED").await;
}

// ---------------------------------------------------------------------------------------------
// 8. forward_authorization

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_is_forwarded_by_default() {
    let env = env("", "").await;
    let token = hs_token(&claims("u1"));
    let h = upstream_headers(env.with_token("/echo", &token).await).await;
    assert_eq!(h["authorization"], json!([format!("Bearer {token}")]), "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_authorization_false_removes_it_upstream() {
    let env = env("forward_authorization = false", "").await;
    let token = hs_token(&claims("u1"));
    for path in ["/echo", "/echo/optional", "/echo/public"] {
        let h = upstream_headers(env.with_token(path, &token).await).await;
        assert!(h.get("authorization").is_none(), "{path}: {h}");
    }
    let h = upstream_headers(env.with_token("/echo", &token).await).await;
    assert_eq!(h["x-user-id"][0], "u1", "the identity still goes upstream: {h}");
}

/// RFC 9110 §7.6.1 lets a client name any header in `Connection`; the gateway removes those, but
/// before it sets the identity headers, so a caller cannot delete its own verified identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_header_cannot_remove_the_identity_headers() {
    let env = env("", "").await;
    let token = hs_token(&claims("u1"));
    let reply = common::raw(
        env.gw.addr,
        &format!(
            "GET /echo HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\
             Connection: x-user-id, x-user-scopes, close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(common::first_status(&reply), 200, "{reply}");
    let body: Value = serde_json::from_str(reply.split_once("\r\n\r\n").unwrap().1).unwrap();
    let h = &body["headers"];
    assert_eq!(
        h["x-user-id"],
        json!(["u1"]),
        "the verified identity was dropped: {h}"
    );
    assert_eq!(h["x-user-scopes"], json!([SCOPES]), "{h}");
}
