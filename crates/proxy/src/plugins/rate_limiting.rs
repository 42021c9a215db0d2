//! rate-limiting, as Kong 3.9's: limits per second, minute, hour, day, month and year, in
//! windows that start on the UTC calendar's boundaries (a month is a calendar month).
//!
//! Policies:
//! - `local`: counted in this node's memory, outside snapshots (a configuration change does
//!   not reset them); a denied request is not counted.
//! - `redis`: counted in Redis under Kong's own keys
//!   (`ratelimit:{route}:{service}:{identifier}:{window start ms}:{period}`), so that every
//!   node sharing the server (Kong's included) enforces one limit together. With `sync_rate`
//!   -1 each request increments the counters in one round trip (a denied request counts, as in
//!   Kong); with `sync_rate` > 0 a node counts locally and adds its counts to Redis every
//!   `sync_rate` seconds. When Redis fails, `fault_tolerant` lets the request through (an
//!   error is logged) or answers 500.
//! - `cluster` counts in Kong's database; a data plane has none, and Kong refuses it on
//!   control planes and DB-less nodes. Gantry refuses it on every node, naming the field.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::header::{HeaderName, HeaderValue};
use hyper::Response;
use serde_json::{json, Value};

use gantry_model::plugins::*;
use gantry_model::schema::*;

use super::Flow;
use super::{error, Ctx, Descriptor, Plugin};
use super::{Instance, Shared};
use crate::names;
use crate::redis::{Pool, RedisError, Target};
use crate::server::ProxyBody;

/// `(config field, header suffix, Kong's expiration in seconds)`.
pub(crate) const PERIODS: [(&str, &str, i64); 6] = [
    ("second", "Second", 1),
    ("minute", "Minute", 60),
    ("hour", "Hour", 3600),
    ("day", "Day", 86_400),
    ("month", "Month", 2_592_000),
    ("year", "Year", 31_536_000),
];

/// The start of the window of period `pi` that holds `now` (Unix seconds): UTC calendar
/// boundaries, as Kong's `timestamp.get_timestamps`.
pub(crate) fn window_start(pi: usize, now: i64) -> i64 {
    if pi < 4 {
        return now - now.rem_euclid(PERIODS[pi].2);
    }
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp(now) else {
        return now - now.rem_euclid(PERIODS[pi].2);
    };
    let date = t.date();
    let first = if pi == 4 {
        date.replace_day(1).ok()
    } else {
        time::Date::from_calendar_date(date.year(), time::Month::January, 1).ok()
    };
    first.map_or(now, |d| d.midnight().assume_utc().unix_timestamp())
}

/// Seconds until the window of period `pi` resets, as Kong reports them (at least 1).
fn reset_in(pi: usize, now: i64) -> i64 {
    (PERIODS[pi].2 - (now - window_start(pi, now))).max(1)
}

/// `(hash of plugin id and identifier, period index, window start)`.
type Key = (u64, usize, i64);

fn who(plugin: &str, ident: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (plugin, ident).hash(&mut h);
    h.finish()
}

/// Counters of every `local` rate-limiting instance, by plugin, identifier, period and window.
#[derive(Default)]
pub struct Counters(Mutex<HashMap<Key, u64>>);

impl Counters {
    /// The use of each limit before this request, `(period index, used)`, and whether the
    /// request is allowed; an allowed request is counted in every window.
    fn hit(
        &self,
        plugin: &str,
        ident: &str,
        limits: &[(usize, u64)],
        now: i64,
    ) -> (Vec<(usize, u64)>, bool) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 100_000 {
            // Forget windows that have ended.
            map.retain(|(_, pi, start), _| *start + PERIODS[*pi].2 > now);
        }
        let id = who(plugin, ident);
        let used: Vec<(usize, u64)> = limits
            .iter()
            .map(|&(pi, _)| {
                let k = (id, pi, window_start(pi, now));
                (pi, map.get(&k).copied().unwrap_or(0))
            })
            .collect();
        let allowed = limits.iter().zip(&used).all(|((_, l), (_, u))| u < l);
        if allowed {
            for &(pi, _) in limits {
                *map.entry((id, pi, window_start(pi, now))).or_insert(0) += 1;
            }
        }
        (used, allowed)
    }
}

