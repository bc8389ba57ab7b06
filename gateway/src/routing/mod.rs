//! The route table: request method + normalized path → the route that serves it.
//!
//! Precedence is matchit's: static segments beat `{param}`, which beats `{*rest}`, so the most
//! specific route wins whatever the file order. Methods are matched per method: there is one matchit
//! router per method named in the config (holding that method's routes plus the all-method ones)
//! and one for all other methods, so `GET /api/users/{id}` can sit beside an all-method
//! `prefix = "/api"` and a `DELETE /api/users/7` still reaches the prefix route. A path that some
//! other method could serve gets 405 with `Allow`; nothing at all gets 404. A `GET` route also
//! serves `HEAD`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use http::{HeaderValue, Method};
use matchit::{InsertError, Router};

use crate::config::{AuthMode, ConfigError, PathMatch, RouteConfig};
use crate::error::GatewayError;
use crate::ratelimit::Policy;
use crate::upstream::Upstream;

/// A route ready to serve: its config, its handler and its rate-limit policy.
#[derive(Debug)]
pub struct Route {
    pub config: RouteConfig,
    pub handler: Handler,
    pub rate_limit: Option<Arc<Policy>>,
}

/// What answers a route's requests.
#[derive(Debug, Clone)]
pub enum Handler {
    /// The REST proxy, to this service.
    Proxy(Arc<Upstream>),
    /// The snapshot's GraphQL endpoint.
    GraphQL,
}

impl Route {
    pub fn pattern(&self) -> &str {
        self.config.path.as_str()
    }

    pub fn auth(&self) -> AuthMode {
        self.config.auth
    }

    /// The path to append to the service's base URL: `strip_prefix` removes the route's prefix,
    /// so with a base of `/users`, `/api/users/7` goes to `/users/7` and `/api/users` to `/users`
    /// (an empty rest; the upstream makes it `/` when the base has no path).
    pub fn forward_path<'p>(&self, path: &'p str) -> &'p str {
        match &self.config.path {
            PathMatch::Prefix(prefix) if self.config.strip_prefix && prefix != "/" => {
                path.get(prefix.len()..).unwrap_or("")
            }
            _ => path,
        }
    }
}

/// The compiled table. Immutable; a config change builds a new one.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    by_method: Vec<(Method, Router<usize>)>,
    other_methods: Router<usize>,
}

