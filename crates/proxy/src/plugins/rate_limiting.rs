//! rate-limiting, local policy: fixed windows per second, minute, hour, day, month and year,
//! counted in this node's memory. Counters live outside snapshots, so a configuration change
//! does not reset them.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hyper::header::{HeaderName, HeaderValue};
use hyper::Response;
use serde_json::{json, Value};

use gantry_model::plugins::*;
use gantry_model::schema::*;

use super::Flow;
use super::Shared;
use super::{error, Ctx, Descriptor, Plugin};
use crate::names;
use crate::server::ProxyBody;

const PERIODS: [(&str, &str, i64); 6] = [
    ("second", "Second", 1),
    ("minute", "Minute", 60),
    ("hour", "Hour", 3600),
    ("day", "Day", 86_400),
    ("month", "Month", 2_592_000),
    ("year", "Year", 31_536_000),
];

/// `(hash of plugin id and identifier, period, window start)`.
type Key = (u64, i64, i64);

fn who(plugin: &str, ident: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (plugin, ident).hash(&mut h);
    h.finish()
}

/// Counters of every rate-limiting instance, by plugin, identifier, period and window.
#[derive(Default)]
pub struct Counters(Mutex<HashMap<Key, u64>>);

impl Counters {
    /// Check every limit; when none is reached, count this request in each. Returns, per
    /// limit, `(period index, limit, remaining after this request, seconds to reset)` and
    /// whether the request is allowed.
    fn hit(
        &self,
        plugin: &str,
        ident: &str,
        limits: &[(usize, u64)],
        now: i64,
    ) -> (Vec<(usize, u64, u64, i64)>, bool) {
        let Ok(mut map) = self.0.lock() else {
            return (vec![], true);
        };
        if map.len() > 100_000 {
            // Forget windows that have ended.
            map.retain(|(_, period, start), _| start + period > now);
        }
        let id = who(plugin, ident);
        let mut out = Vec::with_capacity(limits.len());
        let mut allowed = true;
        for &(pi, limit) in limits {
            let period = PERIODS[pi].2;
            let start = now - now.rem_euclid(period);
            let used = map.get(&(id, period, start)).copied().unwrap_or(0);
            if used >= limit {
                allowed = false;
            }
            out.push((pi, limit, used, start + period - now));
        }
        for o in out.iter_mut() {
            if allowed {
                let period = PERIODS[o.0].2;
                let start = now - now.rem_euclid(period);
                let c = map.entry((id, period, start)).or_insert(0);
                *c += 1;
                o.2 = o.1.saturating_sub(*c);
            } else {
                o.2 = o.1.saturating_sub(o.2);
            }
        }
        (out, allowed)
    }
}

struct RateLimiting {
    id: String,
    limits: Vec<(usize, u64)>,
    /// Each limit as a header value, by period index.
    limit_values: [HeaderValue; 6],
    /// `X-RateLimit-Limit-<period>` and `X-RateLimit-Remaining-<period>`, by period index.
    names: [(HeaderName, HeaderName); 6],
    limit_by: String,
    header_name: Option<String>,
    hide_client_headers: bool,
    error_code: u16,
    error_message: String,
    counters: Arc<Counters>,
}

pub static DESCRIPTOR: Descriptor = Descriptor::new(schema, build);

const LIMITS: [&str; 6] = ["second", "minute", "hour", "day", "month", "year"];

