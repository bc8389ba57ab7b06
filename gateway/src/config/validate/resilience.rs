//! A service's resilience settings: load balancing, bulkhead, health checks, circuit breaker,
//! retries.

use std::time::Duration;

use serde_spanned::Spanned;

use super::{Validator, parse_size};
use crate::config::model::{BreakerConfig, HealthCheckConfig, LoadBalancing, RetryConfig, RetryOn};
use crate::config::raw::{RawCircuitBreaker, RawHealthCheck, RawRetry, Str};

impl Validator<'_, '_, '_> {
    pub(super) fn load_balancing(&mut self, value: &Option<Str>) -> LoadBalancing {
        let Some(value) = value else {
            return LoadBalancing::default();
        };
        match self.string(value).as_deref() {
            None => LoadBalancing::default(),
            Some("round_robin") => LoadBalancing::RoundRobin,
            Some("least_requests") => LoadBalancing::LeastRequests,
            Some("random") => LoadBalancing::Random,
            Some(other) => {
                self.diag.error(
                    &value.span(),
                    format!("`load_balancing` = \"{other}\": use \"round_robin\", \"least_requests\" or \"random\""),
                );
                LoadBalancing::default()
            }
        }
    }

    /// A whole number in `min..=max`, or `default` when absent (reported when out of range).
    fn bounded(&mut self, value: &Option<Spanned<i64>>, key: &str, min: i64, max: i64, default: u32) -> u32 {
        self.int_in(value, key, min, max).map_or(default, |n| n as u32)
    }

    fn share(&mut self, value: &Option<Spanned<f64>>, key: &str, default: f64) -> f64 {
        let Some(value) = value else { return default };
        let x = *value.get_ref();
        if (0.0..=1.0).contains(&x) {
            x
        } else {
            self.diag.error(
                &value.span(),
                format!("`{key}` must be between 0 and 1, like 0.5"),
            );
            default
        }
    }

    pub(super) fn max_concurrent(&mut self, value: &Option<Spanned<i64>>, default: usize) -> usize {
        self.bounded(value, "max_concurrent", 1, 1_000_000, default as u32) as usize
    }

    pub(super) fn health_check(
        &mut self,
        raw: Option<Spanned<RawHealthCheck>>,
        service_timeout: Duration,
    ) -> Option<HealthCheckConfig> {
        let raw = raw?.into_inner();
        let path = self.string(&raw.path)?;
        if !path.starts_with('/') || path.contains('#') {
            self.diag.error(
                &raw.path.span(),
                format!("health check `path` = \"{path}\" must start with `/`"),
            );
            return None;
        }
        let interval = self.duration(&raw.interval, "interval", Duration::from_secs(5));
        let timeout = self.duration(&raw.timeout, "timeout", service_timeout.min(interval));
        Some(HealthCheckConfig {
            path,
            interval,
            timeout,
            unhealthy_after: self.bounded(&raw.unhealthy_after, "unhealthy_after", 1, 1000, 3),
            healthy_after: self.bounded(&raw.healthy_after, "healthy_after", 1, 1000, 2),
        })
    }

    pub(super) fn circuit_breaker(
        &mut self,
        raw: Option<Spanned<RawCircuitBreaker>>,
    ) -> Option<BreakerConfig> {
        let d = BreakerConfig::default();
        let Some(raw) = raw else { return Some(d) };
        let raw = raw.into_inner();
        let slow_call = self.optional_duration(&raw.slow_call, "slow_call");
        let config = BreakerConfig {
            failure_rate: self.share(&raw.failure_rate, "failure_rate", d.failure_rate),
            min_requests: self.bounded(&raw.min_requests, "min_requests", 1, 1_000_000, d.min_requests),
            window: self.duration(&raw.window, "window", d.window),
            open_for: self.duration(&raw.open_for, "open_for", d.open_for),
            half_open_requests: self.bounded(
                &raw.half_open_requests,
                "half_open_requests",
                1,
                1000,
                d.half_open_requests,
            ),
            slow_call,
        };
        raw.enabled.is_none_or(|e| *e.get_ref()).then_some(config)
    }

    pub(super) fn retry(&mut self, raw: Option<Spanned<RawRetry>>) -> RetryConfig {
        let d = RetryConfig::default();
        let Some(raw) = raw else { return d };
        let raw = raw.into_inner();
        let backoff = self.duration(&raw.backoff, "backoff", d.backoff);
        let max_backoff = self.duration(&raw.max_backoff, "max_backoff", d.max_backoff);
        let max_body = match &raw.max_body {
            None => d.max_body,
            Some(value) => match self.string(value) {
                Some(text) => parse_size(&text).unwrap_or_else(|| {
                    self.diag.error(
                        &value.span(),
                        format!("`max_body` = \"{text}\" is not a size: write it like \"64KiB\""),
                    );
                    d.max_body
                }),
                None => d.max_body,
            },
        };
        RetryConfig {
            attempts: self.bounded(&raw.attempts, "attempts", 1, 10, d.attempts),
            backoff,
            max_backoff: max_backoff.max(backoff),
            budget: self.share(&raw.budget, "budget", d.budget),
            min_retries_per_second: self.bounded(
                &raw.min_retries_per_second,
                "min_retries_per_second",
                0,
                1_000_000,
                d.min_retries_per_second,
            ),
            on: match &raw.on {
                Some(on) => self.retry_on(on),
                None => d.on,
            },
            max_body,
        }
    }

    fn retry_on(&mut self, value: &Spanned<Vec<Str>>) -> RetryOn {
        let mut on = RetryOn {
            connect: false,
            reset: false,
            timeout: false,
            statuses: Vec::new(),
        };
        for item in value.get_ref() {
            let Some(text) = self.string(item) else { continue };
            match text.as_str() {
                "connect" => on.connect = true,
                "reset" => on.reset = true,
                "timeout" => on.timeout = true,
                code => match code.parse::<u16>() {
                    Ok(status) if (500..=599).contains(&status) || status == 429 => on.statuses.push(status),
                    _ => self.diag.error(
                        &item.span(),
                        format!(
                            "retry `on` entry \"{text}\": use \"connect\", \"reset\", \"timeout\", 429 or a 5xx status like \"503\""
                        ),
                    ),
                },
            }
        }
        on
    }
}
