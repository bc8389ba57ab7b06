//! `routes.toml` exactly as written: serde structs that keep every value's byte span, so
//! validation can point at the line and column of a bad value. Unknown keys are errors.
//!
//! Values that need checking beyond their TOML type (durations, URLs, names) are kept as
//! `Spanned<String>` and turned into domain types by `validate`, which reports all errors at once.
//! The doc comments here are also the descriptions of the generated JSON Schema
//! (`gateway config-schema`, `routes.schema.json`) that editors show.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_spanned::Spanned;

pub type Str = Spanned<String>;

/// The gateway's route table and settings.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "routes.toml")]
pub struct RawConfig {
    /// The listener and limits that apply to every request.
    #[serde(default)]
    #[schemars(with = "Option<RawServer>")]
    pub server: Option<Spanned<RawServer>>,
    /// Named upstream services that routes forward to.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, RawService>")]
    pub services: BTreeMap<Str, Spanned<RawService>>,
    /// Routes; the most specific match wins, whatever the order.
    #[serde(default)]
    #[schemars(with = "Vec<RawRoute>")]
    pub routes: Vec<Spanned<RawRoute>>,
    /// Who may call: JWT bearer tokens and API keys. Routes choose with `auth` and `scopes`.
    #[serde(default)]
    #[schemars(with = "Option<RawAuth>")]
    pub auth: Option<Spanned<RawAuth>>,
    /// Named rate-limit policies; routes pick one with `rate_limit`, `[server]` can set a default.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, RawRateLimit>")]
    pub rate_limits: BTreeMap<Str, Spanned<RawRateLimit>>,
    /// Where rate-limit counters live: in this process (default) or in Redis, shared by every
    /// gateway instance that points at it.
    #[serde(default)]
    #[schemars(with = "Option<RawRateLimitStore>")]
    pub rate_limit_store: Option<Spanned<RawRateLimitStore>>,
    /// The GraphQL endpoint: a schema of `*.graphql` files whose fields call the services.
    #[serde(default)]
    #[schemars(with = "Option<RawGraphql>")]
    pub graphql: Option<Spanned<RawGraphql>>,
    /// The admin API (status, config, reload, check, health) on its own listener.
    #[serde(default)]
    #[schemars(with = "Option<RawAdmin>")]
    pub admin: Option<Spanned<RawAdmin>>,
    /// Logs and traces.
    #[serde(default)]
    #[schemars(with = "Option<RawTelemetry>")]
    pub telemetry: Option<Spanned<RawTelemetry>>,
}

/// `[telemetry]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Telemetry")]
pub struct RawTelemetry {
    /// "text" (default, for terminals) or "json" (one JSON object per line, for machines).
    #[schemars(with = "Option<String>")]
    pub log_format: Option<Str>,
    /// The log filter when RUST_LOG is not set, like "info" (default) or "info,access=off".
    #[schemars(with = "Option<String>")]
    pub log_level: Option<Str>,
    /// Export spans with OTLP over HTTP (protobuf) to this collector, like
    /// "http://127.0.0.1:4318" ("/v1/traces" is added to a URL without a path). Off by default.
    #[schemars(with = "Option<String>")]
    pub otlp_endpoint: Option<Str>,
    /// The `service.name` of exported spans. Default "gateway".
    #[schemars(with = "Option<String>")]
    pub service_name: Option<Str>,
    /// The share of traces the gateway starts that are recorded, 0.0 to 1.0 (default 1.0). A
    /// client's `traceparent` decides for its own traces.
    #[schemars(with = "Option<f64>", range(min = 0.0, max = 1.0))]
    pub sample_ratio: Option<Spanned<f64>>,
}

/// `[admin]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Admin")]
pub struct RawAdmin {
    /// The admin listener, off the public port. Default "127.0.0.1:9090".
    #[schemars(with = "Option<String>")]
    pub listen: Option<Str>,
    /// A bearer token every admin request must send (`Authorization: Bearer ...`); use
    /// "${ADMIN_TOKEN}". Default: none (keep the listener on loopback then).
    #[schemars(with = "Option<String>")]
    pub token: Option<Str>,
}

