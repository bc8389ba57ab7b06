//! The gateway library. Folders follow the request path:
//! `server` (listener) → `edge` (the per-request pipeline) → `routing` (route table) → `auth` →
//! `ratelimit` → `proxy` (REST handler) or `graphql` (the BFF) → `upstream` (the one client layer to backends).
//! `config` reads `routes.toml`, `snapshot` turns a config into what requests run on, `error` is
//! the one place errors become responses, `cli` is the `gateway` command and `demo` its demo.

pub mod admin;
pub mod auth;
pub mod body;
pub mod cli;
pub mod config;
pub mod demo;
pub mod edge;
pub mod error;
pub mod graphql;
pub mod http1;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod routing;
pub mod server;
pub mod snapshot;
pub mod telemetry;
pub mod upstream;

pub use edge::Gateway;
pub use error::GatewayError;
pub use server::RunningServer;
pub use snapshot::Snapshot;