/// Redis's increment of one counter: returns its value before this request, and starts the
/// window's expiry on its first use (Kong's script).
const INCR: &str = r#"local cache_key, expiration = KEYS[1], ARGV[1]
local result_incr = redis.call("incr", cache_key)
if result_incr == 1 then
  redis.call("expire", cache_key, expiration)
end
return result_incr - 1"#;

/// Kong's script that adds a node's counts to a counter, expiring it with its window.
const ADD: &str = r#"local key, value, expiration = KEYS[1], tonumber(ARGV[1]), ARGV[2]
local exists = redis.call("exists", key)
redis.call("incrby", key, value)
if not exists or exists == 0 then
  redis.call("expireat", key, expiration)
end"#;

/// A counter a node keeps between syncs (`sync_rate` > 0): what Redis said, when its window
/// ends, and what this node added since.
struct Cached {
    usage: i64,
    expire_at: i64,
    delta: i64,
}

/// The counters of one `redis` instance with a `sync_rate`, by Redis key.
#[derive(Default)]
struct Pending {
    counters: Mutex<HashMap<String, Cached>>,
    /// A sync is scheduled: counts added meanwhile go with it.
    scheduled: AtomicBool,
}

/// The [`Pending`] counters of every instance, by plugin id: kept across configurations.
#[derive(Default)]
pub struct Syncs(Mutex<HashMap<String, Arc<Pending>>>);

enum Policy {
    Local(Arc<Counters>),
    Redis {
        pool: Arc<Pool>,
        target: Target,
        /// `sync_rate` > 0: the seconds between syncs and the counts kept meanwhile.
        sync: Option<(Duration, Arc<Pending>)>,
    },
}

struct RateLimiting {
    id: String,
    /// Kong's key prefix: `ratelimit:{route id}:{service id}:` (a nil UUID for none).
    key_prefix: String,
    limits: Vec<(usize, u64)>,
    /// Each limit as a header value, by period index.
    limit_values: [HeaderValue; 6],
    /// `X-RateLimit-Limit-<period>` and `X-RateLimit-Remaining-<period>`, by period index.
    names: [(HeaderName, HeaderName); 6],
    limit_by: String,
    /// The consumer group the instance is scoped to, which `consumer-group` counts for.
    scoped_group: Option<String>,
    header_name: Option<String>,
    path: Option<String>,
    hide_client_headers: bool,
    fault_tolerant: bool,
    error_code: u16,
    error_message: String,
    policy: Policy,
    /// The second of the last error logged: a failing Redis is reported once a second.
    logged: AtomicI64,
}

pub static DESCRIPTOR: Descriptor = Descriptor::new(schema, build);

const LIMITS: [&str; 6] = ["second", "minute", "hour", "day", "month", "year"];

/// A failed conditional check of Kong's, on `if_field`: the entity's message, and `then`'s
/// own under `config`.
fn conditional(e: &mut FieldErrors, if_field: &str, then: &[&str]) {
    e.add_entity(format!(
        "failed conditional validation given value of field 'config.{if_field}'"
    ));
    let mut v = json!("required field missing");
    for k in then.iter().skip(1).rev() {
        v = json!({ *k: v });
    }
    match (then.first(), v) {
        (Some(first), Value::String(m)) if then.len() == 1 => e.add(first, m),
        (Some(first), v) => {
            e.0.insert(first.to_string(), v);
        }
        _ => {}
    }
}

/// Kong's number format in this plugin's messages (`%.1f`).
/// Kong's check that no longer period allows less than a shorter one: the first pair that
/// does, as its message (`<lead> limit for day(5.0) cannot be lower than the limit for ...`).
pub(crate) fn longer_below_shorter(set: &[(&str, f64)], lead: &str) -> Option<String> {
    set.iter().enumerate().find_map(|(i, lower)| {
        set[i + 1..]
            .iter()
            .find(|upper| upper.1 < lower.1)
            .map(|upper| {
                format!(
                    "{lead} limit for {}({}) cannot be lower than the limit for {}({})",
                    upper.0,
                    one_decimal(upper.1),
                    lower.0,
                    one_decimal(lower.1)
                )
            })
    })
}

