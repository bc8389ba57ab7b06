//! The validated config: domain types only (durations, socket addresses, parsed URLs, methods).
//! Built by `validate`, immutable afterwards, and the input of `Snapshot::build`.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use http::{HeaderName, Method};
use ipnet::IpNet;
use jsonwebtoken::{Algorithm, DecodingKey};
use url::Url;

use super::Location;

/// The whole validated `routes.toml`.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub server: ServerConfig,
    /// Services by name, in name order.
    pub services: Vec<ServiceConfig>,
    /// Routes in file order.
    pub routes: Vec<RouteConfig>,
    pub auth: AuthConfig,
    /// `[rate_limits.NAME]` policies, in name order.
    pub rate_limits: Vec<RateLimitPolicy>,
    pub rate_limit_store: RateLimitStoreConfig,
    /// `[graphql]`, when present.
    pub graphql: Option<GraphqlConfig>,
    /// `[admin]`, when present.
    pub admin: Option<AdminConfig>,
    pub telemetry: TelemetryConfig,
    /// What each section was as written: a reload keeps the state of what did not change.
    pub fingerprints: super::Fingerprints,
    /// The file as written (for `/admin/config`, which redacts it).
    pub text: SourceText,
}

/// A config file's text; never printed by `Debug` (it holds secrets).
#[derive(Clone, Default)]
pub struct SourceText(pub std::sync::Arc<str>);

impl SourceText {
    pub fn get(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SourceText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

/// `[telemetry]`: how the gateway logs and where it sends traces.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    /// An `EnvFilter` directive; RUST_LOG wins when set.
    pub log_level: String,
    /// Where spans go (OTLP over HTTP, protobuf): the full URL of the collector's traces
    /// endpoint. `None` (the default): no spans are made at all.
    pub otlp_endpoint: Option<url::Url>,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// The share of new traces (those the client did not start) that are recorded; a client's
    /// sampling decision in its `traceparent` is followed.
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Text,
            log_level: "info".into(),
            otlp_endpoint: None,
            service_name: "gateway".into(),
            sample_ratio: 1.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `[admin]`: the admin API's own listener, off the public port.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// A bearer token every admin request must carry, when set.
    pub token: Option<String>,
}

/// `[graphql]`: the endpoint, its schema directory and its limits.
#[derive(Debug, Clone)]
pub struct GraphqlConfig {
    /// The endpoint as a route: `path` is its prefix, `service` is empty.
    pub route: RouteConfig,
    pub path: String,
    pub schema_dir: std::path::PathBuf,
    /// Where the config names the schema directory (errors about the directory point here).
    pub schema_location: Location,
    pub playground: bool,
    pub playground_assets: Option<std::path::PathBuf>,
    pub example_query: Option<String>,
    pub introspection: bool,
    pub suggestions: bool,
    pub batching: bool,
    pub max_batch: usize,
    pub max_depth: usize,
    pub max_complexity: usize,
    pub max_aliases: usize,
    pub max_root_fields: usize,
    pub max_tokens: usize,
    pub max_query_size: usize,
    pub stale_grace: Duration,
    pub cache_max_entries: u64,
    pub csrf: bool,
    /// Clients may ask for `extensions.calls`.
    pub expose_calls: bool,
}

impl GraphqlConfig {
    pub const DEFAULT_PATH: &str = "/graphql";
    pub const DEFAULT_MAX_BATCH: usize = 10;
    pub const DEFAULT_MAX_DEPTH: usize = 15;
    pub const DEFAULT_MAX_COMPLEXITY: usize = 1000;
    pub const DEFAULT_MAX_ALIASES: usize = 30;
    pub const DEFAULT_MAX_ROOT_FIELDS: usize = 20;
    pub const DEFAULT_MAX_TOKENS: usize = 5000;
    pub const DEFAULT_MAX_QUERY_SIZE: usize = 64 << 10;
    pub const DEFAULT_STALE_GRACE: Duration = Duration::from_secs(300);
    pub const DEFAULT_CACHE_MAX_ENTRIES: u64 = 10_000;
}

impl Config {
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// `[server]`: the listener and limits that apply to every request.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Tokio worker threads; 0 means one per available core.
    pub worker_threads: usize,
    /// The whole request, all upstream attempts included, until response headers.
    pub request_timeout: Duration,
    /// A client must send its complete request head within this time.
    pub header_read_timeout: Duration,
    /// On SIGINT/SIGTERM, in-flight requests get this long to finish.
    pub shutdown_timeout: Duration,
    pub max_body_size: u64,
    /// Open client connections at most; further accepts wait. 0 = unlimited.
    pub max_connections: usize,
    /// Peers whose X-Forwarded-* headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// The rate-limit policy of routes that name none.
    pub rate_limit: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            worker_threads: 0,
            request_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(30),
            max_body_size: 10 * 1024 * 1024,
            max_connections: 10_000,
            trusted_proxies: Vec::new(),
            rate_limit: None,
        }
    }
}

