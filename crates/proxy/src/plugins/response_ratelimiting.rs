//! response-ratelimiting: limits counted by what the upstream says a response cost, as Kong
//! 3.9's plugin. The upstream names the limits a response uses in `header_name`
//! (`X-Kong-Limit: videos=1, images=3`); each named limit counts that many per period.
//!
//! - Access: the usage of every limit is read; `X-RateLimit-Remaining-<limit>` (the least
//!   left over its periods) goes to the client; with `block_on_first_violation`, a request
//!   meets Kong's 429 `API rate limit exceeded for '<limit>'` once any limit is spent.
//! - Response: `X-RateLimit-Limit-<limit>-<period>` and `X-RateLimit-Remaining-<limit>-<period>`
//!   (unless `hide_client_headers`), the upstream's header removed; a response that uses a
//!   limit already spent becomes a 429 without a body, and is not counted.
//! - Log: the uses are counted, in every period of each limit named.
//!
//! Counters are the node's own (`policy = local`) or Redis's under Kong's keys
//! (`response-ratelimit:<route>:<service>:<identifier>:<window ms>:<limit>:<period>`), read in
//! access and added to in the log phase; with Redis unreachable, `fault_tolerant` lets requests
//! through uncounted and otherwise answers 500. `cluster` is refused, as for rate-limiting: a
//! data plane has no database to count in.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use serde_json::{json, Value};

use gantry_model::plugins::*;
use gantry_model::schema::*;

use super::rate_limiting::{window_start, NIL_UUID, PERIODS};
use super::{BodyFilter, BoxFuture, Ctx, Descriptor, Flow, Instance, Plugin, Shared};
use crate::redis::{Pool, Target};

pub static DESCRIPTOR: Descriptor = Descriptor::new(schema, build);

const LIMITS: [&str; 6] = ["second", "minute", "hour", "day", "month", "year"];

fn schema() -> PluginSchema {
    let periods = LIMITS
        .iter()
        .map(|p| Field::new(p, number_gt(0.0)))
        .collect();
    PluginSchema::new(
        "response-ratelimiting",
        900,
        vec![
            Field::new("header_name", string()).def(json!("x-kong-limit")),
            Field::new("limit_by", one_of(&["consumer", "credential", "ip"]))
                .def(json!("consumer")),
            Field::new("policy", one_of(&["local", "cluster", "redis"])).def(json!("local")),
            Field::new("fault_tolerant", boolean())
                .req()
                .def(json!(true)),
            Field::new("redis", redis()),
            Field::new("block_on_first_violation", boolean())
                .req()
                .def(json!(false)),
            Field::new("hide_client_headers", boolean())
                .req()
                .def(json!(false)),
            Field::new("limits", map(record(periods))).req(),
        ],
    )
    .shorthands(REDIS_SHORTHANDS)
    .partials(&[("redis-ce", "redis")])
    .checks(|c, e| {
        // Kong's check of each limit: a longer period never allows less.
        let Some(limits) = c.get("limits").and_then(Value::as_object) else {
            return;
        };
        if limits.is_empty() {
            e.add("limits", "length must be at least 1");
        }
        for (name, l) in limits {
            let set: Vec<(&str, f64)> = LIMITS
                .iter()
                .filter_map(|p| l.get(*p).and_then(Value::as_f64).map(|v| (*p, v)))
                .collect();
            let order = super::rate_limiting::longer_below_shorter(&set, "the");
            if let Some(m) = order {
                e.add("limits", format!("{name}: {m}"));
            }
        }
    })
}

struct ResponseRateLimiting {
    id: String,
    header: HeaderName,
    limit_by: String,
    block_on_first_violation: bool,
    hide_client_headers: bool,
    /// Each limit's name and its periods `(period index, limit)`.
    limits: Vec<(String, Vec<(usize, u64)>)>,
    store: Store,
    fault_tolerant: bool,
}

enum Store {
    Local(Arc<Counters>),
    /// Kong's key prefix: `response-ratelimit:<route id>:<service id>:`.
    Redis {
        pool: Arc<Pool>,
        target: Target,
        prefix: String,
    },
}