fn one_decimal(v: f64) -> String {
    format!("{v:.1}")
}

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
        Field::new("error_code", number_gt(0.0)).def(json!(429)),
        Field::new("error_message", string()).def(json!("API rate limit exceeded")),
        Field::new("sync_rate", number()).req().def(json!(-1)),
    ]);
    PluginSchema::new("rate-limiting", 910, fields)
        .partials(&[("redis-ce", "redis")])
        .shorthands(REDIS_SHORTHANDS)
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
            // Kong's custom validator: each limit against every longer one, the first
            // failure reported as the record's.
            let order = longer_below_shorter(&set, "The");
            let policy = c.get("policy").and_then(Value::as_str).unwrap_or("local");
            let sync_rate = c.get("sync_rate").and_then(Value::as_f64).unwrap_or(-1.0);
            let sync = if policy != "redis" && sync_rate != -1.0 {
                Some("sync_rate can only be used with the redis policy")
            } else if policy == "redis" && sync_rate != -1.0 && sync_rate < 0.02 {
                Some("sync_rate must be greater than 0.02, or -1 to disable")
            } else {
                None
            };
            if let Some(m) = order.or(sync.map(str::to_string)) {
                e.add_record(m);
            }
            if policy == "redis" {
                for k in ["host", "port", "timeout"] {
                    if c.get("redis").and_then(|r| r.get(k)).is_none_or(Value::is_null) {
                        conditional(e, "policy", &["redis", k]);
                    }
                }
            }
            let by = c.get("limit_by").and_then(Value::as_str).unwrap_or("consumer");
            if by == "header" && !set_nonempty(c, "header_name") {
                conditional(e, "limit_by", &["header_name"]);
            }
            if by == "path" && !set_nonempty(c, "path") {
                conditional(e, "limit_by", &["path"]);
            }
        })
}

/// Kong's placeholder for a plugin without a route or a service, in its Redis keys.
pub(crate) const NIL_UUID: &str = "00000000-0000-0000-0000-000000000000";

fn build(at: &Instance, c: &Value, shared: &Shared) -> Result<Arc<dyn Plugin>, CompileError> {
    let limits: Vec<(usize, u64)> = PERIODS
        .iter()
        .enumerate()
        .filter_map(|(i, (k, _, _))| {
            c.get(*k)
                .and_then(Value::as_f64)
                .map(|v| (i, v.max(0.0) as u64))
        })
        .collect();
    let str_of = |k: &str| c.get(k).and_then(Value::as_str).map(str::to_string);
    let policy = match str_of("policy").as_deref().unwrap_or("local") {
        "local" => Policy::Local(shared.get::<Counters>()),
        "redis" => {
            let target = Target::from_config(&c["redis"])?;
            let rate = c.get("sync_rate").and_then(Value::as_f64).unwrap_or(-1.0);
            let sync = (rate > 0.0).then(|| {
                let syncs = shared.get::<Syncs>();
                let mut map = syncs.0.lock().unwrap_or_else(|e| e.into_inner());
                let pending = map.entry(at.id.to_string()).or_default().clone();
                (Duration::from_secs_f64(rate), pending)
            });
            Policy::Redis {
                pool: shared.get::<Pool>(),
                target,
                sync,
            }
        }
        // What this node cannot enforce is refused, never approximated: counting locally
        // what should be one limit for the whole cluster lets N times the traffic through.
        other => {
            return Err(CompileError::field(
                "policy",
                format!(
                    "policy '{other}' counts in Kong's database, which Gantry's nodes do not share: use 'local' or 'redis'"
                ),
            ))
        }
    };
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
        id: at.id.to_string(),
        key_prefix: format!(
            "ratelimit:{}:{}:",
            at.route.unwrap_or(NIL_UUID),
            at.service.unwrap_or(NIL_UUID)
        ),
        limits,
        limit_values,
        names,
        limit_by: str_of("limit_by").unwrap_or_else(|| "consumer".into()),
        scoped_group: at.consumer_group.map(str::to_string),
        header_name: str_of("header_name").map(|h| h.to_ascii_lowercase()),
        path: str_of("path"),
        hide_client_headers: c
            .get("hide_client_headers")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        fault_tolerant: c
            .get("fault_tolerant")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        error_code: c.get("error_code").and_then(Value::as_f64).unwrap_or(429.0) as u16,
        error_message: str_of("error_message").unwrap_or_else(|| "API rate limit exceeded".into()),
        policy,
        logged: AtomicI64::new(0),
    }))
}

