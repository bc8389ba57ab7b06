//! Rate limiting: after authentication, each request counts against its route's policy, per
//! client; over the quota it is answered 429 `RATE_LIMITED` without reaching a backend.
//!
//! A policy has one quota (GCRA: `requests` per `per`, up to `burst` at once), or one per tier
//! chosen by a claim of the caller. The count lives in this process ([`local`], governor) or in
//! Redis ([`redis_store`], shared by every instance), with the local limiter as the fallback when Redis
//! is down and `on_error = "local"`. Every limited response, 429 or not, carries the IETF
//! `RateLimit-Policy` and `RateLimit` headers.

pub mod clock;
pub mod local;
pub mod redis_store;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use clock::LimiterClock;

use crate::auth::{CredentialKind, Identity};
use crate::config::{
    RateLimitBackend, RateLimitKey, RateLimitPolicy, RateLimitStoreConfig, RateQuota, RedisFailure,
};
use crate::edge::forwarded::ClientAddr;
use crate::error::GatewayError;
use local::LocalLimiter;
use redis_store::{RedisStore, Unavailable};

pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// One decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let through; `remaining` more requests would pass right now, and the quota is whole again
    /// after `reset`.
    Allowed { remaining: u32, reset: Duration },
    /// Over the quota: the next request passes after `retry_after`.
    Denied { retry_after: Duration, reset: Duration },
}

/// The `RateLimit-Policy` and `RateLimit` header values of a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitHeaders {
    pub policy: HeaderValue,
    pub state: HeaderValue,
}

impl RateLimitHeaders {
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(&RATELIMIT_POLICY, self.policy.clone());
        headers.insert(&RATELIMIT, self.state.clone());
    }
}

/// Every policy of a snapshot and the store their counts live in.
#[derive(Debug)]
pub struct RateLimiters {
    policies: HashMap<String, Arc<Policy>>,
    redis: Option<(Arc<RedisStore>, RedisFailure)>,
}

/// What a reload may keep of the previous snapshot's limiters.
pub struct Reuse<'a> {
    pub previous: &'a RateLimiters,
    /// `[rate_limit_store]` is unchanged: keep the Redis connection.
    pub store: bool,
    /// `[rate_limits.NAME]` is unchanged: keep its counters.
    pub policy: &'a dyn Fn(&str) -> bool,
}

impl RateLimiters {
    pub fn new(
        policies: &[RateLimitPolicy],
        store: &RateLimitStoreConfig,
        clock: &LimiterClock,
    ) -> redis::RedisResult<Self> {
        Self::reusing(policies, store, clock, None)
    }

    /// [`RateLimiters::new`], keeping the counters of unchanged policies (and the Redis
    /// connection, if the store is unchanged) from the previous snapshot.
    pub fn reusing(
        policies: &[RateLimitPolicy],
        store: &RateLimitStoreConfig,
        clock: &LimiterClock,
        reuse: Option<Reuse<'_>>,
    ) -> redis::RedisResult<Self> {
        let kept_store = reuse
            .as_ref()
            .filter(|r| r.store)
            .and_then(|r| r.previous.redis.as_ref().map(|(s, _)| s.clone()));
        let redis = match &store.backend {
            RateLimitBackend::Memory => None,
            RateLimitBackend::Redis(url) => Some((
                match kept_store {
                    Some(kept) => kept,
                    None => Arc::new(RedisStore::new(url, store.timeout)?),
                },
                store.on_error,
            )),
        };
        let hasher = RandomState::new();
        let policies = policies
            .iter()
            .map(|p| {
                let kept = reuse
                    .as_ref()
                    .filter(|r| (r.policy)(&p.name))
                    .and_then(|r| r.previous.policies.get(&p.name).cloned());
                let policy = kept.unwrap_or_else(|| Arc::new(Policy::new(p, clock, &hasher)));
                (p.name.clone(), policy)
            })
            .collect();
        Ok(Self { policies, redis })
    }