/// `[services.NAME]`: an upstream service and its instances.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub name: String,
    /// Instance base URLs (scheme, host, port and an optional base path; no trailing slash).
    pub urls: Vec<Url>,
    pub connect_timeout: Duration,
    /// Per attempt, until the response headers; also the longest pause between body chunks.
    pub timeout: Duration,
    pub load_balancing: LoadBalancing,
    /// Requests in flight at most (the bulkhead).
    pub max_concurrent: usize,
    pub health_check: Option<HealthCheckConfig>,
    /// `None`: no breaker.
    pub circuit_breaker: Option<BreakerConfig>,
    pub retry: RetryConfig,
    pub location: Location,
}

impl ServiceConfig {
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_MAX_CONCURRENT: usize = 1024;

    /// A service with every default, for tests and tools.
    pub fn new(name: &str, urls: Vec<Url>) -> Self {
        Self {
            name: name.to_owned(),
            urls,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            timeout: Self::DEFAULT_TIMEOUT,
            load_balancing: LoadBalancing::default(),
            max_concurrent: Self::DEFAULT_MAX_CONCURRENT,
            health_check: None,
            circuit_breaker: Some(BreakerConfig::default()),
            retry: RetryConfig::default(),
            location: Location::default(),
        }
    }
}

/// How an instance is picked for each attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadBalancing {
    RoundRobin,
    /// Power of two choices: the one with fewer requests in flight of two picked at random.
    #[default]
    LeastRequests,
    Random,
}

/// `[services.NAME.health_check]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    /// From the instance's root (its base path is not prepended).
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
}

/// `[services.NAME.circuit_breaker]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    pub failure_rate: f64,
    pub min_requests: u32,
    pub window: Duration,
    pub open_for: Duration,
    pub half_open_requests: u32,
    pub slow_call: Option<Duration>,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_rate: 0.5,
            min_requests: 20,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(30),
            half_open_requests: 3,
            slow_call: None,
        }
    }
}

/// `[services.NAME.retry]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Tries in total.
    pub attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub budget: f64,
    pub min_retries_per_second: u32,
    pub on: RetryOn,
    pub max_body: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 2,
            backoff: Duration::from_millis(25),
            max_backoff: Duration::from_secs(1),
            budget: 0.2,
            min_retries_per_second: 10,
            on: RetryOn::default(),
            max_body: 64 * 1024,
        }
    }
}

/// Which failed attempts are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryOn {
    pub connect: bool,
    pub reset: bool,
    pub timeout: bool,
    pub statuses: Vec<u16>,
}

impl Default for RetryOn {
    fn default() -> Self {
        Self {
            connect: true,
            reset: true,
            timeout: false,
            statuses: vec![502, 503, 504],
        }
    }
}

/// How a route matches the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// `/api/users` matches `/api/users` and `/api/users/...` (never `/api/usersx`).
    Prefix(String),
    /// A matchit pattern with `{param}` and a trailing `{*rest}`.
    Pattern(String),
}

impl PathMatch {
    /// The route's pattern as written, used in logs and (later) metric labels.
    pub fn as_str(&self) -> &str {
        match self {
            PathMatch::Prefix(p) | PathMatch::Pattern(p) => p,
        }
    }
}

/// Whether a route needs an authenticated caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    #[default]
    Required,
    Optional,
    None,
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub path: PathMatch,
    /// `None` means every method.
    pub methods: Option<Vec<Method>>,
    pub service: String,
    pub strip_prefix: bool,
    pub auth: AuthMode,
    /// Scopes the caller must all hold.
    pub scopes: Vec<String>,
    /// The route's overall deadline, if it has its own (else the server's `request_timeout`).
    pub timeout: Option<Duration>,
    /// The rate-limit policy that applies (the route's own or the server default); `None` means
    /// unlimited.
    pub rate_limit: Option<String>,
    pub location: Location,
}

