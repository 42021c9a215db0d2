//! The node's background timers, as Kong's `/timers` reports its own (lua-resty-timer-ng's
//! statistics): each periodic task of the node (health checks, queue flushes, analytics, the
//! data plane's ping, sweeps) registers under a name while it exists, and marks each run, so
//! that `/timers` shows what is waiting, what is running, how often each ran and how long a run
//! took. Nothing here is on the request path; a run takes one short lock at its start and end.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use serde_json::{json, Value};

/// One timer's statistics.
#[derive(Debug, Default, Clone)]
struct Entry {
    running: bool,
    runs: u64,
    /// Runs that finished (a run that is going has not).
    finish: u64,
    /// Elapsed times of finished runs, in milliseconds: Welford's running mean and variance.
    min: f64,
    max: f64,
    mean: f64,
    m2: f64,
    last_err: String,
}

#[derive(Default)]
struct Registry {
    timers: Mutex<BTreeMap<String, (u64, Entry)>>,
    /// Runs of every timer, including those gone.
    runs: AtomicU64,
    /// Registrations, to tell two timers of one name apart.
    serial: AtomicU64,
}

static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::default);

/// A registered timer: it shows in `/timers` until dropped.
#[derive(Debug)]
pub struct Timer {
    name: Arc<str>,
    serial: u64,
}

/// Register a timer named `name` (a later one of the same name replaces it in the report).
pub fn register(name: impl Into<String>) -> Timer {
    let name: String = name.into();
    let serial = REGISTRY.serial.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut t) = REGISTRY.timers.lock() {
        t.insert(name.clone(), (serial, Entry::default()));
    }
    Timer {
        name: name.into(),
        serial,
    }
}

impl Timer {
    /// Mark a run: it counts as running until the returned guard is dropped, when its elapsed
    /// time is recorded.
    pub fn run(&self) -> Run<'_> {
        REGISTRY.runs.fetch_add(1, Ordering::Relaxed);
        self.with(|e| {
            e.running = true;
            e.runs += 1;
        });
        Run {
            timer: self,
            started: Instant::now(),
            error: None,
        }
    }

    fn with(&self, f: impl FnOnce(&mut Entry)) {
        if let Ok(mut t) = REGISTRY.timers.lock() {
            if let Some((serial, e)) = t.get_mut(&*self.name) {
                if *serial == self.serial {
                    f(e);
                }
            }
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Ok(mut t) = REGISTRY.timers.lock() {
            if t.get(&*self.name).is_some_and(|(s, _)| *s == self.serial) {
                t.remove(&*self.name);
            }
        }
    }
}

/// A run in progress.
pub struct Run<'a> {
    timer: &'a Timer,
    started: Instant,
    error: Option<String>,
}

impl Run<'_> {
    /// The run failed: `/timers` shows the message as the timer's last error.
    pub fn failed(&mut self, message: impl Into<String>) {
        self.error = Some(message.into());
    }
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        let ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let error = self.error.take();
        self.timer.with(|e| {
            e.running = false;
            e.finish += 1;
            let n = e.finish as f64;
            if e.finish == 1 {
                (e.min, e.max) = (ms, ms);
            } else {
                e.min = e.min.min(ms);
                e.max = e.max.max(ms);
            }
            let delta = ms - e.mean;
            e.mean += delta / n;
            e.m2 += delta * (ms - e.mean);
            if let Some(m) = error {
                e.last_err = m;
            }
        });
    }
}

/// Kong's `/timers` body: the worker (Gantry runs one process, as one worker) and the
/// statistics of every timer, with folded-stack "flamegraphs" of one frame per timer.
pub fn report() -> Value {
    let timers = REGISTRY
        .timers
        .lock()
        .map(|t| t.clone())
        .unwrap_or_default();
    let running = timers.values().filter(|(_, e)| e.running).count();
    let mut out = serde_json::Map::new();
    let (mut flame_running, mut flame_elapsed) = (String::new(), String::new());
    for (name, (_, e)) in &timers {
        let variance = if e.finish > 1 {
            e.m2 / (e.finish - 1) as f64
        } else {
            0.0
        };
        out.insert(
            name.clone(),
            json!({
                "name": name,
                "meta": {"name": name, "callstack": name},
                "is_running": e.running,
                "stats": {
                    "runs": e.runs,
                    "finish": e.finish,
                    "last_err_msg": e.last_err,
                    "elapsed_time": {"min": e.min, "max": e.max, "avg": e.mean, "variance": variance},
                },
            }),
        );
        if e.running {
            flame_running.push_str(&format!("{name} 1\n"));
        }
        let total = (e.mean * e.finish as f64).round() as u64;
        if total > 0 {
            flame_elapsed.push_str(&format!("{name} {total}\n"));
        }
    }
    json!({
        "worker": {"id": 0, "count": 1},
        "stats": {
            "sys": {
                "total": timers.len(),
                "runs": REGISTRY.runs.load(Ordering::Relaxed),
                "running": running,
                // A timer whose time has come runs at once: none waits for a free slot.
                "pending": 0,
                "waiting": timers.len() - running,
            },
            "timers": out,
            "flamegraph": {"running": flame_running, "pending": "", "elapsed_time": flame_elapsed},
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_counted_and_timed() {
        let t = register("test:timers");
        {
            let _r = t.run();
            let now = report();
            assert_eq!(now["stats"]["timers"]["test:timers"]["is_running"], true);
        }
        {
            let mut r = t.run();
            r.failed("boom");
        }
        let r = report();
        let e = &r["stats"]["timers"]["test:timers"];
        assert_eq!(e["is_running"], false);
        assert_eq!(e["stats"]["runs"], 2);
        assert_eq!(e["stats"]["finish"], 2);
        assert_eq!(e["stats"]["last_err_msg"], "boom");
        assert!(e["stats"]["elapsed_time"]["max"].as_f64().unwrap() >= 0.0);
        drop(t);
        assert!(report()["stats"]["timers"].get("test:timers").is_none());
    }
}
