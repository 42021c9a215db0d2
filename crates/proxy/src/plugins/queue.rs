//! Kong's plugin queues (`kong.tools.queue`), for the plugins that send what they log
//! elsewhere (http-log): entries queued by the log phase without waiting, sent in batches by a
//! task of the queue's own, retried with exponential backoff, bounded in entries and bytes.
//!
//! As in Kong: a queue is named (http-log names it by its endpoint and legacy parameters, so
//! instances that log to the same place share one); it is made when the first entry comes, with
//! the parameters of that entry's plugin, and goes away once it is empty; the handler that sends a
//! batch is always the latest configuration seen. A batch is sent once `max_batch_size` entries
//! are waiting or `max_coalescing_delay` went by since its first entry; a failed batch is tried
//! again after `initial_retry_delay`, doubled each time up to `max_retry_delay`, until
//! `max_retry_time` has passed since its first try. A full queue drops its oldest entries. Nothing
//! here ever makes a request wait: enqueueing takes a lock for a few instructions.
//!
//! Queues outlive configurations (they live in the proxy's [`Shared`](super::Shared)), so a
//! reload loses nothing queued. What is dropped or lost is counted, by plugin and reason, in the
//! status listener's `/metrics` (`gantry_plugin_queue_dropped_total`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::Notify;

use gantry_model::plugins::CompileError;
use gantry_model::schema::*;

use super::BoxFuture;

/// Shorter than this, a coalescing delay is not waited for (Kong's `COALESCE_MIN_TIME`).
const COALESCE_MIN: Duration = Duration::from_millis(50);

/// Kong's `queue` record (`typedefs.queue`), with its defaults and bounds.
pub fn schema() -> Field {
    let between = |lo: f64, hi: f64| Ty::Num {
        min: Some(lo),
        max: Some(hi),
        gt: None,
    };
    Field::new(
        "queue",
        record(vec![
            Field::new("max_batch_size", int(1, 1_000_000))
                .req()
                .def(json!(1)),
            Field::new("max_coalescing_delay", between(0.0, 3600.0))
                .req()
                .def(json!(1)),
            Field::new("max_entries", int(1, 1_000_000))
                .req()
                .def(json!(10000)),
            Field::new("max_bytes", integer()),
            Field::new("max_retry_time", number()).req().def(json!(60)),
            Field::new("initial_retry_delay", between(0.001, 1_000_000.0))
                .req()
                .def(json!(0.01)),
            Field::new("max_retry_delay", between(0.001, 1_000_000.0))
                .req()
                .def(json!(60)),
            Field::new("concurrency_limit", int_one_of(&[-1, 1]))
                .req()
                .def(json!(1)),
        ]),
    )
}

/// A queue's parameters, read from a validated `queue` record.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub max_batch_size: usize,
    pub max_coalescing_delay: Duration,
    pub max_entries: usize,
    pub max_bytes: Option<usize>,
    /// Negative: a failed batch is not tried again.
    pub max_retry_time: f64,
    pub initial_retry_delay: Duration,
    pub max_retry_delay: Duration,
    /// Without a limit (Kong's `-1`), each entry is sent at once by a task of its own.
    pub unlimited: bool,
}

impl Params {
    pub fn from_config(q: Option<&Value>) -> Result<Params, CompileError> {
        let empty = json!({});
        let q = q.filter(|v| v.is_object()).unwrap_or(&empty);
        let n = |k: &str, d: f64| q.get(k).and_then(Value::as_f64).unwrap_or(d);
        let secs = |k: &str, d: f64| -> Result<Duration, CompileError> {
            Duration::try_from_secs_f64(n(k, d))
                .map_err(|_| CompileError::field(&format!("queue.{k}"), "not a duration"))
        };
        let max_bytes = match q.get("max_bytes").and_then(Value::as_i64) {
            Some(b) if b < 1 => {
                return Err(CompileError::field(
                    "queue.max_bytes",
                    "must be a positive number of bytes",
                ))
            }
            b => b.map(|b| b as usize),
        };
        Ok(Params {
            max_batch_size: n("max_batch_size", 1.0).max(1.0) as usize,
            max_coalescing_delay: secs("max_coalescing_delay", 1.0)?,
            max_entries: n("max_entries", 10000.0).max(1.0) as usize,
            max_bytes,
            max_retry_time: n("max_retry_time", 60.0),
            initial_retry_delay: secs("initial_retry_delay", 0.01)?,
            max_retry_delay: secs("max_retry_delay", 60.0)?,
            unlimited: q.get("concurrency_limit").and_then(Value::as_i64) == Some(-1),
        })
    }
}