/// `[auth]`: the credentials the gateway accepts and what it tells upstreams about the caller.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub jwt: Option<JwtConfig>,
    pub api_keys: Vec<ApiKeyConfig>,
    pub api_key_header: HeaderName,
    pub forward_authorization: bool,
    /// Upstream header ← claim name.
    pub forward: Vec<(HeaderName, String)>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt: None,
            api_keys: Vec::new(),
            api_key_header: HeaderName::from_static("x-api-key"),
            forward_authorization: true,
            forward: Vec::new(),
        }
    }
}

impl AuthConfig {
    /// Whether any credential can be verified at all.
    pub fn has_provider(&self) -> bool {
        self.jwt.is_some() || !self.api_keys.is_empty()
    }
}

/// `[auth.jwt]`.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub issuers: Vec<String>,
    /// Empty: `aud` is not checked.
    pub audiences: Vec<String>,
    pub leeway: Duration,
    pub jwks: Option<JwksConfig>,
    pub keys: Vec<StaticKey>,
}

impl JwtConfig {
    pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
}

/// Where the identity provider publishes its keys.
#[derive(Debug, Clone, PartialEq)]
pub struct JwksConfig {
    pub url: Url,
    pub refresh: Duration,
    /// At most one refetch for unknown `kid`s per this period.
    pub cooldown: Duration,
}

impl JwksConfig {
    pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
    pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(30);
}

/// An `[[auth.jwt.keys]]` entry, parsed: the key and the one algorithm it verifies.
#[derive(Clone)]
pub struct StaticKey {
    pub kid: Option<String>,
    pub algorithm: Algorithm,
    pub key: DecodingKey,
}

impl std::fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material: configs end up in logs and the admin API.
        f.debug_struct("StaticKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// An `[[auth.api_keys]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyConfig {
    pub id: String,
    pub sha256: [u8; 32],
    pub scopes: Vec<String>,
}

/// A `[rate_limits.NAME]` policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitPolicy {
    pub name: String,
    pub quota: RateQuota,
    pub key: RateLimitKey,
    pub tiers: Option<RateLimitTiers>,
    pub location: Location,
}

/// A GCRA quota: `requests` per `per` in the long run, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateQuota {
    pub requests: NonZeroU32,
    pub per: Duration,
    pub burst: NonZeroU32,
}

impl RateQuota {
    /// The time one request "costs": the quota refills one request per this interval.
    pub fn interval(&self) -> Duration {
        self.per / self.requests.get()
    }
}

/// What a quota is counted per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RateLimitKey {
    /// The verified caller (token subject or API key id); anonymous callers by client IP.
    #[default]
    Client,
    /// The client IP.
    Ip,
    /// One quota shared by every caller.
    Global,
}

/// Quotas chosen by the value of one claim.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitTiers {
    pub claim: String,
    /// Claim value → quota, in file order.
    pub tiers: Vec<(String, RateQuota)>,
}

/// `[rate_limit_store]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitStoreConfig {
    pub backend: RateLimitBackend,
    /// How long a request waits for Redis before `on_error` applies.
    pub timeout: Duration,
    pub on_error: RedisFailure,
}

impl Default for RateLimitStoreConfig {
    fn default() -> Self {
        Self {
            backend: RateLimitBackend::Memory,
            timeout: Self::DEFAULT_TIMEOUT,
            on_error: RedisFailure::Local,
        }
    }
}

impl RateLimitStoreConfig {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);
}

#[derive(Debug, Clone, PartialEq)]
pub enum RateLimitBackend {
    /// Counters in this process.
    Memory,
    /// Counters in Redis, shared by every instance using it.
    Redis(RedisUrl),
}

/// A Redis URL; it may carry a password, so `Debug` shows only the host.
#[derive(Clone, PartialEq)]
pub struct RedisUrl(pub Url);

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "redis://{}:{}",
            self.0.host_str().unwrap_or_default(),
            self.0.port().unwrap_or(6379)
        )
    }
}

/// What happens when Redis does not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisFailure {
    /// Count in this process until Redis is back.
    Local,
    /// Let the request through.
    Allow,
    /// Answer 429.
    Deny,
}
