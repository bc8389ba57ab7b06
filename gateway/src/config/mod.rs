//! `routes.toml`: reading, `${VAR}` interpolation and validation into an immutable [`Config`].
//!
//! `raw` is the file as written (serde, spans kept, unknown keys rejected), `validate` turns it into
//! the domain types of `model`, `diagnostics` renders every error as `file:line:column: message`.
//! Startup, `gateway check` and hot reload all call [`load`].

mod diagnostics;
mod fingerprint;
mod interpolate;
mod model;
mod raw;
mod validate;

use std::path::Path;

pub use diagnostics::{ConfigError, ConfigErrors, Diagnostics, Location, Source};
pub use fingerprint::Fingerprints;
pub use interpolate::{Env, process_env};
pub use model::{
    AdminConfig, ApiKeyConfig, AuthConfig, AuthMode, BreakerConfig, Config, GraphqlConfig, HealthCheckConfig,
    JwksConfig, JwtConfig, LoadBalancing, LogFormat, PathMatch, RateLimitBackend, RateLimitKey,
    RateLimitPolicy, RateLimitStoreConfig, RateLimitTiers, RateQuota, RedisFailure, RedisUrl, RetryConfig,
    RetryOn, RouteConfig, ServerConfig, ServiceConfig, StaticKey, TelemetryConfig,
};
pub use raw::json_schema;
pub use validate::{DurationProblem, parse_duration, parse_size};

/// A config and the problems found in it. `config` holds everything that validated, so later
/// stages (the route table) can still look for their own errors and report them in the same run.
#[derive(Debug)]
pub struct Checked {
    pub config: Config,
    pub errors: Vec<ConfigError>,
}

impl Checked {
    /// The config if it had no errors, else all of them in file order.
    pub fn into_result(self) -> Result<Config, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(self.config)
        } else {
            Err(ConfigErrors::sorted(self.errors))
        }
    }
}

/// Reads and validates a config file. `Err` only when the file cannot be read or is not TOML of
/// the right shape; every other problem is in [`Checked::errors`].
pub fn load(path: &Path, env: Env<'_>) -> Result<Checked, ConfigErrors> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::whole_file(&name, format!("cannot read the config file: {e}")))?;
    parse(&Source::new(name, text), env)
}

