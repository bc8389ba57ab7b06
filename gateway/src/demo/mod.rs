//! `gateway demo`: the bundled demo backends and the command that runs them behind the gateway.

pub mod backends;
pub mod token;
