//! Raw config → validated [`Config`]. Every check reports through [`Diagnostics`] and carries on,
//! so one run lists every problem in the file.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

use http::Method;
use ipnet::IpNet;
use serde_spanned::Spanned;
use url::Url;

mod auth;
mod graphql;
mod ratelimit;
mod resilience;

use super::diagnostics::Diagnostics;
use super::interpolate::{Env, interpolate};
use super::model::{AuthMode, Config, PathMatch, RouteConfig, ServerConfig, ServiceConfig};
use super::raw::{RawConfig, RawRoute, RawServer, RawService, Str};

const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Checks a parsed file and builds the domain config. Errors are left in `diag`.
pub fn validate(raw: RawConfig, env: Env<'_>, diag: &mut Diagnostics<'_>) -> Config {
    let mut v = Validator {
        env,
        diag,
        fingerprints: super::Fingerprints::default(),
    };
    let (mut server, server_rate_limit) = match raw.server {
        Some(server) => {
            let mut server = server.into_inner();
            let rate_limit = server.rate_limit.take();
            (v.server(server), rate_limit)
        }
        None => (ServerConfig::default(), None),
    };
    let services: Vec<ServiceConfig> = raw
        .services
        .into_iter()
        .filter_map(|(name, svc)| v.service(name, svc))
        .collect();
    let auth = v.auth_section(raw.auth);
    let rate_limits = v.rate_limits(raw.rate_limits);
    let rate_limit_store = v.rate_limit_store(raw.rate_limit_store);
    let service_names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    let policy_names: Vec<&str> = rate_limits.iter().map(|p| p.name.as_str()).collect();
    let default_policy = match &server_rate_limit {
        Some(value) => v
            .string(value)
            .filter(|name| v.known_policy(name, &value.span(), &policy_names)),
        None => None,
    };
    let ctx = RouteContext {
        services: &service_names,
        has_provider: auth.has_provider(),
        policies: &policy_names,
        default_policy: default_policy.as_deref(),
    };
    let routes = raw.routes.into_iter().filter_map(|r| v.route(r, &ctx)).collect();
    let graphql = raw.graphql.and_then(|g| v.graphql(g, &ctx));
    let admin = raw.admin.map(|a| v.admin(a.into_inner()));
    let telemetry = raw
        .telemetry
        .map(|t| v.telemetry(t.into_inner()))
        .unwrap_or_default();
    server.rate_limit = default_policy;
    Config {
        server,
        services,
        routes,
        auth,
        rate_limits,
        rate_limit_store,
        graphql,
        admin,
        telemetry,
        fingerprints: v.fingerprints,
        text: Default::default(),
    }
}

/// What a route may refer to.
struct RouteContext<'a> {
    services: &'a [&'a str],
    has_provider: bool,
    policies: &'a [&'a str],
    default_policy: Option<&'a str>,
}

struct Validator<'a, 'd, 's> {
    env: Env<'a>,
    diag: &'d mut Diagnostics<'s>,
    /// Files the config points to (key files), read while validating: a reload must notice
    /// when they change even if the config does not.
    fingerprints: super::Fingerprints,
}

