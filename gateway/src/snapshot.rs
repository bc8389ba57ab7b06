//! A snapshot is everything a request needs, built from one validated config: the route table
//! and the upstream clients it points at. It is immutable; the gateway holds the active one in an
//! `ArcSwap`, and startup, `gateway check` and hot reload all build it with [`Snapshot::load`].

use std::path::Path;
use std::sync::Arc;

use crate::config::{self, Config, ConfigError, ConfigErrors, Env};
use crate::routing::{Route, RouteTable};
use crate::upstream::Upstream;

#[derive(Debug)]
pub struct Snapshot {
    pub config: Config,
    pub routes: RouteTable,
    pub upstreams: Vec<Arc<Upstream>>,
}

impl Snapshot {
    /// Reads, validates and builds: the single path from a file to a servable snapshot.
    pub fn load(path: &Path, env: Env<'_>) -> Result<Self, ConfigErrors> {
        let (_source, config) = config::load(path, env)?;
        Self::build(config)
    }

    /// Builds the upstream clients and the route table of a validated config.
    pub fn build(config: Config) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let mut upstreams = Vec::with_capacity(config.services.len());
        for service in &config.services {
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
        let mut routes = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            // Validation guarantees the service exists; an upstream that failed to build is
            // already reported above.
            if let Some(upstream) = upstreams.iter().find(|u| u.name() == route.service) {
                routes.push(Route {
                    config: route.clone(),
                    upstream: upstream.clone(),
                });
            }
        }
        let routes = RouteTable::build(routes).map_err(|mut route_errors| {
            route_errors.append(&mut errors);
            route_errors
        });
        match routes {
            Ok(routes) if errors.is_empty() => Ok(Self {
                config,
                routes,
                upstreams,
            }),
            Ok(_) => Err(ConfigErrors(errors)),
            Err(mut all) => {
                all.sort_by_key(|e| (e.location.line, e.location.column));
                Err(ConfigErrors(all))
            }
        }
    }
}