    /// The policy named `name` (routes hold it so a request never looks it up by name).
    pub fn policy(&self, name: &str) -> Option<Arc<Policy>> {
        self.policies.get(name).cloned()
    }

    /// Starts the background work: forgetting idle clients, connecting to Redis.
    pub fn start(&self) {
        for policy in self.policies.values() {
            policy.limits().for_each(|limit| limit.local.start());
        }
        if let Some((redis, _)) = &self.redis {
            redis.start();
        }
    }

    /// Counts this request against `policy`: the headers to answer with, or the 429.
    pub async fn check(
        &self,
        policy: &Policy,
        identity: Option<&Identity>,
        client: &ClientAddr,
    ) -> Result<Option<RateLimitHeaders>, GatewayError> {
        let limit = policy.limit_for(identity);
        let key = policy.client_key(identity, client);
        let count_here = || limit.local.check(key.local(&policy.hasher));
        let verdict = match &self.redis {
            None => count_here(),
            Some((store, on_error)) => match store.check(&limit.redis_key(&key), &limit.quota).await {
                Ok(verdict) => verdict,
                Err(Unavailable) => match on_error {
                    RedisFailure::Local => count_here(),
                    // Nothing is known about the quota, so no RateLimit headers either.
                    RedisFailure::Allow => return Ok(None),
                    RedisFailure::Deny => {
                        return Err(GatewayError::RateLimited {
                            retry_after: 1,
                            headers: limit.headers(0, Duration::from_secs(1)),
                        });
                    }
                },
            },
        };
        match verdict {
            Verdict::Allowed { remaining, reset } => Ok(Some(limit.headers(remaining, reset))),
            Verdict::Denied { retry_after, reset } => Err(GatewayError::RateLimited {
                retry_after: ceil_secs(retry_after).max(1),
                headers: limit.headers(0, reset),
            }),
        }
    }
}

/// A `[rate_limits.NAME]` policy, ready to count.
#[derive(Debug)]
pub struct Policy {
    name: String,
    key: RateLimitKey,
    base: Limit,
    /// The claim that picks a tier, and the tiers by its value.
    tiers: Option<(String, HashMap<String, Limit>)>,
    /// Seeds the in-process key hash, so clients cannot aim for collisions.
    hasher: RandomState,
}

impl Policy {
    /// The `[rate_limits.NAME]` it was built from.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn new(config: &RateLimitPolicy, clock: &LimiterClock, hasher: &RandomState) -> Self {
        Self {
            name: config.name.clone(),
            key: config.key,
            base: Limit::new(config.name.clone(), config.quota, clock),
            tiers: config.tiers.as_ref().map(|t| {
                let tiers = t
                    .tiers
                    .iter()
                    .map(|(value, quota)| {
                        let label = format!("{}.{value}", config.name);
                        (value.clone(), Limit::new(label, *quota, clock))
                    })
                    .collect();
                (t.claim.clone(), tiers)
            }),
            hasher: hasher.clone(),
        }
    }

    fn limits(&self) -> impl Iterator<Item = &Limit> {
        std::iter::once(&self.base).chain(self.tiers.iter().flat_map(|(_, t)| t.values()))
    }

    /// The tier named by the caller's claim, else the policy's own quota.
    fn limit_for(&self, identity: Option<&Identity>) -> &Limit {
        let tier = self
            .tiers
            .as_ref()
            .and_then(|(claim, tiers)| match identity?.claims.get(claim)? {
                Value::String(value) => tiers.get(value),
                _ => None,
            });
        tier.unwrap_or(&self.base)
    }

    fn client_key<'a>(&self, identity: Option<&'a Identity>, client: &ClientAddr) -> ClientKey<'a> {
        match self.key {
            RateLimitKey::Global => ClientKey::Global,
            RateLimitKey::Ip => ClientKey::Ip(client.ip),
            // A token without `sub` names nobody in particular: count it by address.
            RateLimitKey::Client => match identity {
                Some(id) if !id.subject.is_empty() => ClientKey::Subject(id.kind, &id.subject),
                _ => ClientKey::Ip(client.ip),
            },
        }
    }
}