/// Parses and validates config text. A file TOML cannot parse (syntax, an unknown key, a wrong
/// type) stops at its first such error; everything else is collected.
pub fn parse(source: &Source, env: Env<'_>) -> Result<Checked, ConfigErrors> {
    let mut diag = Diagnostics::new(source);
    let raw: raw::RawConfig = match toml::from_str(&source.text) {
        Ok(raw) => raw,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            diag.error(&span, e.message().trim_end().to_owned());
            return Err(ConfigErrors::sorted(diag.into_errors()));
        }
    };
    let mut config = validate::validate(raw, env, &mut diag);
    let files = std::mem::take(&mut config.fingerprints);
    config.fingerprints = Fingerprints::of(&source.text);
    config.fingerprints.merge(files);
    config.text = model::SourceText(source.text.clone());
    Ok(Checked {
        config,
        errors: diag.into_errors(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse_str(text: &str) -> Result<Config, ConfigErrors> {
        parse(&Source::new("routes.toml", text), &no_env).and_then(Checked::into_result)
    }

    #[test]
    fn a_full_config_parses_with_defaults_filled_in() {
        let config = parse_str(
            r#"
[server]
listen = "127.0.0.1:9000"
max_body_size = "1MiB"
trusted_proxies = ["10.0.0.0/8", "127.0.0.1"]

[services.users]
urls = ["${USERS_URL:-http://127.0.0.1:9101/base/}"]

[[routes]]
prefix = "/api/users/"
methods = ["GET", "POST"]
service = "users"
strip_prefix = true
auth = "none"
"#,
        )
        .unwrap();
        assert_eq!(config.server.listen.port(), 9000);
        assert_eq!(config.server.max_body_size, 1 << 20);
        assert_eq!(
            config.server.request_timeout,
            ServerConfig::default().request_timeout
        );
        assert_eq!(config.server.trusted_proxies.len(), 2);
        let users = config.service("users").unwrap();
        assert_eq!(users.urls[0].as_str(), "http://127.0.0.1:9101/base");
        assert_eq!(users.timeout, ServiceConfig::DEFAULT_TIMEOUT);
        let route = &config.routes[0];
        assert_eq!(route.path, PathMatch::Prefix("/api/users".into()));
        assert_eq!(route.methods.as_ref().unwrap().len(), 2);
        assert!(route.strip_prefix);
        assert_eq!(route.location.line, 10);
    }

    #[test]
    fn every_semantic_error_is_reported_at_once_with_its_position() {
        let errors = parse_str(
            r#"[server]
request_timeout = "soon"
max_body_size = "lots"

[services.users]
urls = ["ftp://x", "not a url"]
timeout = "0s"

[[routes]]
prefix = "/api"
service = "nope"
auth = "none"

[[routes]]
path = "/x"
methods = ["get"]
service = "users"
auth = "maybe"

[[routes]]
prefix = "/y"
service = "users"
"#,
        )
        .unwrap_err()
        .to_string();
        assert_error_lines(
            &errors,
            &[
                "routes.toml:2:19: error: `request_timeout` = \"soon\" is not a duration",
                "routes.toml:3:17: error: `max_body_size` = \"lots\" is not a size",
                "routes.toml:6:9: error: \"ftp://x\" must use http:// or https://",
                "routes.toml:6:20: error: \"not a url\" is not a URL",
                "routes.toml:7:11: error: `timeout` must be longer than zero",
                "routes.toml:11:11: error: unknown service \"nope\"",
                "routes.toml:16:12: error: \"get\" is not an HTTP method",
                "routes.toml:18:8: error: `auth` = \"maybe\"",
                "routes.toml:20:1: error: this route needs authentication",
            ],
        );
    }

    /// Each line of `errors` starts with the matching `expect` entry, and there are no others.
    fn assert_error_lines(errors: &str, expect: &[&str]) {
        let lines: Vec<&str> = errors.lines().collect();
        assert_eq!(lines.len(), expect.len(), "{errors}");
        for (line, want) in lines.iter().zip(expect) {
            assert!(line.starts_with(want), "{line:?} should start with {want:?}");
        }
    }

    const SVC: &str = "[services.s]\nurls = [\"http://127.0.0.1:1\"]\n";

    #[test]
    fn auth_config_parses() {
        let config = parse_str(&format!(
            r#"{SVC}
[auth]
api_key_header = "X-Partner-Key"
forward_authorization = false
[auth.jwt]
issuers = ["https://id.example.com"]
audiences = ["gateway"]
leeway = "10s"
jwks_url = "https://id.example.com/.well-known/jwks.json?v=1"
[[auth.jwt.keys]]
kid = "local-1"
algorithm = "HS256"
secret = "0123456789abcdef0123456789abcdef"
[auth.jwt.forward]
"x-user-id" = "sub"
[[auth.api_keys]]
id = "partner-a"
sha256 = "{}"
scopes = ["catalog:read"]

[[routes]]
prefix = "/a"
service = "s"
scopes = ["orders:read"]
"#,
            "ab".repeat(32)
        ))
        .unwrap();
        let jwt = config.auth.jwt.as_ref().unwrap();
        assert_eq!(jwt.leeway, std::time::Duration::from_secs(10));
        assert_eq!(jwt.keys[0].algorithm, jsonwebtoken::Algorithm::HS256);
        assert_eq!(jwt.jwks.as_ref().unwrap().refresh, JwksConfig::DEFAULT_REFRESH);
        assert_eq!(config.auth.api_key_header.as_str(), "x-partner-key");
        assert!(!config.auth.forward_authorization);
        assert_eq!(config.auth.forward[0].0.as_str(), "x-user-id");
        assert_eq!(config.auth.api_keys[0].sha256, [0xab; 32]);
        assert_eq!(config.routes[0].auth, AuthMode::Required);
        assert_eq!(config.routes[0].scopes, ["orders:read"]);
        // Key material never shows in Debug output (logs, admin API).
        assert!(!format!("{config:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn auth_errors_are_reported_with_positions() {
        let errors = parse_str(&format!(
            r#"{SVC}
[auth.jwt]
issuers = []
[[auth.jwt.keys]]
kid = "k"
algorithm = "none"
[[auth.jwt.keys]]
kid = "short"
algorithm = "HS256"
secret = "too short"
[[auth.jwt.keys]]
kid = "r"
algorithm = "RS256"
secret = "0123456789abcdef0123456789abcdef"
[[auth.jwt.keys]]
kid = "p"
algorithm = "ES256"
public_key_pem = "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----"
[auth.jwt.forward]
"host" = "sub"
[[auth.api_keys]]
id = "a"
sha256 = "xyz"

[[routes]]
prefix = "/a"
service = "s"
auth = "none"
scopes = ["x"]
"#
        ))
        .unwrap_err()
        .to_string();
        assert_error_lines(
            &errors,
            &[
                "routes.toml:5:11: error: `issuers` is empty",
                "routes.toml:8:13: error: `algorithm` = \"none\" is not supported",
                "routes.toml:12:10: error: an HS256 secret must be at least 32 bytes",
                "routes.toml:13:1: error: an RS256 key needs `public_key_pem`",
                "routes.toml:20:18: error: `public_key_pem` is not a ES256 public key",
                "routes.toml:22:1: error: \"host\" cannot be set from a claim",
                "routes.toml:25:10: error: `sha256` must be 64 hex digits",
                "routes.toml:31:10: error: `scopes` needs an authenticated caller",
            ],
        );
    }

    #[test]
    fn required_auth_without_a_provider_is_an_error() {
        let err = parse_str(&format!(
            "{SVC}[[routes]]\nprefix = \"/a\"\nservice = \"s\"\nauth = \"optional\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`auth = \"optional\"` needs an authentication provider"),
            "{err}"
        );
    }

    #[test]
    fn rate_limit_config_parses() {
        let config = parse_str(&format!(
            r#"{SVC}
[server]
rate_limit = "default"

[rate_limits.default]
requests = 100
per = "1m"
burst = 20
[rate_limits.default.tiers]
claim = "plan"
gold = {{ requests = 1000, per = "1m" }}

[rate_limits.per_ip]
requests = 5
per = "1s"
key = "ip"

[rate_limit_store]
backend = "redis"
url = "redis://:hunter2@127.0.0.1:6379/0"
on_error = "deny"

[[routes]]
prefix = "/a"
service = "s"
auth = "none"

[[routes]]
prefix = "/b"
service = "s"
auth = "none"
rate_limit = "per_ip"

[[routes]]
prefix = "/c"
service = "s"
auth = "none"
rate_limit = "none"
"#
        ))
        .unwrap();
        let default = &config.rate_limits[0];
        assert_eq!(default.name, "default");
        assert_eq!(default.quota.requests.get(), 100);
        assert_eq!(default.quota.burst.get(), 20);
        assert_eq!(default.quota.interval(), std::time::Duration::from_millis(600));
        assert_eq!(default.key, RateLimitKey::Client);
        let tiers = default.tiers.as_ref().unwrap();
        assert_eq!(tiers.claim, "plan");
        assert_eq!(tiers.tiers[0].0, "gold");
        // A tier's burst defaults to its own `requests`.
        assert_eq!(tiers.tiers[0].1.burst.get(), 1000);
        assert_eq!(config.rate_limits[1].key, RateLimitKey::Ip);
        assert_eq!(config.rate_limits[1].quota.burst.get(), 5);
        assert_eq!(config.server.rate_limit.as_deref(), Some("default"));
        let policies: Vec<_> = config.routes.iter().map(|r| r.rate_limit.as_deref()).collect();
        assert_eq!(policies, [Some("default"), Some("per_ip"), None]);
        assert!(matches!(
            config.rate_limit_store.backend,
            RateLimitBackend::Redis(_)
        ));
        assert_eq!(config.rate_limit_store.on_error, RedisFailure::Deny);
        assert_eq!(
            config.rate_limit_store.timeout,
            RateLimitStoreConfig::DEFAULT_TIMEOUT
        );
        // The Redis password never shows in Debug output.
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn rate_limit_errors_are_reported_with_positions() {
        let errors = parse_str(&format!(
            r#"{SVC}
[server]
rate_limit = "nope"

[rate_limits.a]
requests = 0
per = "soon"
key = "user"
[rate_limits.a.tiers]
gold = {{ requests = 10, per = "1m", burst = -1 }}

[rate_limits.none]
requests = 1
per = "1s"

[rate_limit_store]
backend = "redis"
on_error = "panic"

[[routes]]
prefix = "/a"
service = "s"
auth = "none"
rate_limit = "missing"
"#
        ))
        .unwrap_err()
        .to_string();
        assert_error_lines(
            &errors,
            &[
                "routes.toml:5:14: error: unknown rate-limit policy \"nope\"",
                "routes.toml:8:12: error: `requests` must be a whole number",
                "routes.toml:9:7: error: `per` = \"soon\" is not a duration",
                "routes.toml:10:7: error: `key` = \"user\": use \"client\", \"ip\" or \"global\"",
                "routes.toml:11:1: error: tiers need `claim`",
                "routes.toml:12:45: error: `burst` must be a whole number",
                "routes.toml:14:14: error: rate-limit policy name \"none\"",
                "routes.toml:18:1: error: backend = \"redis\" needs `url`",
                "routes.toml:20:12: error: `on_error` = \"panic\"",
                "routes.toml:26:14: error: unknown rate-limit policy \"missing\"",
            ],
        );
    }

    #[test]
    fn a_bad_burst_does_not_hide_a_bad_per() {
        let errors = parse_str("[rate_limits.a]\nrequests = 1\nper = \"soon\"\nburst = 0\n")
            .unwrap_err()
            .to_string();
        assert_error_lines(
            &errors,
            &[
                "routes.toml:3:7: error: `per` = \"soon\" is not a duration",
                "routes.toml:4:9: error: `burst` must be a whole number",
            ],
        );
    }

    #[test]
    fn resilience_config_parses_with_safe_defaults() {
        let config = parse_str(
            r#"
[services.plain]
urls = ["http://127.0.0.1:1"]

[services.orders]
urls = ["http://127.0.0.1:2", "http://127.0.0.1:3"]
load_balancing = "round_robin"
max_concurrent = 8
[services.orders.health_check]
path = "/health"
interval = "2s"
[services.orders.circuit_breaker]
failure_rate = 0.25
slow_call = "2s"
[services.orders.retry]
attempts = 3
on = ["connect", "503", "timeout"]
max_body = "1KiB"

[services.nobreaker]
urls = ["http://127.0.0.1:4"]
[services.nobreaker.circuit_breaker]
enabled = false

[[routes]]
prefix = "/"
service = "orders"
auth = "none"
timeout = "3s"
"#,
        )
        .unwrap();
        let plain = config.service("plain").unwrap();
        assert_eq!(plain.load_balancing, LoadBalancing::LeastRequests);
        assert_eq!(plain.max_concurrent, ServiceConfig::DEFAULT_MAX_CONCURRENT);
        assert_eq!(plain.circuit_breaker, Some(BreakerConfig::default()));
        assert_eq!(plain.retry, RetryConfig::default());
        assert!(plain.health_check.is_none());
        let orders = config.service("orders").unwrap();
        assert_eq!(orders.load_balancing, LoadBalancing::RoundRobin);
        assert_eq!(orders.max_concurrent, 8);
        let hc = orders.health_check.as_ref().unwrap();
        assert_eq!(
            (
                hc.path.as_str(),
                hc.interval,
                hc.unhealthy_after,
                hc.healthy_after
            ),
            ("/health", std::time::Duration::from_secs(2), 3, 2)
        );
        let breaker = orders.circuit_breaker.as_ref().unwrap();
        assert_eq!(breaker.failure_rate, 0.25);
        assert_eq!(breaker.slow_call, Some(std::time::Duration::from_secs(2)));
        assert_eq!(orders.retry.attempts, 3);
        assert_eq!(
            orders.retry.on,
            RetryOn {
                connect: true,
                reset: false,
                timeout: true,
                statuses: vec![503]
            }
        );
        assert_eq!(orders.retry.max_body, 1024);
        assert!(config.service("nobreaker").unwrap().circuit_breaker.is_none());
        assert_eq!(config.routes[0].timeout, Some(std::time::Duration::from_secs(3)));
    }

    #[test]
    fn resilience_errors_are_reported_with_positions() {
        let errors = parse_str(
            r#"
[services.s]
urls = ["http://127.0.0.1:1"]
load_balancing = "fastest"
max_concurrent = 0
[services.s.health_check]
path = "health"
[services.s.circuit_breaker]
failure_rate = 1.5
[services.s.retry]
attempts = 11
on = ["connect", "404"]
"#,
        )
        .unwrap_err()
        .to_string();
        assert_error_lines(
            &errors,
            &[
                "routes.toml:4:18: error: `load_balancing` = \"fastest\"",
                "routes.toml:5:18: error: `max_concurrent` must be between 1 and 1000000",
                "routes.toml:7:8: error: health check `path` = \"health\" must start with `/`",
                "routes.toml:9:16: error: `failure_rate` must be between 0 and 1",
                "routes.toml:11:12: error: `attempts` must be between 1 and 10",
                "routes.toml:12:18: error: retry `on` entry \"404\"",
            ],
        );
    }

    #[test]
    fn unknown_keys_and_syntax_errors_point_at_the_place() {
        let err = parse_str("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("routes.toml:3:1: error: unknown field `lisen`"),
            "{err}"
        );
        let err = parse_str("[[routes]\n").unwrap_err().to_string();
        assert!(err.starts_with("routes.toml:1:"), "{err}");
    }

    #[test]
    fn the_committed_json_schema_is_current() {
        let committed = include_str!("../../../routes.schema.json");
        assert!(
            json_schema() == committed,
            "routes.schema.json is stale: run `cargo run -- config-schema > routes.schema.json`"
        );
    }

    #[test]
    fn the_repos_demo_config_is_valid() {
        let config = parse_str(include_str!("../../../routes.toml")).unwrap();
        assert_eq!(config.services.len(), 5);
        assert_eq!(
            config.service("users").unwrap().urls[0].as_str(),
            "http://127.0.0.1:9101/users"
        );
    }

    #[test]
    fn telemetry_settings_are_checked() {
        let config = parse_str(
            "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\nservice_name = \"edge\"\nsample_ratio = 0.25\n",
        )
        .unwrap();
        let t = &config.telemetry;
        assert_eq!(
            t.otlp_endpoint.as_ref().unwrap().as_str(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!((t.service_name.as_str(), t.sample_ratio), ("edge", 0.25));
        let kept =
            parse_str("[telemetry]\notlp_endpoint = \"https://otel.example/custom/traces\"\n").unwrap();
        assert_eq!(
            kept.telemetry.otlp_endpoint.unwrap().as_str(),
            "https://otel.example/custom/traces",
            "a URL with a path is used as written"
        );
        assert_eq!(TelemetryConfig::default().otlp_endpoint, None, "off by default");

        let err = parse_str(
            "[telemetry]\notlp_endpoint = \"http://user:pw@collector:4318\"\nservice_name = \" \"\nsample_ratio = 1.5\n",
        )
        .unwrap_err()
        .to_string();
        for expected in [
            "routes.toml:2:17: error: `otlp_endpoint` = \"http://user:pw@collector:4318\" must not carry credentials",
            "routes.toml:3:16: error: `service_name` must not be empty",
            "routes.toml:4:16: error: `sample_ratio` must be between 0.0 and 1.0",
        ] {
            assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
        }
        let err = parse_str("[telemetry]\notlp_endpoint = \"grpc://collector:4317\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("must use http:// or https:// (OTLP over HTTP)"),
            "{err}"
        );
    }

    #[test]
    fn missing_environment_variables_are_errors() {
        let err = parse_str("[services.a]\nurls = [\"${A_URL}\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("routes.toml:2:9: error: environment variable A_URL is not set"),
            "{err}"
        );
    }
}