fn schema() -> PluginSchema {
    let mut fields: Vec<Field> = LIMITS
        .iter()
        .map(|l| Field::new(l, number_gt(0.0)))
        .collect();
    fields.extend([
        Field::new(
            "limit_by",
            one_of(&[
                "consumer",
                "credential",
                "ip",
                "service",
                "header",
                "path",
                "consumer-group",
            ]),
        )
        .def(json!("consumer")),
        Field::new("header_name", str_of(StrKind::HeaderName)),
        Field::new("path", str_of(StrKind::Path)),
        Field::new("policy", one_of(&["local", "cluster", "redis"])).def(json!("local")),
        Field::new("fault_tolerant", boolean())
            .req()
            .def(json!(true)),
        Field::new("redis", redis()),
        Field::new("hide_client_headers", boolean())
            .req()
            .def(json!(false)),
        Field::new("error_code", number()).def(json!(429)),
        Field::new("error_message", string()).def(json!("API rate limit exceeded")),
        Field::new("sync_rate", number()).def(json!(-1)),
    ]);
    PluginSchema::new("rate-limiting", 910, fields)
        .partials(&[("redis-ce", "redis")])
        .checks(|c, e| {
        let set: Vec<(&str, f64)> = LIMITS
            .iter()
            .filter_map(|l| c.get(*l).and_then(Value::as_f64).map(|v| (*l, v)))
            .collect();
        if set.is_empty() {
            e.add_entity(
                "at least one of these fields must be non-empty: 'config.second', 'config.minute', 'config.hour', 'config.day', 'config.month', 'config.year'",
            );
        }
        for w in set.windows(2) {
            if w[1].1 < w[0].1 {
                e.add(
                    w[1].0,
                    format!("The limit for {}({}) cannot be lower than the limit for {}({})", w[1].0, w[1].1, w[0].0, w[0].1),
                );
            }
        }
        let policy = c.get("policy").and_then(Value::as_str).unwrap_or("local");
        if policy == "redis" && c.get("redis").and_then(|r| r.get("host")).is_none_or(Value::is_null) {
            e.add_entity("'config.redis.host' is required when 'config.policy' is 'redis'");
        }
        let by = c.get("limit_by").and_then(Value::as_str).unwrap_or("consumer");
        if by == "header" && !set_nonempty(c, "header_name") {
            e.add("header_name", "required field missing when 'config.limit_by' is 'header'");
        }
        if by == "path" && !set_nonempty(c, "path") {
            e.add("path", "required field missing when 'config.limit_by' is 'path'");
        }
        })
}

fn build(id: &str, c: &Value, shared: &Shared) -> Result<Arc<dyn Plugin>, CompileError> {
    let limits: Vec<(usize, u64)> = PERIODS
        .iter()
        .enumerate()
        .filter_map(|(i, (k, _, _))| {
            c.get(*k)
                .and_then(Value::as_f64)
                .map(|v| (i, v.max(0.0) as u64))
        })
        .collect();
    // What this build cannot enforce is refused, never approximated: a limit counted
    // locally when the configuration asks for one shared by every node would let N times
    // the traffic through.
    let policy = c.get("policy").and_then(Value::as_str).unwrap_or("local");
    if policy != "local" {
        return Err(CompileError::field(
            "policy",
            format!("policy '{policy}' is not available in this build of Gantry (only 'local')"),
        ));
    }
    if c.get("limit_by").and_then(Value::as_str) == Some("consumer-group") {
        return Err(CompileError::field(
            "limit_by",
            "'consumer-group' is not available in this build of Gantry",
        ));
    }
    let names = PERIODS.map(|(_, p, _)| {
        let p = p.to_ascii_lowercase();
        let n = |kind: &str| {
            HeaderName::from_bytes(format!("x-ratelimit-{kind}-{p}").as_bytes())
                .expect("a valid header name")
        };
        (n("limit"), n("remaining"))
    });
    let mut limit_values: [HeaderValue; 6] = std::array::from_fn(|_| HeaderValue::from(0u64));
    for &(i, limit) in &limits {
        limit_values[i] = HeaderValue::from(limit);
    }
    Ok(Arc::new(RateLimiting {
        id: id.to_string(),
        limits,
        limit_values,
        names,
        limit_by: c
            .get("limit_by")
            .and_then(Value::as_str)
            .unwrap_or("consumer")
            .to_string(),
        header_name: c
            .get("header_name")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase),
        hide_client_headers: c
            .get("hide_client_headers")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        error_code: c.get("error_code").and_then(Value::as_f64).unwrap_or(429.0) as u16,
        error_message: c
            .get("error_message")
            .and_then(Value::as_str)
            .unwrap_or("API rate limit exceeded")
            .to_string(),
        counters: shared.get::<Counters>(),
    }))
}

