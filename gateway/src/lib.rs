//! The gateway library: config, listener, edge pipeline, routing, proxy and upstream client.

pub mod demo;