fn build(at: &Instance, c: &Value, shared: &Shared) -> Result<Arc<dyn Plugin>, CompileError> {
    let store = match c.get("policy").and_then(Value::as_str).unwrap_or("local") {
        "local" => Store::Local(shared.get::<Counters>()),
        "redis" => Store::Redis {
            pool: shared.get::<Pool>(),
            target: Target::from_config(&c["redis"])?,
            prefix: format!(
                "response-ratelimit:{}:{}:",
                at.route.unwrap_or(NIL_UUID),
                at.service.unwrap_or(NIL_UUID)
            ),
        },
        _ => {
            return Err(CompileError::field(
                "policy",
                "'cluster' counts in the database, which a data plane does not have: use 'local' or 'redis'",
            ))
        }
    };
    let header = c
        .get("header_name")
        .and_then(Value::as_str)
        .unwrap_or("x-kong-limit")
        .to_ascii_lowercase();
    let header = HeaderName::from_bytes(header.as_bytes())
        .map_err(|_| CompileError::field("header_name", "not a header name"))?;
    let mut limits: Vec<(String, Vec<(usize, u64)>)> = c
        .get("limits")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(name, l)| {
                    let periods = LIMITS
                        .iter()
                        .enumerate()
                        .filter_map(|(pi, p)| {
                            l.get(*p).and_then(Value::as_f64).map(|v| (pi, v as u64))
                        })
                        .collect();
                    (name.clone(), periods)
                })
                .collect()
        })
        .unwrap_or_default();
    limits.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Arc::new(ResponseRateLimiting {
        id: at.id.to_string(),
        header,
        limit_by: c
            .get("limit_by")
            .and_then(Value::as_str)
            .unwrap_or("consumer")
            .to_string(),
        block_on_first_violation: super::conf_bool(c, "block_on_first_violation", false),
        hide_client_headers: super::conf_bool(c, "hide_client_headers", false),
        limits,
        store,
        fault_tolerant: super::conf_bool(c, "fault_tolerant", true),
    }))
}

/// `(plugin id, identifier, limit name, period index, window start)`.
type Key = (String, String, String, usize, i64);

/// The uses counted, by [`Key`].
#[derive(Default)]
pub struct Counters(Mutex<HashMap<Key, u64>>);

impl Counters {
    fn used(&self, key: &Key) -> u64 {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key).copied().unwrap_or(0)
    }

    fn add(&self, keys: Vec<Key>, n: u64, now: i64) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 100_000 {
            map.retain(|(_, _, _, pi, start), _| *start + PERIODS[*pi].2 > now);
        }
        for k in keys {
            *map.entry(k).or_insert(0) += n;
        }
    }
}

/// What access learnt, for the response phases: `(limit, period index, limit, left)`.
#[derive(Clone)]
struct Usage {
    plugin: String,
    identifier: String,
    now: i64,
    left: Vec<(String, usize, u64, u64)>,
}

/// The uses a response counts, for the log phase to add in Redis: `(key, n, seconds)`.
#[derive(Clone)]
struct Uses(Vec<(String, u64, i64)>);

/// The response is refused: its body is dropped.
#[derive(Clone, Copy)]
struct Refused;

struct Drop;

impl BodyFilter for Drop {
    fn filter(&mut self, _chunk: Bytes, _last: bool) -> Bytes {
        Bytes::new()
    }
}

impl ResponseRateLimiting {
    fn identifier(&self, ctx: &Ctx<'_>) -> String {
        let by = match self.limit_by.as_str() {
            "consumer" => ctx
                .consumer
                .as_ref()
                .map(|c| c.id.clone())
                .or_else(|| ctx.credential.clone()),
            "credential" => ctx.credential.clone(),
            _ => None,
        };
        by.unwrap_or_else(|| ctx.client_ip.to_string())
    }

    fn key(&self, u: &Usage, name: &str, pi: usize) -> Key {
        (
            u.plugin.clone(),
            u.identifier.clone(),
            name.to_string(),
            pi,
            window_start(pi, u.now),
        )
    }

    /// The upstream's uses of each configured limit (`name=n, ...`).
    fn increments(&self, response: &hyper::http::response::Parts) -> HashMap<String, u64> {
        let mut out = HashMap::new();
        for v in response.headers.get_all(&self.header) {
            let Ok(v) = v.to_str() else { continue };
            for part in v.split(',') {
                if let Some((name, n)) = part.split_once('=') {
                    let name = name.trim();
                    if self.limits.iter().any(|(l, _)| l == name) {
                        if let Ok(n) = n.trim().parse::<f64>() {
                            out.insert(name.to_string(), n.max(0.0) as u64);
                        }
                    }
                }
            }
        }
        out
    }
}

impl ResponseRateLimiting {
    fn redis_key(&self, prefix: &str, u: &Usage, name: &str, pi: usize) -> String {
        format!(
            "{prefix}{}:{}:{name}:{}",
            u.identifier,
            window_start(pi, u.now) * 1000,
            PERIODS[pi].0
        )
    }

    /// Each limit's use so far, in the order of `limits` and their periods.
    async fn usage(&self, u: &Usage) -> Result<Vec<u64>, crate::redis::RedisError> {
        match &self.store {
            Store::Local(counters) => Ok(self
                .limits
                .iter()
                .flat_map(|(name, periods)| periods.iter().map(move |&(pi, _)| (name, pi)))
                .map(|(name, pi)| counters.used(&self.key(u, name, pi)))
                .collect()),
            Store::Redis {
                pool,
                target,
                prefix,
            } => {
                let mut pipe = redis::pipe();
                for (name, periods) in &self.limits {
                    for &(pi, _) in periods {
                        pipe.cmd("GET").arg(self.redis_key(prefix, u, name, pi));
                    }
                }
                let got: Vec<Option<i64>> = pool.query(target, &pipe).await?;
                Ok(got
                    .into_iter()
                    .map(|v| v.unwrap_or(0).max(0) as u64)
                    .collect())
            }
        }
    }

