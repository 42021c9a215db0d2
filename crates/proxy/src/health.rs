//! Target health: passive checks (the outcomes of proxied requests) and active checks (probes),
//! with Kong's `healthchecks` fields. Health lives outside snapshots: a configuration change
//! does not forget which targets are down.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

/// What happened to one request or probe against a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    TcpFailure,
    Timeout,
    Status(u16),
}

/// One side (active or passive) of an upstream's checks, as configured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Thresholds {
    pub healthy_statuses: Vec<u16>,
    pub successes: u32,
    pub unhealthy_statuses: Vec<u16>,
    pub tcp_failures: u32,
    pub timeouts: u32,
    pub http_failures: u32,
}

impl Thresholds {
    fn from(v: Option<&Value>) -> Thresholds {
        let n = |p: &[&str]| {
            let mut cur = v;
            for k in p {
                cur = cur.and_then(|c| c.get(*k));
            }
            cur.and_then(Value::as_u64).unwrap_or(0) as u32
        };
        let list = |p: &[&str]| {
            let mut cur = v;
            for k in p {
                cur = cur.and_then(|c| c.get(*k));
            }
            cur.and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_u64().map(|x| x as u16))
                        .collect()
                })
                .unwrap_or_default()
        };
        Thresholds {
            healthy_statuses: list(&["healthy", "http_statuses"]),
            successes: n(&["healthy", "successes"]),
            unhealthy_statuses: list(&["unhealthy", "http_statuses"]),
            tcp_failures: n(&["unhealthy", "tcp_failures"]),
            timeouts: n(&["unhealthy", "timeouts"]),
            http_failures: n(&["unhealthy", "http_failures"]),
        }
    }

    /// Whether these thresholds can mark a target down at all.
    pub fn enabled(&self) -> bool {
        self.tcp_failures > 0 || self.timeouts > 0 || self.http_failures > 0
    }
}

/// An upstream's active probe settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Probe {
    pub http_path: String,
    pub timeout: Duration,
    pub healthy_interval: Duration,
    pub unhealthy_interval: Duration,
    pub thresholds: Thresholds,
}

/// An upstream's `healthchecks`, read from its document.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Checks {
    pub passive: Thresholds,
    pub active: Option<Probe>,
}

impl Checks {
    pub fn from_doc(upstream: &gantry_model::Doc) -> Checks {
        let hc = upstream.get("healthchecks");
        let active = hc.and_then(|h| h.get("active"));
        let secs = |k: &str| {
            active
                .and_then(|a| a.get(k))
                .and_then(|a| a.get("interval"))
                .and_then(Value::as_f64)
                .unwrap_or(0.0)
        };
        let (hi, ui) = (secs("healthy"), secs("unhealthy"));
        let probe = (hi > 0.0 || ui > 0.0).then(|| Probe {
            http_path: active
                .and_then(|a| a.get("http_path"))
                .and_then(Value::as_str)
                .unwrap_or("/")
                .to_string(),
            timeout: Duration::from_secs_f64(
                active
                    .and_then(|a| a.get("timeout"))
                    .and_then(Value::as_f64)
                    .unwrap_or(1.0)
                    .max(0.001),
            ),
            healthy_interval: Duration::from_secs_f64(hi),
            unhealthy_interval: Duration::from_secs_f64(ui),
            thresholds: Thresholds::from(active),
        });
        Checks {
            passive: Thresholds::from(hc.and_then(|h| h.get("passive"))),
            active: probe,
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct State {
    down: bool,
    tcp_failures: u32,
    timeouts: u32,
    http_failures: u32,
    successes: u32,
}

/// Health of every target, by `(upstream name, target)`.
#[derive(Default)]
pub struct Health {
    /// Upstream name, then target.
    states: Mutex<HashMap<String, HashMap<String, State>>>,
}

impl Health {
    /// Whether a target may receive traffic.
    pub fn is_up(&self, upstream: &str, target: &str) -> bool {
        let Ok(s) = self.states.lock() else {
            return true;
        };
        !s.get(upstream)
            .and_then(|t| t.get(target))
            .is_some_and(|st| st.down)
    }

    /// Set a target's state by hand (Kong's `POST .../healthy` and `.../unhealthy`): the
    /// counters start again, and checks move it from there.
    pub fn set(&self, upstream: &str, target: &str, up: bool) {
        if let Ok(mut map) = self.states.lock() {
            let st = map
                .entry(upstream.to_string())
                .or_default()
                .entry(target.to_string())
                .or_default();
            *st = State {
                down: !up,
                ..State::default()
            };
        }
    }

    /// Count an outcome against the thresholds; returns the new up/down state when it changed.
    pub fn report(
        &self,
        upstream: &str,
        target: &str,
        outcome: Outcome,
        t: &Thresholds,
    ) -> Option<bool> {
        let Ok(mut map) = self.states.lock() else {
            return None;
        };
        let st = map
            .entry(upstream.to_string())
            .or_default()
            .entry(target.to_string())
            .or_default();
        let was_down = st.down;
        let failure = match outcome {
            Outcome::TcpFailure => {
                st.tcp_failures += 1;
                t.tcp_failures > 0 && st.tcp_failures >= t.tcp_failures
            }
            Outcome::Timeout => {
                st.timeouts += 1;
                t.timeouts > 0 && st.timeouts >= t.timeouts
            }
            Outcome::Status(code) if t.unhealthy_statuses.contains(&code) => {
                st.http_failures += 1;
                t.http_failures > 0 && st.http_failures >= t.http_failures
            }
            Outcome::Status(code) => {
                if t.healthy_statuses.contains(&code) {
                    st.tcp_failures = 0;
                    st.timeouts = 0;
                    st.http_failures = 0;
                    st.successes += 1;
                    if st.down && t.successes > 0 && st.successes >= t.successes {
                        st.down = false;
                        st.successes = 0;
                    }
                }
                false
            }
        };
        if failure {
            st.down = true;
            st.successes = 0;
            st.tcp_failures = 0;
            st.timeouts = 0;
            st.http_failures = 0;
        }
        (st.down != was_down).then_some(!st.down)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_take_a_target_down_and_successes_bring_it_back() {
        let h = Health::default();
        let t = Thresholds {
            healthy_statuses: vec![200],
            successes: 2,
            unhealthy_statuses: vec![500],
            tcp_failures: 2,
            timeouts: 1,
            http_failures: 3,
        };
        assert!(h.is_up("u", "a:1"));
        assert_eq!(h.report("u", "a:1", Outcome::TcpFailure, &t), None);
        assert_eq!(h.report("u", "a:1", Outcome::TcpFailure, &t), Some(false));
        assert!(!h.is_up("u", "a:1"));
        assert!(h.is_up("u", "b:1"));
        assert_eq!(h.report("u", "a:1", Outcome::Status(200), &t), None);
        assert_eq!(h.report("u", "a:1", Outcome::Status(200), &t), Some(true));
        assert!(h.is_up("u", "a:1"));
        for _ in 0..2 {
            h.report("u", "a:1", Outcome::Status(500), &t);
        }
        assert!(h.is_up("u", "a:1"));
        assert_eq!(h.report("u", "a:1", Outcome::Status(500), &t), Some(false));
    }
}
