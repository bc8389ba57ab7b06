//! `[graphql]`: the endpoint (a route like the others: auth, scopes, rate limit, timeout), its
//! schema directory and its limits. The schema files themselves are checked when the snapshot is
//! built (`graphql::sdl`), with their own `file:line:column`.

use std::path::{Path, PathBuf};

use serde_spanned::Spanned;

use super::{RouteContext, Validator, check_prefix, parse_size};
use crate::config::model::{AuthMode, GraphqlConfig, PathMatch, RouteConfig};
use crate::config::raw::RawGraphql;

impl Validator<'_, '_, '_> {
    pub(super) fn graphql(
        &mut self,
        raw: Spanned<RawGraphql>,
        ctx: &RouteContext<'_>,
    ) -> Option<GraphqlConfig> {
        let span = raw.span();
        let location = self.diag.source().location(&span);
        let raw = raw.into_inner();
        let path = match &raw.path {
            None => Some(GraphqlConfig::DEFAULT_PATH.to_owned()),
            Some(value) => self.string(value).and_then(|text| match check_prefix(&text) {
                Ok(p) if p != "/" => Some(p),
                Ok(_) => {
                    self.diag.error(
                        &value.span(),
                        "`path` cannot be \"/\": the endpoint needs its own path",
                    );
                    None
                }
                Err(why) => {
                    self.diag
                        .error(&value.span(), format!("`path` = \"{text}\" {why}"));
                    None
                }
            }),
        };
        // GraphQL's default is "optional": `@auth` decides per field. Without a provider there
        // is nobody to authenticate, so "none".
        let auth = match &raw.auth {
            None if ctx.has_provider => Some(AuthMode::Optional),
            None => Some(AuthMode::None),
            Some(_) => self.auth(&raw.auth, &span, ctx.has_provider),
        };
        let scopes = self.scopes(&raw.scopes, auth);
        let rate_limit = self.route_rate_limit(&raw.rate_limit, ctx.default_policy, ctx.policies);
        let timeout = self.optional_duration(&raw.timeout, "timeout");
        let base = self.base_dir();
        let schema_location = raw
            .schema
            .as_ref()
            .map_or_else(|| location.clone(), |s| self.diag.source().location(&s.span()));
        let schema_dir = match &raw.schema {
            Some(value) => self.string(value).map(|s| base.join(s)),
            None => Some(base.join("schema")),
        };
        let playground_assets = raw
            .playground_assets
            .as_ref()
            .and_then(|value| self.string(value))
            .map(|s| base.join(s));
        let example_query = raw.example_query.as_ref().and_then(|value| self.string(value));
        let max_query_size = match &raw.max_query_size {
            None => Some(GraphqlConfig::DEFAULT_MAX_QUERY_SIZE),
            Some(value) => self.string(value).and_then(|text| match parse_size(&text) {
                Some(n) if n > 0 && n <= 16 << 20 => Some(n as usize),
                _ => {
                    self.diag.error(
                        &value.span(),
                        format!(
                            "`max_query_size` = \"{text}\" must be a size between 1 and 16MiB, like \"64KiB\""
                        ),
                    );
                    None
                }
            }),
        };
        let flag = |v: &Option<Spanned<bool>>, default: bool| v.as_ref().map_or(default, |b| *b.get_ref());
        let path = path?;
        Some(GraphqlConfig {
            route: RouteConfig {
                path: PathMatch::Prefix(path.clone()),
                methods: None,
                service: String::new(),
                strip_prefix: false,
                auth: auth?,
                scopes,
                timeout,
                rate_limit,
                location,
            },
            path,
            schema_dir: schema_dir?,
            schema_location,
            playground: flag(&raw.playground, true),
            playground_assets,
            example_query,
            introspection: flag(&raw.introspection, false),
            suggestions: flag(&raw.suggestions, false),
            batching: flag(&raw.batching, false),
            max_batch: self.limit(&raw.max_batch, "max_batch", GraphqlConfig::DEFAULT_MAX_BATCH),
            max_depth: self.limit(&raw.max_depth, "max_depth", GraphqlConfig::DEFAULT_MAX_DEPTH),
            max_complexity: self.limit(
                &raw.max_complexity,
                "max_complexity",
                GraphqlConfig::DEFAULT_MAX_COMPLEXITY,
            ),
            max_aliases: self.count(
                &raw.max_aliases,
                "max_aliases",
                100_000,
                GraphqlConfig::DEFAULT_MAX_ALIASES,
            ),
            max_root_fields: self.limit(
                &raw.max_root_fields,
                "max_root_fields",
                GraphqlConfig::DEFAULT_MAX_ROOT_FIELDS,
            ),
            max_tokens: self.limit(&raw.max_tokens, "max_tokens", GraphqlConfig::DEFAULT_MAX_TOKENS),
            max_query_size: max_query_size?,
            stale_grace: self.duration(
                &raw.stale_grace,
                "stale_grace",
                GraphqlConfig::DEFAULT_STALE_GRACE,
            ),
            cache_max_entries: self
                .int_in(&raw.cache_max_entries, "cache_max_entries", 0, 100_000_000)
                .map_or(GraphqlConfig::DEFAULT_CACHE_MAX_ENTRIES, |n| n as u64),
            csrf: flag(&raw.csrf, true),
            expose_calls: flag(&raw.expose_calls, false),
        })
    }

    /// A limit of at least 1.
    fn limit(&mut self, value: &Option<Spanned<i64>>, key: &str, default: usize) -> usize {
        self.int_in(value, key, 1, 1_000_000)
            .map_or(default, |n| n as usize)
    }

    /// The directory of the config file: relative paths in it are relative to it.
    fn base_dir(&self) -> PathBuf {
        Path::new(&self.diag.source().name)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }
}
