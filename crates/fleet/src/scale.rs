//! Autopilot: how many nodes a group needs for the requests per second it is measured to
//! serve.
//!
//! Each node is taken to serve `capacity` requests per second (the `managed_instance_rps`
//! setting). The group grows as soon as its load passes 75% of what its nodes can serve, to the
//! count that brings it back under 75%; it shrinks only when its load has stayed under 50% of
//! what one node fewer could serve for `scale_in_delay` (default 60 s). Between the two, it
//! stays as it is: that gap is the hysteresis that keeps a load near a boundary from making
//! nodes come and go. The count never goes under what `base_rps` needs (at least one node),
//! nor over what `max_rps` needs (10 × `base_rps` unless set).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Load over 75% of capacity grows the group.
const GROW_AT: f64 = 0.75;
/// Load under 50% of capacity (for the delay) shrinks it.
const SHRINK_AT: f64 = 0.5;

#[derive(Debug, Clone, Copy)]
pub struct Autopilot {
    pub base_rps: u64,
    pub max_rps: u64,
    /// Requests per second one node serves.
    pub capacity: u64,
    pub scale_in_delay: Duration,
}

fn nodes_for(rps: f64, capacity: u64, utilisation: f64) -> usize {
    (rps / (capacity as f64 * utilisation)).ceil().max(1.0) as usize
}

impl Autopilot {
    pub fn floor(&self) -> usize {
        nodes_for(self.base_rps as f64, self.capacity, 1.0)
    }

    pub fn ceiling(&self) -> usize {
        nodes_for(self.max_rps as f64, self.capacity, 1.0).max(self.floor())
    }

    /// The count to run, given the current one, the measured load, and since when the load
    /// has been low enough to shrink (kept by the caller in `low_since`).
    pub fn decide(
        &self,
        current: usize,
        rps: f64,
        now: Instant,
        low_since: &mut Option<Instant>,
    ) -> usize {
        let (floor, ceiling) = (self.floor(), self.ceiling());
        let grow = nodes_for(rps, self.capacity, GROW_AT).clamp(floor, ceiling);
        if grow > current || current < floor {
            *low_since = None;
            return grow.max(floor);
        }
        let shrink = nodes_for(rps, self.capacity, SHRINK_AT).clamp(floor, ceiling);
        if shrink < current {
            let since = *low_since.get_or_insert(now);
            if now.duration_since(since) >= self.scale_in_delay {
                *low_since = None;
                return shrink;
            }
        } else {
            *low_since = None;
        }
        current.min(ceiling)
    }
}

/// Requests per second from a counter sampled now and then: the increase over the last
/// `window`.
#[derive(Debug)]
pub struct Meter {
    window: Duration,
    samples: VecDeque<(Instant, u64)>,
}

impl Meter {
    pub fn new(window: Duration) -> Meter {
        Meter {
            window,
            samples: VecDeque::new(),
        }
    }

    /// Forget what was measured (the counter was reset).
    pub fn reset(&mut self) {
        self.samples.clear();
    }

    pub fn sample(&mut self, at: Instant, total: u64) {
        if self.samples.back().is_some_and(|(_, t)| total < *t) {
            self.samples.clear();
        }
        self.samples.push_back((at, total));
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|(t, _)| at.duration_since(*t) >= self.window)
        {
            self.samples.pop_front();
        }
    }

    pub fn rps(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => {
                (n1 - n0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pilot() -> Autopilot {
        Autopilot {
            base_rps: 40,
            max_rps: 400,
            capacity: 50,
            scale_in_delay: Duration::from_secs(30),
        }
    }

    #[test]
    fn grows_at_once_and_shrinks_after_the_delay_with_hysteresis() {
        let p = pilot();
        let t0 = Instant::now();
        let mut low = None;
        assert_eq!((p.floor(), p.ceiling()), (1, 8));
        // No load: the floor.
        assert_eq!(p.decide(0, 0.0, t0, &mut low), 1);
        // 37 rps is under 75% of one node: stays.
        assert_eq!(p.decide(1, 37.0, t0, &mut low), 1);
        // 120 rps needs 120 / 37.5 = 4 nodes, at once.
        assert_eq!(p.decide(1, 120.0, t0, &mut low), 4);
        // 80 rps: under 75% of 4 nodes, not under 50% of 3 (75): stays at 4.
        assert_eq!(p.decide(4, 80.0, t0, &mut low), 4);
        assert!(low.is_none());
        // Load gone: shrinks only after the delay, to the floor.
        assert_eq!(p.decide(4, 0.0, t0, &mut low), 4);
        assert_eq!(p.decide(4, 0.0, t0 + Duration::from_secs(29), &mut low), 4);
        assert_eq!(p.decide(4, 0.0, t0 + Duration::from_secs(30), &mut low), 1);
        // A load that comes back resets the delay.
        let mut low = None;
        assert_eq!(p.decide(4, 0.0, t0, &mut low), 4);
        assert_eq!(
            p.decide(4, 150.0, t0 + Duration::from_secs(10), &mut low),
            4
        );
        assert_eq!(p.decide(4, 0.0, t0 + Duration::from_secs(35), &mut low), 4);
        // Never above the ceiling.
        assert_eq!(p.decide(1, 10_000.0, t0, &mut low), 8);
    }

    #[test]
    fn meter_measures_the_increase_over_its_window() {
        let mut m = Meter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(m.rps(), 0.0);
        for i in 0..=20u64 {
            m.sample(t0 + Duration::from_secs(i), i * 100);
        }
        assert!((m.rps() - 100.0).abs() < 1e-9, "{}", m.rps());
        // A counter that goes down starts over.
        m.sample(t0 + Duration::from_secs(21), 5);
        assert_eq!(m.rps(), 0.0);
    }
}