impl RateLimiting {
    /// Kong's identifiers; each falls back to the client's address when absent.
    fn identifier<'c>(&'c self, ctx: &'c Ctx<'_>) -> Cow<'c, str> {
        let ip = || Cow::Owned(ctx.client_ip.to_string());
        match self.limit_by.as_str() {
            "consumer" => ctx
                .consumer
                .as_ref()
                .map(|c| Cow::Borrowed(c.id.as_str()))
                .or(ctx.credential.as_deref().map(Cow::Borrowed))
                .unwrap_or_else(ip),
            "credential" => ctx
                .credential
                .as_deref()
                .map(Cow::Borrowed)
                .unwrap_or_else(ip),
            "service" => ctx.service_id.map(Cow::Borrowed).unwrap_or_else(ip),
            // Every consumer of a group shares one count: the group the instance is scoped
            // to, else the consumer's first group by name.
            "consumer-group" => match (&self.scoped_group, &ctx.consumer) {
                (Some(g), Some(_)) => Cow::Borrowed(g.as_str()),
                (None, Some(c)) => ctx
                    .identities
                    .consumer_groups(&c.id)
                    .first()
                    .map(|g| Cow::Borrowed(g.id.as_str()))
                    .unwrap_or_else(ip),
                _ => ip(),
            },
            "header" => self
                .header_name
                .as_ref()
                .and_then(|h| ctx.req.headers.get(h.as_str()))
                .and_then(|v| v.to_str().ok())
                .map(Cow::Borrowed)
                .unwrap_or_else(ip),
            // Only the configured path has a limit of its own.
            "path" if self.path.as_deref() == Some(ctx.req.uri.path()) => {
                Cow::Borrowed(ctx.req.uri.path())
            }
            _ => ip(),
        }
    }

    /// Kong's key of one counter in Redis.
    fn redis_key(&self, ident: &str, pi: usize, now: i64) -> String {
        format!(
            "{}{ident}:{}:{}",
            self.key_prefix,
            window_start(pi, now) * 1000,
            PERIODS[pi].0
        )
    }

    /// The use of each limit before this request, from Redis; each counter is incremented.
    async fn redis_usage(
        &self,
        pool: &Pool,
        target: &Target,
        ident: &str,
        now: i64,
    ) -> Result<Vec<(usize, u64)>, RedisError> {
        let mut pipe = redis::pipe();
        for &(pi, _) in &self.limits {
            pipe.cmd("EVAL")
                .arg(INCR)
                .arg(1)
                .arg(self.redis_key(ident, pi, now))
                .arg(PERIODS[pi].2);
        }
        let used: Vec<i64> = pool.query(target, &pipe).await?;
        Ok(self
            .limits
            .iter()
            .zip(used)
            .map(|(&(pi, _), u)| (pi, u.max(0) as u64))
            .collect())
    }

    /// The use of each limit with a `sync_rate`: this node's counts since the last sync on
    /// what Redis said then (Kong's algorithm); Redis is asked for a counter it has not seen
    /// in this window.
    async fn synced_usage(
        &self,
        pool: &Pool,
        target: &Target,
        pending: &Pending,
        ident: &str,
        now: i64,
    ) -> Result<Vec<(usize, u64)>, RedisError> {
        let keys: Vec<(usize, String)> = self
            .limits
            .iter()
            .map(|&(pi, _)| (pi, self.redis_key(ident, pi, now)))
            .collect();
        let mut out = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        {
            let mut map = pending.counters.lock().unwrap_or_else(|e| e.into_inner());
            for (pi, key) in &keys {
                let expire_at = window_start(*pi, now) + PERIODS[*pi].2;
                match map.get_mut(key) {
                    Some(c) if c.expire_at > now => out.push((*pi, (c.usage + c.delta).max(0))),
                    Some(c) => {
                        *c = Cached {
                            usage: 0,
                            expire_at,
                            delta: 0,
                        };
                        out.push((*pi, 0));
                    }
                    None => missing.push((*pi, key.clone())),
                }
            }
        }
        if !missing.is_empty() {
            let mut pipe = redis::pipe();
            for (pi, key) in &missing {
                pipe.cmd("EVAL")
                    .arg(INCR)
                    .arg(1)
                    .arg(key)
                    .arg(PERIODS[*pi].2);
            }
            let used: Vec<i64> = pool.query(target, &pipe).await?;
            let mut map = pending.counters.lock().unwrap_or_else(|e| e.into_inner());
            for ((pi, key), u) in missing.into_iter().zip(used) {
                // Redis counted this request already: the node's count of it is taken back
                // (-1), so the sync does not add it twice.
                map.insert(
                    key,
                    Cached {
                        usage: u + 1,
                        expire_at: window_start(pi, now) + PERIODS[pi].2,
                        delta: -1,
                    },
                );
                out.push((pi, u.max(0)));
            }
        }
        Ok(out.into_iter().map(|(pi, u)| (pi, u as u64)).collect())
    }

    /// Count an allowed request locally, and schedule the sync that adds it to Redis.
    fn count_pending(
        &self,
        pool: &Arc<Pool>,
        target: &Target,
        every: Duration,
        pending: &Arc<Pending>,
        ident: &str,
        now: i64,
    ) {
        {
            let mut map = pending.counters.lock().unwrap_or_else(|e| e.into_inner());
            for &(pi, _) in &self.limits {
                let key = self.redis_key(ident, pi, now);
                let c = map.entry(key).or_insert(Cached {
                    usage: 0,
                    expire_at: window_start(pi, now) + PERIODS[pi].2,
                    delta: 0,
                });
                c.delta += 1;
            }
        }
        if pending.scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let (pool, target, pending) = (pool.clone(), target.clone(), pending.clone());
        tokio::spawn(async move {
            let timer = gantry_model::timers::register("rate-limiting:sync");
            tokio::time::sleep(every).await;
            let _run = timer.run();
            pending.scheduled.store(false, Ordering::Release);
            let deltas: Vec<(String, i64, i64)> = {
                let mut map = pending.counters.lock().unwrap_or_else(|e| e.into_inner());
                // What was counted goes to Redis; every counter is read again afterwards.
                map.drain()
                    .filter(|(_, c)| c.delta > 0)
                    .map(|(k, c)| (k, c.delta, c.expire_at))
                    .collect()
            };
            if deltas.is_empty() {
                return;
            }
            let mut pipe = redis::pipe();
            for (key, delta, expire_at) in &deltas {
                pipe.cmd("EVAL")
                    .arg(ADD)
                    .arg(1)
                    .arg(key)
                    .arg(delta)
                    .arg(expire_at)
                    .ignore();
            }
            if let Err(e) = pool.query::<()>(&target, &pipe).await {
                tracing::error!(plugin = "rate-limiting", error = %e, "failed to sync counters to Redis");
            }
        });
    }

    /// Log a Redis failure, at most once a second per instance.
    fn report(&self, e: &RedisError, now: i64) {
        if self.logged.swap(now, Ordering::Relaxed) != now {
            tracing::error!(plugin = "rate-limiting", id = %self.id, error = %e, "failed to get usage");
        }
    }

    async fn decide(&self, ctx: &mut Ctx<'_>) -> Option<Response<ProxyBody>> {
        let now = gantry_model::unix_now();
        let ident = self.identifier(ctx).into_owned();
        let used = match &self.policy {
            Policy::Local(counters) => {
                let (used, _) = counters.hit(&self.id, &ident, &self.limits, now);
                Ok(used)
            }
            Policy::Redis {
                pool,
                target,
                sync: None,
            } => self.redis_usage(pool, target, &ident, now).await,
            Policy::Redis {
                pool,
                target,
                sync: Some((_, pending)),
            } => self.synced_usage(pool, target, pending, &ident, now).await,
        };
        let used = match used {
            Ok(u) => u,
            Err(e) => {
                self.report(&e, now);
                if self.fault_tolerant {
                    return None;
                }
                return Some(error(500, "An unexpected error occurred"));
            }
        };
        let refusal = self.respond(ctx, &used, now);
        if refusal.is_none() {
            if let Policy::Redis {
                pool,
                target,
                sync: Some((every, pending)),
            } = &self.policy
            {
                self.count_pending(pool, target, *every, pending, &ident, now);
            }
        }
        refusal
    }

    /// Kong's headers and decision from the use of each limit before this request.
    fn respond(
        &self,
        ctx: &mut Ctx<'_>,
        used: &[(usize, u64)],
        now: i64,
    ) -> Option<Response<ProxyBody>> {
        let limit_of = |pi: usize| {
            self.limits
                .iter()
                .find(|(p, _)| *p == pi)
                .map_or(0, |(_, l)| *l)
        };
        // The limit reached, if any (the longest, when several are).
        let stop = used
            .iter()
            .filter(|(pi, u)| limit_of(*pi) as i64 - *u as i64 <= 0)
            .map(|(pi, _)| *pi)
            .max();
        let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::with_capacity(2 * used.len() + 4);
        if !self.hide_client_headers {
            // `(remaining, window, period index)` of the limit closest to exhaustion: it gives
            // the RateLimit-* headers (the longer window on a tie).
            let mut tightest: Option<(i64, i64, usize)> = None;
            for &(pi, u) in used {
                let mut remaining = limit_of(pi) as i64 - u as i64;
                if stop.is_none() || stop == Some(pi) {
                    remaining -= 1;
                }
                let remaining = remaining.max(0);
                let window = PERIODS[pi].2;
                if tightest.is_none_or(|(r, w, _)| remaining < r || (remaining == r && window > w))
                {
                    tightest = Some((remaining, window, pi));
                }
                let (limit_name, remaining_name) = &self.names[pi];
                headers.push((limit_name.clone(), self.limit_values[pi].clone()));
                headers.push((remaining_name.clone(), HeaderValue::from(remaining)));
            }
            if let Some((remaining, _, pi)) = tightest {
                let reset = HeaderValue::from(reset_in(pi, now));
                headers.push((names::RATELIMIT_LIMIT, self.limit_values[pi].clone()));
                headers.push((names::RATELIMIT_REMAINING, HeaderValue::from(remaining)));
                headers.push((names::RATELIMIT_RESET, reset.clone()));
                if stop.is_some() {
                    headers.push((hyper::header::RETRY_AFTER, reset));
                }
            }
        }
        if stop.is_none() {
            ctx.response_headers.extend(headers);
            return None;
        }
        let mut r = error(self.error_code, &self.error_message);
        for (n, v) in headers {
            r.headers_mut().append(n, v);
        }
        Some(r)
    }
}

