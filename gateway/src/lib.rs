//! The gateway library: config, listener, edge pipeline, routing, proxy and upstream client.

pub mod config;
pub mod demo;