impl RateLimiting {
    /// Kong's identifiers; each falls back to the client IP when absent.
    fn identifier<'c>(&self, ctx: &'c Ctx<'_>) -> Cow<'c, str> {
        let ip = || Cow::Owned(ctx.client_ip.to_string());
        match self.limit_by.as_str() {
            "consumer" => ctx
                .consumer
                .as_ref()
                .map(|c| Cow::Borrowed(c.id.as_str()))
                .unwrap_or_else(ip),
            "credential" => ctx
                .credential
                .as_deref()
                .map(Cow::Borrowed)
                .unwrap_or_else(ip),
            "service" => ctx.service_id.map(Cow::Borrowed).unwrap_or_else(ip),
            "header" => self
                .header_name
                .as_ref()
                .and_then(|h| ctx.req.headers.get(h.as_str()))
                .and_then(|v| v.to_str().ok())
                .map(Cow::Borrowed)
                .unwrap_or_else(ip),
            "path" => Cow::Borrowed(ctx.req.uri.path()),
            _ => ip(),
        }
    }
}

impl Plugin for RateLimiting {
    fn access<'a>(&'a self, ctx: &'a mut Ctx<'_>) -> Flow<'a> {
        self.decide(ctx).into()
    }
}

impl RateLimiting {
    fn decide(&self, ctx: &mut Ctx<'_>) -> Option<Response<ProxyBody>> {
        let (usage, allowed) = {
            let ident = self.identifier(ctx);
            self.counters
                .hit(&self.id, &ident, &self.limits, gantry_model::unix_now())
        };
        let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::with_capacity(2 * usage.len() + 3);
        // The limit closest to exhaustion gives the RateLimit-* headers.
        let tightest = usage
            .iter()
            .min_by_key(|(_, _, remaining, reset)| (*remaining, -*reset));
        if !self.hide_client_headers {
            for (pi, _, remaining, _) in &usage {
                let (limit_name, remaining_name) = &self.names[*pi];
                headers.push((limit_name.clone(), self.limit_values[*pi].clone()));
                headers.push((remaining_name.clone(), HeaderValue::from(*remaining)));
            }
            if let Some((pi, _, remaining, reset)) = tightest {
                headers.push((names::RATELIMIT_LIMIT, self.limit_values[*pi].clone()));
                headers.push((names::RATELIMIT_REMAINING, HeaderValue::from(*remaining)));
                headers.push((names::RATELIMIT_RESET, HeaderValue::from(*reset)));
            }
        }
        if allowed {
            ctx.response_headers.extend(headers);
            return None;
        }
        let mut r = error(self.error_code, &self.error_message);
        for (n, v) in headers {
            r.headers_mut().append(n, v);
        }
        if let Some((_, _, _, reset)) = usage
            .iter()
            .filter(|(_, l, r, _)| *r == 0 || *l == 0)
            .max_by_key(|u| u.3)
        {
            if let Ok(v) = HeaderValue::from_str(&reset.to_string()) {
                r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
            }
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_count_and_block() {
        let c = Counters::default();
        let limits = [(1usize, 2u64), (2usize, 10u64)];
        let (u, ok) = c.hit("p", "ip", &limits, 120);
        assert!(ok);
        assert_eq!((u[0].2, u[1].2), (1, 9));
        assert!(c.hit("p", "ip", &limits, 121).1);
        let (u, ok) = c.hit("p", "ip", &limits, 122);
        assert!(!ok);
        assert_eq!(u[0].2, 0);
        assert_eq!(u[0].3, 58, "seconds to the next minute");
        // Another identifier, and the next window, start again.
        assert!(c.hit("p", "other", &limits, 122).1);
        assert!(c.hit("p", "ip", &limits, 180).1);
    }
}