impl Plugin for RateLimiting {
    fn access<'a>(&'a self, ctx: &'a mut Ctx<'_>) -> Flow<'a> {
        match &self.policy {
            // Local counts never wait: decided here, without a boxed future.
            Policy::Local(counters) => {
                let now = gantry_model::unix_now();
                let used = {
                    let ident = self.identifier(ctx);
                    counters.hit(&self.id, &ident, &self.limits, now).0
                };
                self.respond(ctx, &used, now).into()
            }
            Policy::Redis { .. } => Flow::later(self.decide(ctx)),
        }
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
        assert_eq!(u, vec![(1, 0), (2, 0)]);
        assert!(c.hit("p", "ip", &limits, 121).1);
        let (u, ok) = c.hit("p", "ip", &limits, 122);
        assert!(!ok);
        assert_eq!(u, vec![(1, 2), (2, 2)]);
        // A denied request is not counted.
        assert_eq!(c.hit("p", "ip", &limits, 123).0, vec![(1, 2), (2, 2)]);
        // Another identifier, and the next window, start again.
        assert!(c.hit("p", "other", &limits, 122).1);
        assert!(c.hit("p", "ip", &limits, 180).1);
    }

    #[test]
    fn months_and_years_are_calendar_windows() {
        // 2024-03-15T10:20:30Z.
        let now = 1_710_498_030;
        assert_eq!(window_start(1, now), now - 30);
        assert_eq!(window_start(3, now), 1_710_460_800);
        assert_eq!(window_start(4, now), 1_709_251_200, "2024-03-01");
        assert_eq!(window_start(5, now), 1_704_067_200, "2024-01-01");
        assert_eq!(reset_in(1, now), 30);
        assert_eq!(reset_in(0, now), 1);
    }
}