impl Validator<'_, '_, '_> {
    /// A string value after `${VAR}` expansion.
    fn string(&mut self, value: &Str) -> Option<String> {
        match interpolate(value.get_ref(), self.env) {
            Ok(s) => Some(s),
            Err(msg) => {
                self.diag.error(&value.span(), msg);
                None
            }
        }
    }

    fn duration(&mut self, value: &Option<Str>, key: &str, default: Duration) -> Duration {
        self.optional_duration(value, key).unwrap_or(default)
    }

    /// A duration that has no default: `None` when absent (or invalid, which is reported).
    fn optional_duration(&mut self, value: &Option<Str>, key: &str) -> Option<Duration> {
        self.duration_of(value.as_ref()?, key)
    }

    /// Parses a humantime duration, reporting why it is not one; `None` when it is not.
    fn duration_of(&mut self, value: &Str, key: &str) -> Option<Duration> {
        let text = self.string(value)?;
        let problem = match parse_duration(&text) {
            Ok(d) => return Some(d),
            Err(DurationProblem::TooLong) => format!("`{key}` must be at most a year (\"365d\")"),
            Err(DurationProblem::Zero) => format!("`{key}` must be longer than zero"),
            Err(DurationProblem::NotADuration) => {
                format!("`{key}` = \"{text}\" is not a duration: write it like \"250ms\", \"5s\" or \"1m\"")
            }
        };
        self.diag.error(&value.span(), problem);
        None
    }

    /// A whole number in `min..=max`: `None` when absent (or out of range, which is reported).
    fn int_in(&mut self, value: &Option<Spanned<i64>>, key: &str, min: i64, max: i64) -> Option<i64> {
        let value = value.as_ref()?;
        let n = *value.get_ref();
        if (min..=max).contains(&n) {
            return Some(n);
        }
        self.diag
            .error(&value.span(), format!("`{key}` must be between {min} and {max}"));
        None
    }

    fn count(&mut self, value: &Option<Spanned<i64>>, key: &str, max: i64, default: usize) -> usize {
        self.int_in(value, key, 0, max).map_or(default, |n| n as usize)
    }

    fn admin(&mut self, raw: super::raw::RawAdmin) -> super::model::AdminConfig {
        let listen = raw.listen.as_ref().and_then(|value| self.address(value));
        let token = raw.token.as_ref().and_then(|value| {
            let token = self.string(value)?;
            if token.len() < 16 {
                self.diag
                    .error(&value.span(), "the admin `token` must be at least 16 characters");
                return None;
            }
            Some(token)
        });
        super::model::AdminConfig {
            listen: listen.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9090))),
            token,
        }
    }

    fn telemetry(&mut self, raw: super::raw::RawTelemetry) -> super::model::TelemetryConfig {
        let d = super::model::TelemetryConfig::default();
        let log_format = raw
            .log_format
            .as_ref()
            .and_then(|value| match self.string(value)?.as_str() {
                "text" => Some(super::model::LogFormat::Text),
                "json" => Some(super::model::LogFormat::Json),
                other => {
                    self.diag.error(
                        &value.span(),
                        format!("`log_format` = \"{other}\": use \"text\" or \"json\""),
                    );
                    None
                }
            });
        let log_level = raw.log_level.as_ref().and_then(|value| {
            let text = self.string(value)?;
            match tracing_subscriber::EnvFilter::try_new(&text) {
                Ok(_) => Some(text),
                Err(e) => {
                    self.diag.error(
                        &value.span(),
                        format!("`log_level` = \"{text}\" is not a log filter: {e}"),
                    );
                    None
                }
            }
        });
        let otlp_endpoint = raw.otlp_endpoint.as_ref().and_then(|v| self.otlp_endpoint(v));
        let service_name = raw.service_name.as_ref().and_then(|value| {
            let text = self.string(value)?;
            if text.trim().is_empty() {
                self.diag.error(&value.span(), "`service_name` must not be empty");
                return None;
            }
            Some(text)
        });
        let sample_ratio = raw.sample_ratio.as_ref().and_then(|value| {
            let ratio = *value.get_ref();
            if (0.0..=1.0).contains(&ratio) {
                return Some(ratio);
            }
            self.diag
                .error(&value.span(), "`sample_ratio` must be between 0.0 and 1.0");
            None
        });
        super::model::TelemetryConfig {
            log_format: log_format.unwrap_or(d.log_format),
            log_level: log_level.unwrap_or(d.log_level),
            otlp_endpoint,
            service_name: service_name.unwrap_or(d.service_name),
            sample_ratio: sample_ratio.unwrap_or(d.sample_ratio),
        }
    }

    /// An OTLP/HTTP collector URL; one without a path gets the standard "/v1/traces".
    fn otlp_endpoint(&mut self, value: &Str) -> Option<Url> {
        let text = self.string(value)?;
        let problem = match Url::parse(&text) {
            Err(e) => format!(
                "`otlp_endpoint` = \"{text}\" is not a URL ({e}): write it like \"http://127.0.0.1:4318\""
            ),
            Ok(url) if !matches!(url.scheme(), "http" | "https") => {
                format!("`otlp_endpoint` = \"{text}\" must use http:// or https:// (OTLP over HTTP)")
            }
            Ok(url) if url.host().is_none() => format!("`otlp_endpoint` = \"{text}\" has no host"),
            Ok(url) if !url.username().is_empty() || url.password().is_some() => format!(
                "`otlp_endpoint` = \"{text}\" must not carry credentials: set OTEL_EXPORTER_OTLP_HEADERS instead"
            ),
            Ok(mut url) => {
                if url.path() == "/" {
                    url.set_path("/v1/traces");
                }
                return Some(url);
            }
        };
        self.diag.error(&value.span(), problem);
        None
    }

    /// An `IP:PORT` listen address.
    fn address(&mut self, value: &Str) -> Option<SocketAddr> {
        let text = self.string(value)?;
        match text.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.diag.error(
                    &value.span(),
                    format!(
                        "`listen` = \"{text}\" is not an address: write IP:PORT, like \"127.0.0.1:8080\""
                    ),
                );
                None
            }
        }
    }

    fn server(&mut self, raw: RawServer) -> ServerConfig {
        let d = ServerConfig::default();
        let listen = raw.listen.as_ref().and_then(|value| self.address(value));
        let max_body_size = match &raw.max_body_size {
            Some(value) => self.string(value).and_then(|text| match parse_size(&text) {
                Some(n) => Some(n),
                None => {
                    self.diag.error(
                        &value.span(),
                        format!(
                            "`max_body_size` = \"{text}\" is not a size: write it like \"10MiB\", \"512KiB\" or \"1000000\""
                        ),
                    );
                    None
                }
            }),
            None => None,
        };
        let trusted_proxies = raw
            .trusted_proxies
            .iter()
            .flatten()
            .filter_map(|value| {
                let text = self.string(value)?;
                let parsed = text
                    .parse::<IpNet>()
                    .ok()
                    .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from));
                if parsed.is_none() {
                    self.diag.error(
                        &value.span(),
                        format!("`trusted_proxies` entry \"{text}\" is not a CIDR: write it like \"10.0.0.0/8\" or \"127.0.0.1\""),
                    );
                }
                parsed
            })
            .collect();
        ServerConfig {
            listen: listen.unwrap_or(d.listen),
            worker_threads: self.count(&raw.worker_threads, "worker_threads", 1024, d.worker_threads),
            request_timeout: self.duration(&raw.request_timeout, "request_timeout", d.request_timeout),
            header_read_timeout: self.duration(
                &raw.header_read_timeout,
                "header_read_timeout",
                d.header_read_timeout,
            ),
            shutdown_timeout: self.duration(&raw.shutdown_timeout, "shutdown_timeout", d.shutdown_timeout),
            max_body_size: max_body_size.unwrap_or(d.max_body_size),
            max_connections: self.count(
                &raw.max_connections,
                "max_connections",
                1_000_000,
                d.max_connections,
            ),
            trusted_proxies,
            rate_limit: None,
        }
    }

    fn service(&mut self, name: Str, raw: Spanned<RawService>) -> Option<ServiceConfig> {
        let location = self.diag.source().location(&name.span());
        let name_ok = is_name(name.get_ref());
        if !name_ok {
            self.diag.error(
                &name.span(),
                format!(
                    "service name \"{}\" may only use letters, digits, `-` and `_`",
                    name.get_ref()
                ),
            );
        }
        let raw = raw.into_inner();
        if raw.urls.get_ref().is_empty() {
            self.diag.error(
                &raw.urls.span(),
                "`urls` is empty: give at least one instance, like [\"http://127.0.0.1:9101\"]",
            );
        }
        let urls: Vec<Url> = raw
            .urls
            .get_ref()
            .iter()
            .filter_map(|u| self.service_url(u))
            .collect();
        let connect_timeout = self.duration(
            &raw.connect_timeout,
            "connect_timeout",
            ServiceConfig::DEFAULT_CONNECT_TIMEOUT,
        );
        let timeout = self.duration(&raw.timeout, "timeout", ServiceConfig::DEFAULT_TIMEOUT);
        let load_balancing = self.load_balancing(&raw.load_balancing);
        let max_concurrent = self.max_concurrent(&raw.max_concurrent, ServiceConfig::DEFAULT_MAX_CONCURRENT);
        let health_check = self.health_check(raw.health_check, timeout);
        let circuit_breaker = self.circuit_breaker(raw.circuit_breaker);
        let retry = self.retry(raw.retry);
        name_ok.then(|| ServiceConfig {
            name: name.into_inner(),
            urls,
            connect_timeout,
            timeout,
            load_balancing,
            max_concurrent,
            health_check,
            circuit_breaker,
            retry,
            location,
        })
    }

    fn service_url(&mut self, value: &Str) -> Option<Url> {
        let text = self.string(value)?;
        let problem = match Url::parse(&text) {
            Err(e) => format!("\"{text}\" is not a URL ({e}): write it like \"http://127.0.0.1:9101\""),
            Ok(url) if !matches!(url.scheme(), "http" | "https") => {
                format!("\"{text}\" must use http:// or https://")
            }
            Ok(url) if url.host().is_none() => format!("\"{text}\" has no host"),
            Ok(url) if url.query().is_some() || url.fragment().is_some() => {
                format!("\"{text}\" must not have a query or fragment: routes forward the client's query")
            }
            Ok(url) if !url.username().is_empty() || url.password().is_some() => {
                format!("\"{text}\" must not carry credentials: send them as headers instead")
            }
            Ok(mut url) => {
                let trimmed = url.path().trim_end_matches('/').to_owned();
                url.set_path(&trimmed);
                return Some(url);
            }
        };
        self.diag.error(&value.span(), problem);
        None
    }

    fn route(&mut self, raw: Spanned<RawRoute>, ctx: &RouteContext<'_>) -> Option<RouteConfig> {
        let services = ctx.services;
        let span = raw.span();
        let location = self.diag.source().location(&span);
        let raw = raw.into_inner();
        let path = self.route_path(&raw, &span);
        let methods = raw.methods.as_ref().map(|m| self.methods(m));
        let service = self.string(&raw.service);
        if let Some(name) = &service
            && !services.contains(&name.as_str())
        {
            let known = if services.is_empty() {
                "no services are defined".to_owned()
            } else {
                format!("defined services: {}", services.join(", "))
            };
            self.diag.error(
                &raw.service.span(),
                format!(
                    "unknown service \"{name}\": add a [services.{name}] table or fix the name ({known})"
                ),
            );
        }
        let strip_prefix = raw.strip_prefix.as_ref().is_some_and(|s| *s.get_ref());
        if let (Some(strip), Some(PathMatch::Pattern(_))) = (&raw.strip_prefix, &path)
            && *strip.get_ref()
        {
            self.diag.error(
                &strip.span(),
                "`strip_prefix` only applies to `prefix` routes; remove it from this `path` route",
            );
        }
        let auth = self.auth(&raw.auth, &span, ctx.has_provider);
        let scopes = self.scopes(&raw.scopes, auth);
        let rate_limit = self.route_rate_limit(&raw.rate_limit, ctx.default_policy, ctx.policies);
        let timeout = self.optional_duration(&raw.timeout, "timeout");
        Some(RouteConfig {
            path: path?,
            methods: methods.flatten(),
            service: service?,
            strip_prefix,
            auth: auth?,
            scopes,
            timeout,
            rate_limit,
            location,
        })
    }

    fn route_path(&mut self, raw: &RawRoute, route_span: &Range<usize>) -> Option<PathMatch> {
        match (&raw.prefix, &raw.path) {
            (Some(_), Some(path)) => {
                self.diag
                    .error(&path.span(), "a route has either `prefix` or `path`, not both");
                None
            }
            (None, None) => {
                self.diag.error(
                    route_span,
                    "this route has neither `prefix` nor `path`: add one, like prefix = \"/api/users\"",
                );
                None
            }
            (Some(value), None) => {
                let text = self.string(value)?;
                match check_prefix(&text) {
                    Ok(prefix) => Some(PathMatch::Prefix(prefix)),
                    Err(msg) => {
                        self.diag
                            .error(&value.span(), format!("`prefix` = \"{text}\" {msg}"));
                        None
                    }
                }
            }
            (None, Some(value)) => {
                let text = self.string(value)?;
                if !text.starts_with('/') || text.contains(['?', '#']) {
                    self.diag.error(
                        &value.span(),
                        format!("`path` = \"{text}\" must start with `/` and hold no `?` or `#`"),
                    );
                    return None;
                }
                Some(PathMatch::Pattern(text))
            }
        }
    }

    fn methods(&mut self, value: &Spanned<Vec<Str>>) -> Option<Vec<Method>> {
        if value.get_ref().is_empty() {
            self.diag.error(
                &value.span(),
                "`methods` is empty: list methods like [\"GET\"], or remove the key to allow all",
            );
            return None;
        }
        let mut methods = Vec::new();
        for m in value.get_ref() {
            let Some(text) = self.string(m) else { continue };
            let is_token = !text.is_empty() && text.bytes().all(|b| b.is_ascii_uppercase() || b == b'-');
            match Method::from_bytes(text.as_bytes()) {
                Ok(method) if is_token => {
                    if !methods.contains(&method) {
                        methods.push(method);
                    }
                }
                _ => self.diag.error(
                    &m.span(),
                    format!("\"{text}\" is not an HTTP method: use upper case, like \"GET\""),
                ),
            }
        }
        Some(methods)
    }

    /// `auth` defaults to "required"; required auth without a provider could never be satisfied,
    /// so it is an error rather than a route that answers 401 to everyone.
    fn auth(
        &mut self,
        value: &Option<Str>,
        route_span: &Range<usize>,
        has_provider: bool,
    ) -> Option<AuthMode> {
        let (mode, span) = match value {
            None => (AuthMode::Required, route_span.clone()),
            Some(value) => {
                let text = self.string(value)?;
                let mode = match text.as_str() {
                    "required" => AuthMode::Required,
                    "optional" => AuthMode::Optional,
                    "none" => AuthMode::None,
                    _ => {
                        self.diag.error(
                            &value.span(),
                            format!("`auth` = \"{text}\": use \"required\", \"optional\" or \"none\""),
                        );
                        return None;
                    }
                };
                (mode, value.span())
            }
        };
        if mode != AuthMode::None && !has_provider {
            let what = if value.is_some() {
                format!(
                    "`auth = \"{}\"`",
                    if mode == AuthMode::Required {
                        "required"
                    } else {
                        "optional"
                    }
                )
            } else {
                "this route needs authentication (`auth` defaults to \"required\")".to_owned()
            };
            self.diag.error(
                &span,
                format!("{what} needs an authentication provider ([auth.jwt] or [[auth.api_keys]]) and none is configured: \
                 configure one, or set auth = \"none\" on routes that are public"),
            );
            return None;
        }
        Some(mode)
    }

    fn scopes(&mut self, value: &Option<Spanned<Vec<Str>>>, auth: Option<AuthMode>) -> Vec<String> {
        let Some(value) = value else { return Vec::new() };
        if auth == Some(AuthMode::None) {
            self.diag.error(
                &value.span(),
                "`scopes` needs an authenticated caller: remove it, or set auth = \"required\"",
            );
        }
        value
            .get_ref()
            .iter()
            .filter_map(|s| {
                let text = self.string(s)?;
                if text.is_empty() || text.contains(char::is_whitespace) {
                    self.diag.error(
                        &s.span(),
                        format!("scope \"{text}\" must be one word without spaces"),
                    );
                    return None;
                }
                Some(text)
            })
            .collect()
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A prefix without a trailing slash (except the root), or why it is not a usable prefix.
fn check_prefix(text: &str) -> Result<String, &'static str> {
    if !text.starts_with('/') {
        return Err("must start with `/`");
    }
    if text.contains(['{', '}', '?', '#', '%', '\\']) {
        return Err(
            "must be a literal path without `{`, `}`, `?`, `#`, `%` or `\\`: use `path` for patterns",
        );
    }
    let trimmed = if text == "/" {
        "/"
    } else {
        text.trim_end_matches('/')
    };
    if trimmed.is_empty()
        || trimmed[1..]
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
            && trimmed != "/"
    {
        return Err("must be a normalized path (no `//`, `.` or `..` segments)");
    }
    Ok(trimmed.to_owned())
}