/// Why a handler could not deliver a batch.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SendFailed(pub String);

/// What sends a batch: a plugin's configuration.
pub trait Handler: Send + Sync + 'static {
    fn send(self: Arc<Self>, batch: Arc<[Bytes]>) -> BoxFuture<'static, Result<(), SendFailed>>;
}

#[derive(Default)]
struct Waiting {
    entries: VecDeque<Bytes>,
    bytes: usize,
    /// Entries were dropped since the queue last sent (logged once).
    dropping: bool,
}

struct Queue {
    name: String,
    plugin: &'static str,
    params: Params,
    handler: Mutex<Arc<dyn Handler>>,
    waiting: Mutex<Waiting>,
    ready: Notify,
}

/// Why entries were dropped, as the metric labels them.
#[derive(Clone, Copy)]
enum Dropped {
    /// The queue held `max_entries` or `max_bytes`: the oldest went.
    Full,
    /// One entry was larger than `max_bytes`.
    TooLarge,
    /// A batch failed until `max_retry_time` passed.
    RetriesExhausted,
}

const REASONS: [&str; 3] = ["full", "too_large", "retries_exhausted"];

/// Every queue of the node, by name, and what they dropped.
#[derive(Default)]
pub struct Queues {
    queues: Mutex<HashMap<String, Arc<Queue>>>,
    /// By plugin name, then [`Dropped`].
    dropped: Mutex<HashMap<&'static str, [u64; 3]>>,
    sent: AtomicU64,
}

impl Queues {
    fn count(&self, plugin: &'static str, why: Dropped, n: usize) {
        if let Ok(mut d) = self.dropped.lock() {
            d.entry(plugin).or_default()[why as usize] += n as u64;
        }
    }

    /// Queue `entry` on the queue `name`, made with `params` if it is not there; `handler`
    /// sends it. Never waits. Outside a tokio runtime (nothing could send it) the entry is
    /// dropped and counted.
    pub fn enqueue(
        self: &Arc<Self>,
        plugin: &'static str,
        name: &str,
        params: &Params,
        handler: &Arc<dyn Handler>,
        entry: Bytes,
    ) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.count(plugin, Dropped::Full, 1);
            return;
        };
        if params.unlimited {
            let (h, queues) = (handler.clone(), self.clone());
            let label = format!("{plugin} {name}");
            let retry = params.clone();
            rt.spawn(async move {
                if !deliver(&label, &retry, &h, Arc::from([entry])).await {
                    queues.count(plugin, Dropped::RetriesExhausted, 1);
                }
            });
            return;
        }
        if params.max_bytes.is_some_and(|max| entry.len() > max) {
            tracing::error!(
                plugin,
                queue = name,
                "string to be queued is longer ({} bytes) than the queue's max_bytes ({} bytes)",
                entry.len(),
                params.max_bytes.unwrap_or_default()
            );
            self.count(plugin, Dropped::TooLarge, 1);
            return;
        }
        let Ok(mut queues) = self.queues.lock() else {
            return;
        };
        let q = match queues.get(name) {
            Some(q) => {
                if let Ok(mut h) = q.handler.lock() {
                    if !Arc::ptr_eq(&h, handler) {
                        *h = handler.clone();
                    }
                }
                q.clone()
            }
            None => {
                let q = Arc::new(Queue {
                    name: name.to_string(),
                    plugin,
                    params: params.clone(),
                    handler: Mutex::new(handler.clone()),
                    waiting: Mutex::new(Waiting::default()),
                    ready: Notify::new(),
                });
                queues.insert(name.to_string(), q.clone());
                rt.spawn(run(self.clone(), q.clone()));
                q
            }
        };
        let Ok(mut w) = q.waiting.lock() else {
            return;
        };
        drop(queues);
        let mut dropped = 0;
        while w.entries.len() >= q.params.max_entries
            || q.params
                .max_bytes
                .is_some_and(|max| w.bytes + entry.len() > max)
        {
            let Some(old) = w.entries.pop_front() else {
                break;
            };
            w.bytes -= old.len();
            dropped += 1;
        }
        if dropped > 0 {
            if !w.dropping {
                tracing::error!(plugin, queue = %q.name, "queue full, dropping old entries until processing is successful again");
            }
            w.dropping = true;
            self.count(plugin, Dropped::Full, dropped);
        }
        w.bytes += entry.len();
        w.entries.push_back(entry);
        drop(w);
        q.ready.notify_one();
    }

    /// Entries waiting on every queue.
    fn waiting(&self) -> usize {
        self.queues.lock().map_or(0, |qs| {
            qs.values()
                .map(|q| q.waiting.lock().map_or(0, |w| w.entries.len()))
                .sum()
        })
    }
}