/// `[graphql]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Graphql")]
pub struct RawGraphql {
    /// The endpoint's path. Default "/graphql".
    #[schemars(with = "Option<String>")]
    pub path: Option<Str>,
    /// A directory of `*.graphql` SDL files, relative to this file. Default "schema".
    #[schemars(with = "Option<String>")]
    pub schema: Option<Str>,
    /// Serve GraphiQL to browsers (GET with `Accept: text/html`). Default true.
    #[schemars(with = "Option<bool>")]
    pub playground: Option<Spanned<bool>>,
    /// Serve GraphiQL's scripts from this directory (an npm install of graphiql@3, react@18 and
    /// react-dom@18), relative to this file, instead of the unpkg CDN.
    #[schemars(with = "Option<String>")]
    pub playground_assets: Option<Str>,
    /// The query the playground opens with.
    #[schemars(with = "Option<String>")]
    pub example_query: Option<Str>,
    /// "required" | "optional" (default: `@auth` decides per field) | "none".
    #[schemars(with = "Option<AuthModeSchema>")]
    pub auth: Option<Str>,
    /// Scopes every caller of the endpoint must hold.
    #[schemars(with = "Option<Vec<String>>")]
    pub scopes: Option<Spanned<Vec<Str>>>,
    /// The `[rate_limits.NAME]` policy of the endpoint, or "none". Each operation of a batch counts.
    #[schemars(with = "Option<String>")]
    pub rate_limit: Option<Str>,
    /// The overall deadline of an operation, every backend call included.
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Str>,
    /// Answer introspection queries. Default false; turn on for development.
    #[schemars(with = "Option<bool>")]
    pub introspection: Option<Spanned<bool>>,
    /// "Did you mean" hints in validation errors (they reveal the schema). Default false.
    #[schemars(with = "Option<bool>")]
    pub suggestions: Option<Spanned<bool>>,
    /// Accept a JSON array of operations in one POST. Default false.
    #[schemars(with = "Option<bool>")]
    pub batching: Option<Spanned<bool>>,
    /// The most operations in one batch. Default 10.
    #[schemars(with = "Option<u32>")]
    pub max_batch: Option<Spanned<i64>>,
    /// The deepest selection nesting. Default 15.
    #[schemars(with = "Option<u32>")]
    pub max_depth: Option<Spanned<i64>>,
    /// The most fields an operation may select (async-graphql's complexity). Default 1000.
    #[schemars(with = "Option<u32>")]
    pub max_complexity: Option<Spanned<i64>>,
    /// The most aliases in a document. Default 30.
    #[schemars(with = "Option<u32>")]
    pub max_aliases: Option<Spanned<i64>>,
    /// The most root fields in an operation. Default 20.
    #[schemars(with = "Option<u32>")]
    pub max_root_fields: Option<Spanned<i64>>,
    /// The most lexical tokens in a document, checked before it is parsed. Default 5000.
    #[schemars(with = "Option<u32>")]
    pub max_tokens: Option<Spanned<i64>>,
    /// The largest query document. Default "64KiB".
    #[schemars(with = "Option<String>")]
    pub max_query_size: Option<Str>,
    /// How long an expired cached response may still stand in for a failed call with
    /// `fallback: "stale"`. Default "5m".
    #[schemars(with = "Option<String>")]
    pub stale_grace: Option<Str>,
    /// The most cached backend responses. Default 10000.
    #[schemars(with = "Option<u32>")]
    pub cache_max_entries: Option<Spanned<i64>>,
    /// Let clients ask for each backend call's timing (`x-gateway-calls: 1` → `extensions.calls`:
    /// path, service, start and duration, cache use). It shows backend names: default false.
    #[schemars(with = "Option<bool>")]
    pub expose_calls: Option<Spanned<bool>>,
    /// Refuse requests a browser could send cross-site without a preflight (Apollo Router's CSRF
    /// prevention). Default true.
    #[schemars(with = "Option<bool>")]
    pub csrf: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "RateLimit")]