/// Who a request is counted for.
#[derive(Debug, Clone, Copy)]
enum ClientKey<'a> {
    Subject(CredentialKind, &'a str),
    Ip(IpAddr),
    Global,
}

impl ClientKey<'_> {
    /// 8 bytes per client in memory instead of a string; seeded, so collisions cannot be aimed
    /// for (and at a million clients one is about a one-in-ten-million chance).
    fn local(&self, hasher: &RandomState) -> u64 {
        match self {
            Self::Subject(kind, subject) => hasher.hash_one((*kind as u8, subject)),
            Self::Ip(ip) => hasher.hash_one(ip),
            Self::Global => 0,
        }
    }

    /// The same on every instance, and bounded in length whatever the subject.
    fn shared(&self) -> String {
        match self {
            Self::Subject(kind, subject) => {
                let mut h = Sha256::new();
                h.update([*kind as u8]);
                h.update(subject.as_bytes());
                format!("s:{}", hex::encode(&h.finalize()[..16]))
            }
            Self::Ip(ip) => format!("ip:{ip}"),
            Self::Global => "*".to_owned(),
        }
    }
}

/// One quota and its counters: a policy's own, or one of its tiers.
#[derive(Debug)]
struct Limit {
    /// The policy name, or "policy.tier": the name in the headers and in Redis keys.
    label: String,
    quota: RateQuota,
    local: LocalLimiter,
    policy_header: HeaderValue,
}

impl Limit {
    fn new(label: String, quota: RateQuota, clock: &LimiterClock) -> Self {
        let (q, w) = header_quota(&quota);
        let policy = format!("\"{label}\";q={q};w={w}");
        Self {
            local: LocalLimiter::new(quota, clock.clone()),
            policy_header: HeaderValue::try_from(policy).unwrap_or(HeaderValue::from_static("")),
            label,
            quota,
        }
    }

    /// The client's counter in Redis. The braces are a hash tag: on Redis Cluster the key's slot
    /// is computed from them.
    fn redis_key(&self, key: &ClientKey<'_>) -> String {
        format!("gateway:rl:{{{}:{}}}", self.label, key.shared())
    }

    fn headers(&self, remaining: u32, reset: Duration) -> RateLimitHeaders {
        let state = format!("\"{}\";r={remaining};t={}", self.label, ceil_secs(reset));
        RateLimitHeaders {
            policy: self.policy_header.clone(),
            state: HeaderValue::try_from(state).unwrap_or(HeaderValue::from_static("")),
        }
    }
}

/// `q` requests per `w` seconds for `RateLimit-Policy`, whose window is whole seconds: a window
/// like "500ms" is stated as the equivalent over the next whole second (10 per 500ms → q=20;w=1).
fn header_quota(quota: &RateQuota) -> (u64, u64) {
    let w = ceil_secs(quota.per).max(1);
    if quota.per == Duration::from_secs(w) {
        return (u64::from(quota.requests.get()), w);
    }
    let q = u128::from(quota.requests.get()) * u128::from(w) * 1_000_000_000 / quota.per.as_nanos().max(1);
    (u64::try_from(q).unwrap_or(u64::MAX), w)
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    fn quota(requests: u32, per: Duration) -> RateQuota {
        let requests = NonZeroU32::new(requests).unwrap();
        RateQuota {
            requests,
            per,
            burst: requests,
        }
    }

    #[test]
    fn policy_windows_are_whole_seconds_at_the_same_rate() {
        assert_eq!(header_quota(&quota(100, Duration::from_secs(60))), (100, 60));
        assert_eq!(header_quota(&quota(10, Duration::from_millis(500))), (20, 1));
        assert_eq!(header_quota(&quota(3, Duration::from_millis(1500))), (4, 2));
    }
}