    async fn decide(&self, ctx: &mut Ctx<'_>) -> Option<hyper::Response<crate::server::ProxyBody>> {
        let mut u = Usage {
            plugin: self.id.clone(),
            identifier: self.identifier(ctx),
            now: gantry_model::unix_now(),
            left: Vec::new(),
        };
        let used = match self.usage(&u).await {
            Ok(used) => used,
            Err(e) => {
                tracing::error!(error = %e, "response-ratelimiting cannot read its counters");
                if self.fault_tolerant {
                    return None;
                }
                return Some(super::error(500, "An unexpected error occurred"));
            }
        };
        let mut used = used.into_iter();
        for (name, periods) in &self.limits {
            let mut least: Option<u64> = None;
            for &(pi, limit) in periods {
                let left = limit.saturating_sub(used.next().unwrap_or(0));
                if self.block_on_first_violation && left == 0 {
                    return Some(super::error(
                        429,
                        &format!("API rate limit exceeded for '{name}'"),
                    ));
                }
                least = Some(least.map_or(left, |l| l.min(left)));
                u.left.push((name.clone(), pi, limit, left));
            }
            if let (Some(l), false) = (least, self.hide_client_headers) {
                if let Ok(h) =
                    HeaderName::from_bytes(format!("x-ratelimit-remaining-{name}").as_bytes())
                {
                    ctx.response_headers.push((h, HeaderValue::from(l)));
                }
            }
        }
        ctx.state.insert(u);
        None
    }
}

impl Plugin for ResponseRateLimiting {
    fn access<'a>(&'a self, ctx: &'a mut Ctx<'_>) -> Flow<'a> {
        Flow::later(self.decide(ctx))
    }

    fn header_filter_with(
        &self,
        response: &mut hyper::http::response::Parts,
        state: &mut hyper::http::Extensions,
    ) {
        let increments = self.increments(response);
        response.headers.remove(&self.header);
        let Some(u) = state.get::<Usage>() else {
            return;
        };
        let mut stop = false;
        for (name, pi, limit, left) in &u.left {
            let n = increments.get(name).copied().unwrap_or(0);
            if !self.hide_client_headers {
                let period = PERIODS[*pi].0;
                let pairs = [
                    (format!("x-ratelimit-limit-{name}-{period}"), *limit),
                    (
                        format!("x-ratelimit-remaining-{name}-{period}"),
                        left.saturating_sub(n),
                    ),
                ];
                for (h, v) in pairs {
                    if let Ok(h) = HeaderName::from_bytes(h.as_bytes()) {
                        response.headers.insert(h, HeaderValue::from(v));
                    }
                }
            }
            if n > 0 && *left == 0 {
                stop = true;
            }
        }
        if stop {
            response.status = hyper::StatusCode::TOO_MANY_REQUESTS;
            response.headers.remove(hyper::header::CONTENT_LENGTH);
            response.headers.remove(hyper::header::CONTENT_TYPE);
            response.extensions.insert(Refused);
            return;
        }
        // Counted now: the response goes with these uses.
        let keys: Vec<(String, u64, Vec<_>)> = self
            .limits
            .iter()
            .filter_map(|(name, periods)| {
                let n = increments.get(name).copied().filter(|n| *n > 0)?;
                let keys = periods
                    .iter()
                    .map(|&(pi, _)| self.key(u, name, pi))
                    .collect();
                Some((name.clone(), n, keys))
            })
            .collect();
        match &self.store {
            Store::Local(counters) => {
                for (_, n, keys) in keys {
                    counters.add(keys, n, u.now);
                }
            }
            Store::Redis { prefix, .. } => {
                let uses = keys
                    .iter()
                    .flat_map(|(name, n, ks)| {
                        ks.iter().map(move |k| {
                            let key = self.redis_key(prefix, u, name, k.3);
                            (key, *n, PERIODS[k.3].2)
                        })
                    })
                    .collect();
                state.insert(Uses(uses));
            }
        }
    }

    fn logs(&self) -> bool {
        matches!(self.store, Store::Redis { .. })
    }

    fn log(&self, entry: &crate::server::RequestLog<'_>) -> Option<BoxFuture<'static, ()>> {
        let Store::Redis { pool, target, .. } = &self.store else {
            return None;
        };
        let uses = entry.state.get::<Uses>()?.0.clone();
        if uses.is_empty() {
            return None;
        }
        let (pool, target) = (pool.clone(), target.clone());
        Some(Box::pin(async move {
            let mut pipe = redis::pipe();
            for (key, n, secs) in &uses {
                pipe.cmd("INCRBY").arg(key).arg(*n).ignore();
                pipe.cmd("EXPIRE").arg(key).arg(*secs).ignore();
            }
            if let Err(e) = pool.query::<()>(&target, &pipe).await {
                tracing::error!(error = %e, "response-ratelimiting cannot count in Redis");
            }
        }))
    }

    fn body_filter(&self, response: &hyper::http::response::Parts) -> Option<Box<dyn BodyFilter>> {
        response
            .extensions
            .get::<Refused>()
            .map(|_| Box::new(Drop) as Box<dyn BodyFilter>)
    }
}