pub struct RawRateLimit {
    /// Requests allowed per `per` in the long run, per key.
    #[schemars(with = "u32", range(min = 1))]
    pub requests: Spanned<i64>,
    /// The window `requests` are spread over, like "1s" or "1m".
    #[schemars(with = "String")]
    pub per: Str,
    /// Requests a key may make at once after being idle. Default: `requests`.
    #[schemars(with = "Option<u32>", range(min = 1))]
    pub burst: Option<Spanned<i64>>,
    /// What a quota belongs to: "client" (the caller's identity, else its IP; the default),
    /// "ip" (the client IP, X-Forwarded-For believed only from `trusted_proxies`) or "global"
    /// (one quota for everyone on the route).
    #[schemars(with = "Option<RateLimitKeySchema>")]
    pub key: Option<Str>,
    /// Quotas by the value of one of the caller's claims, like `claim = "plan"` and
    /// `gold = { requests = 1000, per = "1m" }`; other values (and anonymous callers) get the
    /// policy's own quota.
    #[schemars(with = "Option<RawTiersSchema>")]
    pub tiers: Option<Spanned<RawTiers>>,
}

/// Which quota a request counts against. (Schema only: validation reads the string.)
#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(rename = "RateLimitKey")]
#[allow(dead_code)]
enum RateLimitKeySchema {
    Client,
    Ip,
    Global,
}

/// `[rate_limits.NAME.tiers]`: `claim` plus any number of `TIER = { requests, per, burst }`.
#[derive(Debug)]
pub struct RawTiers {
    pub claim: Option<Str>,
    pub tiers: Vec<(Str, Spanned<RawTier>)>,
}

impl<'de> Deserialize<'de> for RawTiers {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawTiers;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`claim = \"NAME\"` and tiers like `gold = { requests = 1000, per = \"1m\" }`")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RawTiers, A::Error> {
                let mut out = RawTiers {
                    claim: None,
                    tiers: Vec::new(),
                };
                while let Some(key) = map.next_key::<Str>()? {
                    if key.get_ref() == "claim" {
                        out.claim = Some(map.next_value()?);
                    } else {
                        out.tiers.push((key, map.next_value()?));
                    }
                }
                Ok(out)
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// `[rate_limits.NAME.tiers]` as editors see it.
#[derive(JsonSchema)]
#[schemars(rename = "RateLimitTiers")]
#[allow(dead_code)]
struct RawTiersSchema {
    /// The claim whose value names the tier, like "plan".
    claim: String,
    /// One quota per claim value.
    #[serde(flatten)]
    tiers: BTreeMap<String, RawTier>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "RateLimitTier")]
pub struct RawTier {
    /// Requests allowed per `per` for callers of this tier.
    #[schemars(with = "u32", range(min = 1))]
    pub requests: Spanned<i64>,
    /// The window, like "1m".
    #[schemars(with = "String")]
    pub per: Str,
    /// Requests at once after being idle. Default: `requests`.
    #[schemars(with = "Option<u32>", range(min = 1))]
    pub burst: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "RateLimitStore")]
pub struct RawRateLimitStore {
    /// "memory" (default: each gateway instance counts on its own) or "redis" (instances share
    /// one count).
    #[schemars(with = "Option<RateLimitBackendSchema>")]
    pub backend: Option<Str>,
    /// The Redis server, like "redis://127.0.0.1:6379" or "redis://:password@host:6379/0".
    #[schemars(with = "Option<String>")]
    pub url: Option<Str>,
    /// When Redis cannot answer within `timeout`: "local" (count in this process meanwhile; the
    /// default), "allow" (let requests through) or "deny" (answer 429).
    #[schemars(with = "Option<OnErrorSchema>")]
    pub on_error: Option<Str>,
    /// How long a request waits for Redis before `on_error` applies. Default "50ms".
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Str>,
}

/// (Schema only.)
#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(rename = "RateLimitBackend")]
#[allow(dead_code)]
enum RateLimitBackendSchema {
    Memory,
    Redis,
}