impl RouteTable {
    /// Compiles routes, reporting every pair of routes that would match the same requests.
    pub fn build(routes: Vec<Route>) -> Result<Self, Vec<ConfigError>> {
        let named: BTreeSet<Method> = routes
            .iter()
            .flat_map(|r| r.config.methods.iter().flatten().cloned())
            .chain(routes.iter().any(route_allows_get).then_some(Method::HEAD))
            .collect();
        let mut builders: Vec<(Option<Method>, Builder)> =
            named.into_iter().map(|m| (Some(m), Builder::default())).collect();
        builders.push((None, Builder::default()));

        let mut errors = Vec::new();
        let mut reported = BTreeSet::new();
        for (index, route) in routes.iter().enumerate() {
            for (method, builder) in &mut builders {
                let serves = match (&route.config.methods, &*method) {
                    (None, _) => true,
                    (Some(ms), Some(m)) => {
                        ms.contains(m) || (*m == Method::HEAD && ms.contains(&Method::GET))
                    }
                    (Some(_), None) => false,
                };
                if !serves {
                    continue;
                }
                for pattern in patterns(&route.config.path) {
                    if let Err(e) = builder.insert(&pattern, index) {
                        let (message, other) = describe(&e, &pattern, builder, method.as_ref(), &routes);
                        if reported.insert((index, other)) {
                            errors.push(ConfigError {
                                location: route.config.location.clone(),
                                message,
                            });
                        }
                    }
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut by_method = Vec::new();
        let mut other_methods = Router::new();
        for (method, builder) in builders {
            match method {
                Some(m) => by_method.push((m, builder.router)),
                None => other_methods = builder.router,
            }
        }
        Ok(Self {
            routes: routes.into_iter().map(Arc::new).collect(),
            by_method,
            other_methods,
        })
    }

    /// The route for a request, or 404 / 405 with the methods that would be accepted.
    pub fn lookup(&self, method: &Method, path: &str) -> Result<&Arc<Route>, GatewayError> {
        if let Ok(m) = self.router_for(method).at(path) {
            return Ok(&self.routes[*m.value]);
        }
        let allowed: Vec<&str> = self
            .by_method
            .iter()
            .filter(|(_, r)| r.at(path).is_ok())
            .map(|(m, _)| m.as_str())
            .collect();
        if allowed.is_empty() {
            return Err(GatewayError::RouteNotFound {
                method: method.clone(),
                path: path.to_owned(),
            });
        }
        Err(GatewayError::MethodNotAllowed {
            method: method.clone(),
            path: path.to_owned(),
            allow: HeaderValue::from_str(&allowed.join(", ")).unwrap_or(HeaderValue::from_static("")),
        })
    }

    fn router_for(&self, method: &Method) -> &Router<usize> {
        // A handful of methods: a linear scan beats hashing.
        self.by_method
            .iter()
            .find(|(m, _)| m == method)
            .map_or(&self.other_methods, |(_, r)| r)
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }
}

fn route_allows_get(route: &Route) -> bool {
    route
        .config
        .methods
        .as_ref()
        .is_some_and(|ms| ms.contains(&Method::GET))
}

/// One method's router plus which route each inserted pattern belongs to, to name conflicts.
#[derive(Default)]
struct Builder {
    router: Router<usize>,
    owners: HashMap<String, usize>,
}

impl Builder {
    fn insert(&mut self, pattern: &str, route: usize) -> Result<(), InsertError> {
        self.router.insert(pattern, route)?;
        self.owners.insert(pattern.to_owned(), route);
        Ok(())
    }
}

/// The matchit patterns of a route. A prefix matches itself, itself with a trailing slash, and
/// anything below it; `{`/`}` cannot occur in a validated prefix.
fn patterns(path: &PathMatch) -> Vec<String> {
    match path {
        PathMatch::Prefix(p) if p == "/" => vec!["/".into(), "/{*__rest}".into()],
        PathMatch::Prefix(p) => vec![p.clone(), format!("{p}/"), format!("{p}/{{*__rest}}")],
        PathMatch::Pattern(p) => vec![p.clone()],
    }
}

fn describe(
    e: &InsertError,
    pattern: &str,
    builder: &Builder,
    method: Option<&Method>,
    routes: &[Route],
) -> (String, Option<usize>) {
    match e {
        InsertError::Conflict { with } => {
            let other = builder.owners.get(with).copied();
            let whom = other.map_or_else(
                || format!("`{with}`"),
                |o| {
                    format!(
                        "the route at {} (`{}`)",
                        routes[o].config.location,
                        routes[o].pattern()
                    )
                },
            );
            let method = method.map_or_else(|| "any method on".to_owned(), |m| m.to_string());
            (
                format!(
                    "this route overlaps {whom}: both would serve {method} {}; give them different paths or methods",
                    pattern.replace("{*__rest}", "...")
                ),
                other,
            )
        }
        other => (
            format!("`path` = \"{pattern}\" is not a valid route pattern: {other}"),
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Location, ServiceConfig};

    fn upstream() -> Arc<Upstream> {
        let config = ServiceConfig::new("svc", vec!["http://127.0.0.1:1".parse().unwrap()]);
        Arc::new(Upstream::new(&config).unwrap())
    }

    fn route(path: PathMatch, methods: Option<&[Method]>, line: usize) -> Route {
        Route {
            config: RouteConfig {
                path,
                methods: methods.map(<[Method]>::to_vec),
                service: "svc".into(),
                strip_prefix: true,
                auth: AuthMode::None,
                scopes: Vec::new(),
                timeout: None,
                rate_limit: None,
                location: Location {
                    file: "r.toml".into(),
                    line,
                    column: 1,
                },
            },
            handler: Handler::Proxy(upstream()),
            rate_limit: None,
        }
    }

    fn prefix(p: &str, methods: Option<&[Method]>, line: usize) -> Route {
        route(PathMatch::Prefix(p.into()), methods, line)
    }

    fn pattern(p: &str, methods: Option<&[Method]>, line: usize) -> Route {
        route(PathMatch::Pattern(p.into()), methods, line)
    }

    fn line_of(table: &RouteTable, method: Method, path: &str) -> Option<usize> {
        table.lookup(&method, path).ok().map(|r| r.config.location.line)
    }

    #[tokio::test]
    async fn the_most_specific_route_wins_and_methods_fall_through() {
        let table = RouteTable::build(vec![
            prefix("/", None, 1),
            prefix("/api", None, 2),
            pattern("/api/users/{id}", Some(&[Method::GET]), 3),
            prefix("/api/users", Some(&[Method::POST]), 4),
        ])
        .unwrap();
        assert_eq!(line_of(&table, Method::GET, "/api/users/7"), Some(3));
        assert_eq!(line_of(&table, Method::HEAD, "/api/users/7"), Some(3));
        assert_eq!(line_of(&table, Method::DELETE, "/api/users/7"), Some(2));
        assert_eq!(line_of(&table, Method::POST, "/api/users"), Some(4));
        assert_eq!(line_of(&table, Method::POST, "/api/users/"), Some(4));
        assert_eq!(line_of(&table, Method::GET, "/api/users"), Some(2));
        assert_eq!(line_of(&table, Method::GET, "/apix"), Some(1));
        assert_eq!(
            line_of(&table, Method::from_bytes(b"PURGE").unwrap(), "/api/x"),
            Some(2)
        );
        assert_eq!(line_of(&table, Method::GET, "/"), Some(1));
    }

    #[tokio::test]
    async fn unmatched_paths_are_404_and_wrong_methods_405_with_allow() {
        let table = RouteTable::build(vec![
            pattern("/items/{id}", Some(&[Method::GET, Method::PUT]), 1),
            prefix("/admin", Some(&[Method::POST]), 2),
        ])
        .unwrap();
        match table.lookup(&Method::DELETE, "/items/3") {
            Err(GatewayError::MethodNotAllowed { allow, .. }) => assert_eq!(allow, "GET, HEAD, PUT"),
            other => panic!("expected 405, got {other:?}"),
        }
        assert!(matches!(
            table.lookup(&Method::GET, "/nope"),
            Err(GatewayError::RouteNotFound { .. })
        ));
        assert!(matches!(
            table.lookup(&Method::GET, "/adminx"),
            Err(GatewayError::RouteNotFound { .. })
        ));
    }

    #[tokio::test]
    async fn strip_prefix_forwards_the_rest() {
        let r = prefix("/api/users", None, 1);
        assert_eq!(r.forward_path("/api/users/7"), "/7");
        assert_eq!(r.forward_path("/api/users"), "");
        assert_eq!(r.forward_path("/api/users/"), "/");
        assert_eq!(prefix("/", None, 1).forward_path("/x"), "/x");
    }

    #[tokio::test]
    async fn duplicate_routes_are_reported_with_both_locations() {
        let errors = RouteTable::build(vec![
            prefix("/api", None, 1),
            prefix("/api", Some(&[Method::GET]), 5),
            pattern("/x/{a}", None, 7),
            pattern("/x/{b}", None, 9),
            pattern("/bad/{", None, 11),
        ])
        .unwrap_err();
        let text: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {}", e.location, e.message))
            .collect();
        assert_eq!(text.len(), 3, "{text:#?}");
        assert!(
            text[0].starts_with("r.toml:5:1: this route overlaps the route at r.toml:1:1 (`/api`)"),
            "{}",
            text[0]
        );
        assert!(
            text[1].starts_with("r.toml:9:1: this route overlaps the route at r.toml:7:1"),
            "{}",
            text[1]
        );
        assert!(text[2].contains("not a valid route pattern"), "{}", text[2]);
    }
}
