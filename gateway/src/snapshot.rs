//! A snapshot is everything a request needs, built from one validated config: the route table
//! and the upstream clients it points at. It is immutable; the gateway holds the active one in an
//! `ArcSwap`, and startup, `gateway check` and hot reload all build it with [`Snapshot::load`].

use std::path::Path;
use std::sync::Arc;

use crate::auth::Authenticator;
use crate::config::{self, Checked, Config, ConfigError, ConfigErrors, Env};
use crate::graphql::GraphQL;
use crate::ratelimit::{self, LimiterClock, RateLimiters};
use crate::routing::{Handler, Route, RouteTable};
use crate::upstream::Upstream;

#[derive(Debug)]
pub struct Snapshot {
    pub config: Config,
    pub routes: RouteTable,
    pub upstreams: Vec<Arc<Upstream>>,
    pub auth: Arc<Authenticator>,
    pub rate_limits: RateLimiters,
    /// The `[graphql]` endpoint, when configured.
    pub graphql: Option<GraphQL>,
}

/// What a snapshot is built with besides its config: injected so tests can replace it.
#[derive(Debug, Clone, Default)]
pub struct Deps {
    /// The clock of the in-process rate limiters.
    pub clock: LimiterClock,
}

impl Snapshot {
    /// Reads, validates and builds: the single path from a file to a servable snapshot. Every
    /// problem is reported at once, route conflicts among the routes that validated included.
    pub fn load(path: &Path, env: Env<'_>) -> Result<Self, ConfigErrors> {
        Self::reload(path, env, &Deps::default(), None)
    }

    /// [`Snapshot::load`] for a hot reload: what did not change in the file is taken over from
    /// `previous` with its state (a service's connections, breaker and health; a rate-limit
    /// policy's counters; the JWKS keys; the GraphQL response cache).
    pub fn reload(
        path: &Path,
        env: Env<'_>,
        deps: &Deps,
        previous: Option<&Snapshot>,
    ) -> Result<Self, ConfigErrors> {
        let checked = config::load(path, env)?;
        Self::build_checked(checked, deps, previous)
    }

    /// Builds the upstream clients and the route table of a validated config.
    pub fn build(config: Config) -> Result<Self, ConfigErrors> {
        Self::build_with(config, &Deps::default())
    }

    /// [`Snapshot::build`] with the given dependencies.
    pub fn build_with(config: Config, deps: &Deps) -> Result<Self, ConfigErrors> {
        Self::build_checked(
            Checked {
                config,
                errors: Vec::new(),
            },
            deps,
            None,
        )
    }