/// (Schema only.)
#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(rename = "RateLimitOnError")]
#[allow(dead_code)]
enum OnErrorSchema {
    Local,
    Allow,
    Deny,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Auth")]
pub struct RawAuth {
    /// JWT bearer tokens (`Authorization: Bearer ...`), verified with static keys and/or a JWKS.
    #[schemars(with = "Option<RawJwt>")]
    pub jwt: Option<Spanned<RawJwt>>,
    /// API keys for server-to-server clients, stored as SHA-256 hashes.
    #[serde(default)]
    #[schemars(with = "Vec<RawApiKey>")]
    pub api_keys: Vec<Spanned<RawApiKey>>,
    /// The request header that carries an API key. Default "x-api-key". Never sent upstream.
    #[schemars(with = "Option<String>")]
    pub api_key_header: Option<Str>,
    /// Send the client's `Authorization` header upstream unchanged. Default true.
    #[schemars(with = "Option<bool>")]
    pub forward_authorization: Option<Spanned<bool>>,
    /// Upstream headers set from the caller's verified claims, like "x-user-id" = "sub" (API keys
    /// have `sub` = their id and `scope`). A client's own headers of these names are always
    /// removed, on every route, so they cannot be spoofed.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub forward: BTreeMap<Str, Str>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Jwt")]
pub struct RawJwt {
    /// Accepted `iss` values; a token's `iss` must be one of them.
    #[schemars(with = "Vec<String>", length(min = 1))]
    pub issuers: Spanned<Vec<Str>>,
    /// Accepted `aud` values; a token's `aud` must name at least one. Default: `aud` unchecked.
    #[schemars(with = "Option<Vec<String>>")]
    pub audiences: Option<Vec<Str>>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`. Default "30s".
    #[schemars(with = "Option<String>")]
    pub leeway: Option<Str>,
    /// JWKS URL of the identity provider; its keys are fetched at startup and refreshed.
    #[schemars(with = "Option<String>")]
    pub jwks_url: Option<Str>,
    /// How often the JWKS is fetched again. Default "5m".
    #[schemars(with = "Option<String>")]
    pub jwks_refresh: Option<Str>,
    /// A token with an unknown `kid` refetches the JWKS at most once per this period. Default "30s".
    #[schemars(with = "Option<String>")]
    pub jwks_cooldown: Option<Str>,
    /// Static verification keys, each pinned to one algorithm.
    #[serde(default)]
    #[schemars(with = "Vec<RawJwtKey>")]
    pub keys: Vec<Spanned<RawJwtKey>>,
    /// Same as `[auth.forward]` (claims sent upstream as headers), written under `[auth.jwt]`.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub forward: BTreeMap<Str, Str>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "JwtKey")]
pub struct RawJwtKey {
    /// The `kid` tokens name this key by. Without it, the key verifies tokens that carry no `kid`.
    #[schemars(with = "Option<String>")]
    pub kid: Option<Str>,
    /// The only algorithm this key accepts: HS256/384/512, RS256/384/512, PS256/384/512,
    /// ES256/384 or EdDSA.
    #[schemars(with = "String")]
    pub algorithm: Str,
    /// The shared secret of an HS* key, like "${JWT_SECRET}".
    #[schemars(with = "Option<String>")]
    pub secret: Option<Str>,
    /// The public key of an RS*/PS*/ES*/EdDSA key: a PEM file (relative to this file) or the PEM text.
    #[schemars(with = "Option<String>")]
    pub public_key_pem: Option<Str>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "ApiKey")]
pub struct RawApiKey {
    /// The client's name: its identity's subject, in logs and rate limits.
    #[schemars(with = "String")]
    pub id: Str,
    /// Hex SHA-256 of the key (`printf %s "$KEY" | sha256sum`).
    #[schemars(with = "String")]
    pub sha256: Str,
    /// Scopes this client holds.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub scopes: Vec<Str>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Server")]
pub struct RawServer {
    /// Address to listen on, IP:PORT. Default "127.0.0.1:8080". Needs a restart to change.
    #[schemars(with = "Option<String>")]
    pub listen: Option<Str>,
    /// Tokio worker threads; 0 (the default) = one per available core. Needs a restart to change.
    #[schemars(with = "Option<u32>")]
    pub worker_threads: Option<Spanned<i64>>,
    /// The whole request until response headers, every upstream attempt included. Default "30s".
    #[schemars(with = "Option<String>")]
    pub request_timeout: Option<Str>,
    /// Clients must send their complete request head within this time. Default "10s".
    #[schemars(with = "Option<String>")]
    pub header_read_timeout: Option<Str>,
    /// Grace period for in-flight requests on SIGINT/SIGTERM. Default "30s".
    #[schemars(with = "Option<String>")]
    pub shutdown_timeout: Option<Str>,
    /// Largest request body, like "10MiB" (the default); 413 beyond it, chunked bodies too.
    #[schemars(with = "Option<String>")]
    pub max_body_size: Option<Str>,
    /// Open client connections at most; 0 = unlimited. Default 10000. Needs a restart to change.
    #[schemars(with = "Option<u32>")]
    pub max_connections: Option<Spanned<i64>>,
    /// CIDRs or IPs of proxies whose X-Forwarded-* headers are believed. Default none.
    #[schemars(with = "Option<Vec<String>>")]
    pub trusted_proxies: Option<Vec<Str>>,
    /// The `[rate_limits.NAME]` policy of routes that set no `rate_limit`. Default: none.
    #[schemars(with = "Option<String>")]
    pub rate_limit: Option<Str>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Service")]
pub struct RawService {
    /// Instance base URLs, like "http://127.0.0.1:9101" or "http://users:80/v1".
    #[schemars(with = "Vec<String>", length(min = 1))]
    pub urls: Spanned<Vec<Str>>,
    /// TCP connect timeout. Default "1s".
    #[schemars(with = "Option<String>")]
    pub connect_timeout: Option<Str>,
    /// Per attempt, until response headers; also the longest pause between body chunks. Default "5s".
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Str>,
    /// How an instance is picked: "round_robin", "least_requests" (the default: the less busy of
    /// two random instances) or "random".
    #[schemars(with = "Option<LoadBalancingSchema>")]
    pub load_balancing: Option<Str>,
    /// Bulkhead: requests in flight to this service at most (response bodies included); beyond
    /// it, 503 UPSTREAM_OVERLOADED at once. Default 1024.
    #[schemars(with = "Option<u32>", range(min = 1))]
    pub max_concurrent: Option<Spanned<i64>>,
    /// Active health checks of every instance (optional; passive outlier ejection is always on).
    #[schemars(with = "Option<RawHealthCheck>")]
    pub health_check: Option<Spanned<RawHealthCheck>>,
    /// The service's circuit breaker (on by default with the defaults below).
    #[schemars(with = "Option<RawCircuitBreaker>")]
    pub circuit_breaker: Option<Spanned<RawCircuitBreaker>>,
    /// Retries of failed attempts (by default one retry of safe requests, within a budget).
    #[schemars(with = "Option<RawRetry>")]
    pub retry: Option<Spanned<RawRetry>>,
}

/// (Schema only.)
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "LoadBalancing")]
#[allow(dead_code)]
enum LoadBalancingSchema {
    RoundRobin,
    LeastRequests,
    Random,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "HealthCheck")]
pub struct RawHealthCheck {
    /// The path probed with GET on each instance (from the instance's root, not under its base
    /// path), like "/health"; 2xx is healthy.
    #[schemars(with = "String")]
    pub path: Str,
    /// Time between probes. Default "5s".
    #[schemars(with = "Option<String>")]
    pub interval: Option<Str>,
    /// How long a probe may take. Default: the service's `timeout`, at most `interval`.
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Str>,
    /// Consecutive failed probes that take an instance out. Default 3.
    #[schemars(with = "Option<u32>", range(min = 1))]
    pub unhealthy_after: Option<Spanned<i64>>,
    /// Consecutive good probes that bring it back. Default 2.
    #[schemars(with = "Option<u32>", range(min = 1))]
    pub healthy_after: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "CircuitBreaker")]
pub struct RawCircuitBreaker {
    /// false turns the breaker off. Default true.
    #[schemars(with = "Option<bool>")]
    pub enabled: Option<Spanned<bool>>,
    /// Open when this share of the calls in `window` failed (5xx, connect error, reset, timeout,
    /// slow call). Default 0.5.
    #[schemars(with = "Option<f64>", range(min = 0.0, max = 1.0))]
    pub failure_rate: Option<Spanned<f64>>,
    /// ... and at least this many calls were made in `window`. Default 20.
    #[schemars(with = "Option<u32>", range(min = 1))]
    pub min_requests: Option<Spanned<i64>>,
    /// The rolling window the rate is measured over. Default "10s".
    #[schemars(with = "Option<String>")]
    pub window: Option<Str>,
    /// How long it stays open (503 CIRCUIT_OPEN without calling the backend). Default "30s".
    #[schemars(with = "Option<String>")]
    pub open_for: Option<Str>,
    /// Then this many probe calls go through; all succeed → closed, one fails → open again.
    /// Default 3.
    #[schemars(with = "Option<u32>", range(min = 1))]
    pub half_open_requests: Option<Spanned<i64>>,
    /// A call whose response headers take longer than this counts as failed. Default: off.
    #[schemars(with = "Option<String>")]
    pub slow_call: Option<Str>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Retry")]
pub struct RawRetry {
    /// Tries in total, the first included; 1 = no retries. Default 2.
    #[schemars(with = "Option<u32>", range(min = 1, max = 10))]
    pub attempts: Option<Spanned<i64>>,
    /// Base of the exponential backoff (full jitter). Default "25ms".
    #[schemars(with = "Option<String>")]
    pub backoff: Option<Str>,
    /// Longest wait between tries. Default "1s".
    #[schemars(with = "Option<String>")]
    pub max_backoff: Option<Str>,
    /// Retries may add at most this share of the service's recent requests. Default 0.2.
    #[schemars(with = "Option<f64>", range(min = 0.0, max = 1.0))]
    pub budget: Option<Spanned<f64>>,
    /// ... plus this many retries per second regardless, so a quiet service can still retry.
    /// Default 10.
    #[schemars(with = "Option<u32>")]
    pub min_retries_per_second: Option<Spanned<i64>>,
    /// What is retried: "connect" (no connection), "reset" (connection lost before the response),
    /// "timeout" (no response within `timeout`) and status codes like "503". Default
    /// ["connect", "reset", "502", "503", "504"].
    #[schemars(with = "Option<Vec<String>>")]
    pub on: Option<Spanned<Vec<Str>>>,
    /// Request bodies up to this size are kept so they can be sent again; larger ones (and bodies
    /// of unknown length) are streamed and never retried. Default "64KiB".
    #[schemars(with = "Option<String>")]
    pub max_body: Option<Str>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Route")]
pub struct RawRoute {
    /// Matches this path and everything below it, like "/api/users". Either `prefix` or `path`.
    #[schemars(with = "Option<String>")]
    pub prefix: Option<Str>,
    /// A pattern with {param} segments and an optional trailing {*rest}, like "/api/users/{id}".
    #[schemars(with = "Option<String>")]
    pub path: Option<Str>,
    /// Methods this route serves, upper case. Default: all. GET also serves HEAD.
    #[schemars(with = "Option<Vec<String>>")]
    pub methods: Option<Spanned<Vec<Str>>>,
    /// The [services.NAME] to forward to.
    #[schemars(with = "String")]
    pub service: Str,
    /// Forward /api/users/7 as <service base>/7 (prefix routes only). Default false.
    #[schemars(with = "Option<bool>")]
    pub strip_prefix: Option<Spanned<bool>>,
    /// "required" (default) | "optional" | "none".
    #[schemars(with = "Option<AuthModeSchema>")]
    pub auth: Option<Str>,
    /// Scopes the caller must all hold (403 otherwise). Needs `auth` "required" or "optional".
    #[schemars(with = "Option<Vec<String>>")]
    pub scopes: Option<Spanned<Vec<Str>>>,
    /// This route's overall deadline (every upstream attempt included), instead of the server's
    /// `request_timeout`.
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Str>,
    /// The `[rate_limits.NAME]` policy of this route, or "none" to opt out of the server's
    /// default policy.
    #[schemars(with = "Option<String>")]
    pub rate_limit: Option<Str>,
}

/// Whether callers must be authenticated. (Schema only: validation reads the string.)
#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(rename = "Auth")]
#[allow(dead_code)]
enum AuthModeSchema {
    Required,
    Optional,
    None,
}

/// The JSON Schema of `routes.toml`, pretty-printed.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(RawConfig);
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}
