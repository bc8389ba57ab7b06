//! What operators see: Prometheus metrics (`metrics`), logs (`logs`), and later traces. Every metric the gateway
//! records is named here, with its labels, so the set stays bounded (no user ids, tokens or raw
//! paths as labels: routes are their patterns, GraphQL operation names are capped).

pub mod access;
pub mod logs;
pub mod metrics;
pub mod trace;