    fn build_checked(
        checked: Checked,
        deps: &Deps,
        previous: Option<&Snapshot>,
    ) -> Result<Self, ConfigErrors> {
        let Checked { config, mut errors } = checked;
        // A section written the same way in both files keeps its state.
        let unchanged = |section: &str| {
            previous.is_some_and(|p| {
                p.config.fingerprints.get(section).is_some()
                    && p.config.fingerprints.same(&config.fingerprints, section)
            })
        };
        let mut upstreams = Vec::with_capacity(config.services.len());
        for service in &config.services {
            let kept = previous
                .filter(|_| unchanged(&format!("services.{}", service.name)))
                .and_then(|p| p.upstreams.iter().find(|u| u.name() == service.name));
            if let Some(kept) = kept {
                upstreams.push(kept.clone());
                continue;
            }
            match Upstream::new(service) {
                Ok(u) => upstreams.push(Arc::new(u)),
                Err(e) => errors.push(ConfigError {
                    location: service.location.clone(),
                    message: format!(
                        "cannot create the HTTP client for service \"{}\": {e}",
                        service.name
                    ),
                }),
            }
        }
        let auth = match previous.filter(|_| unchanged("auth")) {
            Some(p) => Ok(p.auth.clone()),
            None => Authenticator::new(&config.auth)
                .map(Arc::new)
                .map_err(|e| ConfigError {
                    location: Default::default(),
                    message: format!("cannot create the HTTP client for `jwks_url`: {e}"),
                }),
        };
        let same_policy = |name: &str| unchanged(&format!("rate_limits.{name}"));
        let reuse = previous.map(|p| ratelimit::Reuse {
            previous: &p.rate_limits,
            store: unchanged("rate_limit_store"),
            policy: &same_policy,
        });
        let rate_limits =
            RateLimiters::reusing(&config.rate_limits, &config.rate_limit_store, &deps.clock, reuse).map_err(
                |e| ConfigError {
                    location: Default::default(),
                    message: format!("[rate_limit_store] `url` is not usable ({:?})", e.kind()),
                },
            );
        let policy_of = |name: &Option<String>| match (name, &rate_limits) {
            (Some(name), Ok(limiters)) => limiters.policy(name),
            _ => None,
        };
        let mut graphql_route = None;
        let graphql = config.graphql.as_ref().and_then(|g| {
            let identity_headers = config.auth.forward.iter().map(|(h, _)| h.clone()).collect();
            // Responses are keyed by call, so a changed field simply asks for other keys; only a
            // change of the endpoint's settings or of a service starts from an empty cache.
            let services_unchanged = config
                .services
                .iter()
                .all(|s| unchanged(&format!("services.{}", s.name)))
                && previous.is_some_and(|p| p.config.services.len() == config.services.len());
            let cache = previous
                .filter(|_| unchanged("graphql") && services_unchanged)
                .and_then(|p| p.graphql.as_ref())
                .map(GraphQL::cache);
            match GraphQL::build(g, &upstreams, identity_headers, cache) {
                Ok(built) => {
                    graphql_route = Some(Route {
                        config: g.route.clone(),
                        handler: Handler::GraphQL,
                        rate_limit: policy_of(&g.route.rate_limit),
                    });
                    Some(built)
                }
                Err(e) => {
                    errors.extend(e);
                    None
                }
            }
        });
        // Routes whose service is unknown (already reported) are left out of the table.
        let routes = config
            .routes
            .iter()
            .filter_map(|route| {
                let upstream = upstreams.iter().find(|u| u.name() == route.service)?;
                Some(Route {
                    config: route.clone(),
                    handler: Handler::Proxy(upstream.clone()),
                    rate_limit: policy_of(&route.rate_limit),
                })
            })
            .chain(graphql_route)
            .collect();
        let auth = auth.map_err(|e| errors.push(e)).ok();
        let rate_limits = rate_limits.map_err(|e| errors.push(e)).ok();
        match (RouteTable::build(routes), auth, rate_limits) {
            (Ok(routes), Some(auth), Some(rate_limits)) if errors.is_empty() => Ok(Self {
                config,
                routes,
                upstreams,
                auth,
                rate_limits,
                graphql,
            }),
            (Ok(_), _, _) => Err(ConfigErrors::sorted(errors)),
            (Err(route_errors), _, _) => {
                errors.extend(route_errors);
                Err(ConfigErrors::sorted(errors))
            }
        }
    }

    /// Starts the snapshot's background work (JWKS refresh, forgetting idle rate-limit clients,
    /// connecting to Redis, health checks); it stops when the snapshot is dropped.
    pub fn start(&self) {
        self.auth.start();
        self.rate_limits.start();
        for upstream in &self.upstreams {
            upstream.start();
        }
    }
}

/// Background work a component runs once however many snapshots share it (a reload keeps
/// unchanged components, and starts the new snapshot).
#[derive(Debug, Default)]
pub(crate) struct StartOnce(std::sync::atomic::AtomicBool);

impl StartOnce {
    /// `true` the first time only.
    pub(crate) fn first(&self) -> bool {
        !self.0.swap(true, std::sync::atomic::Ordering::AcqRel)
    }
}

/// Spawns a piece of a snapshot's background work (each holds only a `Weak` to what it serves, so
/// it ends with it). Without a runtime (`gateway check`) there is nothing to run it on, and
/// nothing needs it.
pub(crate) fn spawn_background(task: impl Future<Output = ()> + Send + 'static) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(task);
    }
}
