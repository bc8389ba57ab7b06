//! `routes.toml` exactly as written: serde structs that keep every value's byte span, so
//! validation can point at the line and column of a bad value. Unknown keys are errors.
//!
//! Values that need checking beyond their TOML type (durations, URLs, names) are kept as
//! `Spanned<String>` and turned into domain types by `validate`, which reports all errors at once.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_spanned::Spanned;

pub type Str = Spanned<String>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: Option<Spanned<RawServer>>,
    #[serde(default)]
    pub services: BTreeMap<Str, Spanned<RawService>>,
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Str>,
    pub worker_threads: Option<Spanned<i64>>,
    pub request_timeout: Option<Str>,
    pub header_read_timeout: Option<Str>,
    pub shutdown_timeout: Option<Str>,
    pub max_body_size: Option<Str>,
    pub max_connections: Option<Spanned<i64>>,
    pub trusted_proxies: Option<Vec<Str>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub urls: Spanned<Vec<Str>>,
    pub connect_timeout: Option<Str>,
    pub timeout: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub prefix: Option<Str>,
    pub path: Option<Str>,
    pub methods: Option<Spanned<Vec<Str>>>,
    pub service: Str,
    pub strip_prefix: Option<Spanned<bool>>,
    pub auth: Option<Str>,
}
