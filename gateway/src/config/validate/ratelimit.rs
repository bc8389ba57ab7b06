//! `[rate_limits.NAME]` policies, `[rate_limit_store]`, and which policy a route uses.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::ops::Range;

use serde_spanned::Spanned;
use url::Url;

use super::{Validator, is_name};
use crate::config::model::{
    RateLimitBackend, RateLimitKey, RateLimitPolicy, RateLimitStoreConfig, RateLimitTiers, RateQuota,
    RedisFailure, RedisUrl,
};
use crate::config::raw::{RawRateLimit, RawRateLimitStore, RawTier, Str};

/// The route value that opts out of the server's default policy.
pub(super) const NO_RATE_LIMIT: &str = "none";

impl Validator<'_, '_, '_> {
    pub(super) fn rate_limits(&mut self, raw: BTreeMap<Str, Spanned<RawRateLimit>>) -> Vec<RateLimitPolicy> {
        raw.into_iter()
            .filter_map(|(name, policy)| self.rate_limit(name, policy))
            .collect()
    }

    fn rate_limit(&mut self, name: Str, raw: Spanned<RawRateLimit>) -> Option<RateLimitPolicy> {
        let location = self.diag.source().location(&name.span());
        let mut ok = true;
        if !is_name(name.get_ref()) || name.get_ref() == NO_RATE_LIMIT {
            self.diag.error(
                &name.span(),
                format!(
                    "rate-limit policy name \"{}\" may only use letters, digits, `-` and `_`, and \"{NO_RATE_LIMIT}\" is reserved",
                    name.get_ref()
                ),
            );
            ok = false;
        }
        let raw = raw.into_inner();
        let quota = self.quota(&raw.requests, &raw.per, &raw.burst);
        let key = match &raw.key {
            None => Some(RateLimitKey::default()),
            Some(value) => {
                let text = self.string(value)?;
                match text.as_str() {
                    "client" => Some(RateLimitKey::Client),
                    "ip" => Some(RateLimitKey::Ip),
                    "global" => Some(RateLimitKey::Global),
                    _ => {
                        self.diag.error(
                            &value.span(),
                            format!("`key` = \"{text}\": use \"client\", \"ip\" or \"global\""),
                        );
                        None
                    }
                }
            }
        };
        let tiers = match raw.tiers {
            None => Some(None),
            Some(tiers) => self.tiers(tiers).map(Some),
        };
        Some(RateLimitPolicy {
            name: ok.then(|| name.into_inner())?,
            quota: quota?,
            key: key?,
            tiers: tiers?,
            location,
        })
    }

    fn quota(
        &mut self,
        requests: &Spanned<i64>,
        per: &Str,
        burst: &Option<Spanned<i64>>,
    ) -> Option<RateQuota> {
        // Every part is checked before giving up, so one run reports all of their errors.
        let requests = self.positive(requests, "requests");
        let burst = burst.as_ref().map(|burst| self.positive(burst, "burst"));
        let per_span = per.span();
        let per = self.duration_of(per, "per")?;
        let requests = requests?;
        let burst = burst.unwrap_or(Some(requests))?;
        if per.as_nanos() / u128::from(requests.get()) == 0 {
            self.diag.error(
                &per_span,
                "`requests` per `per` is more than one per nanosecond: lower `requests` or lengthen `per`",
            );
            return None;
        }
        Some(RateQuota { requests, per, burst })
    }

    fn positive(&mut self, value: &Spanned<i64>, key: &str) -> Option<NonZeroU32> {
        let n = u32::try_from(*value.get_ref()).ok().and_then(NonZeroU32::new);
        if n.is_none() {
            self.diag.error(
                &value.span(),
                format!("`{key}` must be a whole number from 1 to {}", u32::MAX),
            );
        }
        n
    }

    fn tiers(&mut self, raw: Spanned<crate::config::raw::RawTiers>) -> Option<RateLimitTiers> {
        let span = raw.span();
        let raw = raw.into_inner();
        let claim = match &raw.claim {
            Some(claim) => self.string(claim).filter(|c| {
                let ok = !c.is_empty();
                if !ok {
                    self.diag
                        .error(&claim.span(), "`claim` must name a claim, like \"plan\"");
                }
                ok
            }),
            None => {
                self.diag.error(
                    &span,
                    "tiers need `claim`: the claim whose value picks the tier, like claim = \"plan\"",
                );
                None
            }
        };
        if raw.tiers.is_empty() {
            self.diag.error(
                &span,
                "no tiers are defined: add one like gold = { requests = 1000, per = \"1m\" }",
            );
        }
        let tiers: Vec<(String, RateQuota)> = raw
            .tiers
            .into_iter()
            .filter_map(|(name, tier)| {
                let RawTier { requests, per, burst } = tier.into_inner();
                let quota = self.quota(&requests, &per, &burst);
                if !is_name(name.get_ref()) {
                    // The tier's name goes into response headers and Redis keys.
                    self.diag.error(
                        &name.span(),
                        format!(
                            "tier name \"{}\" may only use letters, digits, `-` and `_`",
                            name.get_ref()
                        ),
                    );
                    return None;
                }
                Some((name.into_inner(), quota?))
            })
            .collect();
        Some(RateLimitTiers { claim: claim?, tiers })
    }

    pub(super) fn rate_limit_store(
        &mut self,
        raw: Option<Spanned<RawRateLimitStore>>,
    ) -> RateLimitStoreConfig {
        let mut store = RateLimitStoreConfig::default();
        let Some(raw) = raw else { return store };
        let span = raw.span();
        let raw = raw.into_inner();
        store.timeout = self.duration(&raw.timeout, "timeout", RateLimitStoreConfig::DEFAULT_TIMEOUT);
        if let Some(value) = &raw.on_error
            && let Some(text) = self.string(value)
        {
            match text.as_str() {
                "local" => store.on_error = RedisFailure::Local,
                "allow" => store.on_error = RedisFailure::Allow,
                "deny" => store.on_error = RedisFailure::Deny,
                _ => self.diag.error(
                    &value.span(),
                    format!("`on_error` = \"{text}\": use \"local\", \"allow\" or \"deny\""),
                ),
            }
        }
        let backend = match &raw.backend {
            None => "memory".to_owned(),
            Some(value) => match self.string(value) {
                Some(text) => text,
                None => return store,
            },
        };
        match backend.as_str() {
            "memory" => {}
            "redis" => match &raw.url {
                None => self.diag.error(
                    &span,
                    "backend = \"redis\" needs `url`, like url = \"redis://127.0.0.1:6379\"",
                ),
                Some(url) => {
                    if let Some(url) = self.redis_url(url) {
                        store.backend = RateLimitBackend::Redis(url);
                    }
                }
            },
            _ => {
                let at = raw.backend.as_ref().map_or(span, |b| b.span());
                self.diag.error(
                    &at,
                    format!("`backend` = \"{backend}\": use \"memory\" or \"redis\""),
                );
            }
        }
        store
    }

    fn redis_url(&mut self, value: &Str) -> Option<RedisUrl> {
        let text = self.string(value)?;
        // Never echo the URL: it may hold a password.
        let problem = match Url::parse(&text) {
            Err(e) => format!("`url` is not a URL ({e}): write it like \"redis://127.0.0.1:6379\""),
            Ok(url) if url.scheme() == "rediss" => {
                "`url`: TLS (rediss://) is not supported; use redis:// over a trusted network".to_owned()
            }
            Ok(url) if url.scheme() != "redis" => "`url` must start with redis://".to_owned(),
            Ok(url) if url.host_str().is_none_or(str::is_empty) => "`url` has no host".to_owned(),
            Ok(url) => return Some(RedisUrl(url)),
        };
        self.diag.error(&value.span(), problem);
        None
    }

    /// The policy a route uses: its own `rate_limit`, else the server's default; "none" opts out.
    pub(super) fn route_rate_limit(
        &mut self,
        value: &Option<Str>,
        default: Option<&str>,
        policies: &[&str],
    ) -> Option<String> {
        let Some(value) = value else {
            return default.map(str::to_owned);
        };
        let text = self.string(value)?;
        if text == NO_RATE_LIMIT {
            return None;
        }
        self.known_policy(&text, &value.span(), policies).then_some(text)
    }

    /// Whether `name` is a defined policy; reports it otherwise.
    pub(super) fn known_policy(&mut self, name: &str, span: &Range<usize>, policies: &[&str]) -> bool {
        if policies.contains(&name) {
            return true;
        }
        let known = if policies.is_empty() {
            "no [rate_limits.*] policies are defined".to_owned()
        } else {
            format!("defined policies: {}", policies.join(", "))
        };
        self.diag.error(
            span,
            format!("unknown rate-limit policy \"{name}\": add a [rate_limits.{name}] table or fix the name ({known})"),
        );
        false
    }
}