impl crate::server::MetricsSource for Queues {
    fn write(&self, out: &mut String) {
        out.push_str("# HELP gantry_plugin_queue_entries Log entries waiting in plugin queues.\n# TYPE gantry_plugin_queue_entries gauge\n");
        out.push_str(&format!("gantry_plugin_queue_entries {}\n", self.waiting()));
        out.push_str("# HELP gantry_plugin_queue_batches_sent_total Batches plugin queues delivered.\n# TYPE gantry_plugin_queue_batches_sent_total counter\n");
        out.push_str(&format!(
            "gantry_plugin_queue_batches_sent_total {}\n",
            self.sent.load(Ordering::Relaxed)
        ));
        out.push_str("# HELP gantry_plugin_queue_dropped_total Log entries plugin queues dropped: full (oldest dropped), too_large (over max_bytes), retries_exhausted (max_retry_time passed).\n# TYPE gantry_plugin_queue_dropped_total counter\n");
        if let Ok(d) = self.dropped.lock() {
            let mut plugins: Vec<_> = d.iter().collect();
            plugins.sort();
            for (plugin, counts) in plugins {
                for (reason, n) in REASONS.iter().zip(counts) {
                    out.push_str(&format!(
                        "gantry_plugin_queue_dropped_total{{plugin=\"{plugin}\",reason=\"{reason}\"}} {n}\n"
                    ));
                }
            }
        }
    }
}

/// A queue's task: batches sent one after another until the queue is empty, then it goes.
async fn run(queues: Arc<Queues>, q: Arc<Queue>) {
    let label = format!("{} {}", q.plugin, q.name);
    let timer = gantry_model::timers::register(format!("queue:{label}"));
    loop {
        // The first entry of a batch, or the queue's end once nothing waits.
        let first = loop {
            let notified = q.ready.notified();
            if let Some(e) = take(&q) {
                break e;
            }
            if tokio::time::timeout(Duration::from_secs(1), notified)
                .await
                .is_err()
            {
                // Idle: the queue goes, unless an entry came meanwhile (both locks, in the
                // order enqueue takes them).
                let Ok(mut all) = queues.queues.lock() else {
                    return;
                };
                let empty = q.waiting.lock().map_or(true, |w| w.entries.is_empty());
                if empty {
                    if all.get(&q.name).is_some_and(|x| Arc::ptr_eq(x, &q)) {
                        all.remove(&q.name);
                    }
                    return;
                }
            }
        };
        let started = Instant::now();
        let mut batch = vec![first];
        while batch.len() < q.params.max_batch_size {
            let left = q
                .params
                .max_coalescing_delay
                .saturating_sub(started.elapsed());
            if left < COALESCE_MIN {
                break;
            }
            let notified = q.ready.notified();
            if let Some(e) = take(&q) {
                batch.push(e);
                continue;
            }
            let _ = tokio::time::timeout(left.min(Duration::from_secs(1)), notified).await;
        }
        if let Ok(mut w) = q.waiting.lock() {
            if w.dropping {
                tracing::info!(queue = %label, "queue resumed processing");
                w.dropping = false;
            }
        }
        let n = batch.len();
        let handler: Option<Arc<dyn Handler>> = q.handler.lock().ok().map(|h| h.clone());
        let Some(handler) = handler else {
            return;
        };
        let mut run = timer.run();
        if deliver(&label, &q.params, &handler, Arc::from(batch)).await {
            queues.sent.fetch_add(1, Ordering::Relaxed);
        } else {
            run.failed(format!("{n} entries lost: max_retry_time exceeded"));
            queues.count(q.plugin, Dropped::RetriesExhausted, n);
        }
    }
}

fn take(q: &Queue) -> Option<Bytes> {
    let mut w = q.waiting.lock().ok()?;
    let e = w.entries.pop_front()?;
    w.bytes -= e.len();
    Some(e)
}