/// Why a duration was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurationProblem {
    TooLong,
    Zero,
    NotADuration,
}

/// A humantime duration (`"250ms"`, `"5s"`, `"1m"`) longer than zero and at most a year: the
/// rule for every duration of the config and of the schema's directives. Durations are added to
/// the clock on the request path; past a year they only invite overflow, and no timeout or window
/// needs that long.
pub fn parse_duration(text: &str) -> Result<Duration, DurationProblem> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d > MAX_DURATION => Err(DurationProblem::TooLong),
        Ok(d) if d.is_zero() => Err(DurationProblem::Zero),
        Ok(d) => Ok(d),
        Err(_) => Err(DurationProblem::NotADuration),
    }
}

/// Parses "10MiB", "512 KB", "1GiB" or a plain byte count.
///
/// Hand-written because it is a dozen lines and the error must name the config key and span;
/// binary (KiB) and decimal (KB) units both mean what they say.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10MiB"), Some(10 << 20));
        assert_eq!(parse_size("512 KiB"), Some(512 << 10));
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("2KB"), Some(2000));
        assert_eq!(parse_size("ten"), None);
        assert_eq!(parse_size("10 parsecs"), None);
        assert_eq!(parse_size("99999999999999GiB"), None);
    }

    #[test]
    fn prefixes() {
        assert_eq!(check_prefix("/api/users/").unwrap(), "/api/users");
        assert_eq!(check_prefix("/").unwrap(), "/");
        assert!(check_prefix("api").is_err());
        assert!(check_prefix("/a//b").is_err());
        assert!(check_prefix("/a/../b").is_err());
        assert!(check_prefix("/a/{id}").is_err());
    }
}