/// Send `batch`, trying again with backoff until `max_retry_time`; whether it went.
async fn deliver(label: &str, p: &Params, handler: &Arc<dyn Handler>, batch: Arc<[Bytes]>) -> bool {
    let started = Instant::now();
    let mut tries = 0i32;
    loop {
        match handler.clone().send(batch.clone()).await {
            Ok(()) => return true,
            Err(e) => {
                tracing::warn!(queue = %label, "handler could not process entries: {e}");
            }
        }
        if started.elapsed().as_secs_f64() > p.max_retry_time {
            tracing::error!(
                queue = %label,
                "could not send entries due to max_retry_time exceeded. {} queue entries were lost",
                batch.len()
            );
            return false;
        }
        let delay = p
            .initial_retry_delay
            .mul_f64(2f64.powi(tries))
            .min(p.max_retry_delay);
        tokio::time::sleep(delay).await;
        tries = tries.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Records batches; fails the first `fail` sends.
    struct Sink {
        batches: Mutex<Vec<Vec<Bytes>>>,
        fail: AtomicUsize,
    }

    impl Handler for Sink {
        fn send(
            self: Arc<Self>,
            batch: Arc<[Bytes]>,
        ) -> BoxFuture<'static, Result<(), SendFailed>> {
            let me = self;
            Box::pin(async move {
                if me
                    .fail
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |f| f.checked_sub(1))
                    .is_ok()
                {
                    return Err(SendFailed("down".into()));
                }
                me.batches.lock().unwrap().push(batch.to_vec());
                Ok(())
            })
        }
    }

    fn params(batch: usize, entries: usize) -> Params {
        Params {
            max_batch_size: batch,
            max_coalescing_delay: Duration::from_millis(200),
            max_entries: entries,
            max_bytes: None,
            max_retry_time: 5.0,
            initial_retry_delay: Duration::from_millis(5),
            max_retry_delay: Duration::from_millis(20),
            unlimited: false,
        }
    }

    async fn until(what: impl Fn() -> bool) {
        for _ in 0..500 {
            if what() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never happened");
    }

    #[tokio::test]
    async fn batches_coalesce_retry_and_drop_the_oldest() {
        let queues = Arc::new(Queues::default());
        let sink = Arc::new(Sink {
            batches: Mutex::default(),
            fail: AtomicUsize::new(2),
        });
        let h: Arc<dyn Handler> = sink.clone();
        for i in 0..3 {
            queues.enqueue("t", "q", &params(10, 100), &h, Bytes::from(format!("{i}")));
        }
        // Coalesced into one batch, sent on the third try.
        until(|| sink.batches.lock().unwrap().len() == 1).await;
        assert_eq!(
            sink.batches.lock().unwrap()[0],
            vec![Bytes::from("0"), Bytes::from("1"), Bytes::from("2")]
        );
        // A queue of two keeps the newest two while its sink fails.
        sink.fail.store(usize::MAX, Ordering::SeqCst);
        let small = params(1, 2);
        queues.enqueue("t", "small", &small, &h, Bytes::from("a"));
        tokio::time::sleep(Duration::from_millis(30)).await; // "a" is being retried
        for e in ["b", "c", "d"] {
            queues.enqueue("t", "small", &small, &h, Bytes::from(e));
        }
        let mut m = String::new();
        crate::server::MetricsSource::write(&*queues, &mut m);
        assert!(
            m.contains("gantry_plugin_queue_dropped_total{plugin=\"t\",reason=\"full\"} 1"),
            "{m}"
        );
        sink.fail.store(0, Ordering::SeqCst);
        until(|| sink.batches.lock().unwrap().len() == 4).await;
        let sent: Vec<Bytes> = sink.batches.lock().unwrap()[1..]
            .iter()
            .flatten()
            .cloned()
            .collect();
        assert_eq!(
            sent,
            vec![Bytes::from("a"), Bytes::from("c"), Bytes::from("d")]
        );
        // Idle queues go away.
        until(|| queues.queues.lock().unwrap().is_empty()).await;
    }

    #[tokio::test]
    async fn a_batch_is_lost_after_max_retry_time() {
        let queues = Arc::new(Queues::default());
        let sink = Arc::new(Sink {
            batches: Mutex::default(),
            fail: AtomicUsize::new(usize::MAX),
        });
        let h: Arc<dyn Handler> = sink.clone();
        let mut p = params(1, 10);
        p.max_retry_time = 0.05;
        queues.enqueue("t", "q", &p, &h, Bytes::from("x"));
        until(|| {
            let mut m = String::new();
            crate::server::MetricsSource::write(&*queues, &mut m);
            m.contains("reason=\"retries_exhausted\"} 1")
        })
        .await;
        assert!(sink.batches.lock().unwrap().is_empty());
    }
}
