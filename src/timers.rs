//! One monotonic deadline structure for sleeping tasks, `copas.timeout` timers, and servers
//! backing off after a failed accept.
//!
//! A binary heap with lazy deletion: cancelling or waking early leaves the entry in the heap, and
//! the owner checks on expiry whether the entry is still the current one (by the generation of
//! the slot and, for a task, the deadline it sleeps until). An entry is 16 bytes, so a heap of
//! 100,000 sleepers stays small and cache-friendly.
//! When dead entries outnumber live ones the heap is rebuilt, so cancel-heavy programs (a lock
//! taken with a 10 s timeout and released at once, a million times) keep it small.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// What an expiring deadline is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Wake the task in this slab slot.
    Task(usize),
    /// Fire the `copas.timeout` timer in this slab slot.
    Timer(usize),
    /// End the accept back-off of the server with this descriptor.
    Server(usize),
}

const KIND_BITS: u32 = 2;
const KIND_MASK: u32 = (1 << KIND_BITS) - 1;
const TASK: u32 = 0;
const TIMER: u32 = 1;
const SERVER: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub at: u64,
    key: u32,
    /// The slot's generation, shifted left by two; the low bits tell the kind of target.
    tag: u32,
}

impl Entry {
    pub fn target(&self) -> Target {
        let key = self.key as usize;
        match self.tag & KIND_MASK {
            TASK => Target::Task(key),
            TIMER => Target::Timer(key),
            _ => Target::Server(key),
        }
    }

    pub fn gen(&self) -> u32 {
        self.tag >> KIND_BITS
    }
}

/// A duration in nanoseconds, capped (a cast would wrap 585 years round to an early deadline).
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

pub struct Deadlines {
    base: Instant,
    heap: BinaryHeap<Reverse<Entry>>,
}

impl Deadlines {
    pub fn new() -> Self {
        Deadlines {
            base: Instant::now(),
            heap: BinaryHeap::new(),
        }
    }

    /// Nanoseconds of the monotonic clock since this structure was made.
    pub fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// Converts a delay in seconds to an absolute deadline; `None` for an infinite delay.
    pub fn deadline_after(&self, seconds: f64) -> Option<u64> {
        if !seconds.is_finite() {
            return None;
        }
        let delay = Duration::try_from_secs_f64(seconds.max(0.0)).ok()?;
        Some(self.now().saturating_add(nanos(delay)))
    }

    /// Schedules `target` (a slot of generation `gen`, below 2^30) at `at`.
    pub fn push(&mut self, at: u64, target: Target, gen: u32) {
        let (key, kind) = match target {
            Target::Task(k) => (k, TASK),
            Target::Timer(k) => (k, TIMER),
            Target::Server(fd) => (fd, SERVER),
        };
        self.heap.push(Reverse(Entry {
            at,
            key: key as u32,
            tag: (gen << KIND_BITS) | kind,
        }));
    }

    /// The earliest deadline, live or not (see `Sched::drop_dead_heads`).
    pub fn earliest(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse(e)| e.at)
    }

    pub fn peek(&self) -> Option<Entry> {
        self.heap.peek().map(|Reverse(e)| *e)
    }

    pub fn pop(&mut self) {
        self.heap.pop();
    }

    /// Removes and returns the earliest entry if it is due at `now`.
    pub fn pop_due(&mut self, now: u64) -> Option<Entry> {
        match self.heap.peek() {
            Some(Reverse(e)) if e.at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    /// True when dead entries dominate the heap (`live` entries are still wanted).
    pub fn is_sparse(&self, live: usize) -> bool {
        self.heap.len() > 2 * live + 1024
    }

    /// Keeps only the entries `keep` accepts.
    pub fn retain(&mut self, keep: impl Fn(&Entry) -> bool) {
        self.heap.retain(|Reverse(e)| keep(e));
    }

    pub fn clear(&mut self) {
        self.heap.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_rng::Rng;

    fn drain(d: &mut Deadlines, now: u64) -> Vec<Entry> {
        std::iter::from_fn(|| d.pop_due(now)).collect()
    }

    #[test]
    fn earlier_deadlines_pop_first_whatever_the_push_order() {
        for seed in [1u64, 7, 0xDEAD_BEEF] {
            let mut rng = Rng(seed);
            let mut d = Deadlines::new();
            // Few distinct deadlines, so that ties are frequent too.
            for key in 0..500 {
                let target = if rng.next() & 1 == 0 {
                    Target::Task(key)
                } else {
                    Target::Timer(key)
                };
                d.push(rng.next() % 50, target, (rng.next() % 1000) as u32);
            }
            let popped = drain(&mut d, u64::MAX);
            assert_eq!(popped.len(), 500, "seed {seed}");
            assert!(
                popped.windows(2).all(|w| w[0].at <= w[1].at),
                "seed {seed}: out of order"
            );
            assert_eq!(d.earliest(), None);
        }
    }

    #[test]
    fn pop_due_takes_an_entry_due_exactly_now_but_not_one_due_later() {
        let mut d = Deadlines::new();
        d.push(100, Target::Task(1), 0);
        d.push(101, Target::Task(2), 0);
        assert_eq!(d.pop_due(99), None, "nothing is due before its deadline");
        assert_eq!(d.pop_due(100).map(|e| e.target()), Some(Target::Task(1)));
        assert_eq!(d.pop_due(100), None, "one nanosecond early is still early");
        assert_eq!(d.earliest(), Some(101), "the entry not due stays");
        assert_eq!(d.pop_due(5_000).map(|e| e.target()), Some(Target::Task(2)));
        assert_eq!(d.pop_due(u64::MAX), None, "an empty heap has nothing due");
    }

    #[test]
    fn entries_with_the_same_deadline_fall_due_together_and_stay_distinct() {
        // A sleeper and a timer in the same slab key (different slabs), plus an older,
        // cancelled entry of the same task: all are kept apart by kind and generation.
        let mut d = Deadlines::new();
        d.push(50, Target::Task(3), 8);
        d.push(50, Target::Timer(3), 9);
        d.push(50, Target::Task(3), 7);
        let mut got: Vec<(Target, u32)> = drain(&mut d, 50)
            .iter()
            .map(|e| (e.target(), e.gen()))
            .collect();
        got.sort_by_key(|&(t, g)| (matches!(t, Target::Timer(_)), g));
        assert_eq!(
            got,
            vec![
                (Target::Task(3), 7),
                (Target::Task(3), 8),
                (Target::Timer(3), 9)
            ]
        );
    }

    #[test]
    fn an_entry_gives_back_the_target_and_generation_it_was_pushed_with() {
        // Generations use 30 bits (the two low bits of the tag tell the kind of target); the
        // scheduler's stay below 2^29. The largest must survive, or a live sleeper would look
        // cancelled.
        let mut d = Deadlines::new();
        for (target, gen) in [
            (Target::Task(0), 0),
            (Target::Timer(0), 0),
            (Target::Task((1 << 24) - 1), (1 << 29) - 1),
            (Target::Timer((1 << 24) - 1), (1 << 30) - 1),
            (Target::Server(1 << 20), 0),
        ] {
            d.push(1, target, gen);
            let e = d.pop_due(1).unwrap();
            assert_eq!((e.target(), e.gen()), (target, gen));
        }
    }

    #[test]
    fn a_zero_or_negative_delay_is_due_at_once() {
        let d = Deadlines::new();
        for delay in [0.0, -0.0, -1.0, -1e300, f64::MIN_POSITIVE] {
            let at = d
                .deadline_after(delay)
                .expect("a finite delay has a deadline");
            assert!(at <= d.now(), "delay {delay}: due at {at}, now {}", d.now());
        }
    }

    #[test]
    fn an_infinite_or_nan_delay_has_no_deadline() {
        // None means "unbounded" to the callers; `pause` and `copas.timeout` filter NaN and
        // non-positive delays before they get here.
        let d = Deadlines::new();
        assert_eq!(d.deadline_after(f64::INFINITY), None);
        assert_eq!(d.deadline_after(f64::NEG_INFINITY), None);
        assert_eq!(d.deadline_after(f64::NAN), None);
        // Too large for a Duration: as good as infinite.
        assert_eq!(d.deadline_after(1e300), None);
    }

    #[test]
    fn a_finite_delay_lands_that_far_ahead() {
        let d = Deadlines::new();
        let before = d.now();
        let at = d.deadline_after(1.5).unwrap();
        let after = d.now();
        assert!(at >= before + 1_500_000_000 && at <= after + 1_500_000_000);
        // 30 years still fits the nanosecond clock.
        let far = d.deadline_after(1e9).unwrap();
        assert!(far >= before + 1_000_000_000 * 1_000_000_000);
    }

    #[test]
    fn a_delay_past_the_clock_range_never_wraps_to_an_early_deadline() {
        let d = Deadlines::new();
        let a_century = 100 * 365 * 24 * 3600 * 1_000_000_000u64;
        for delay in [18_446_744_074.0, 1e11, 1e15, 1.8e19] {
            match d.deadline_after(delay) {
                None => {}
                Some(at) => assert!(at > a_century, "delay {delay} s is due at {at} ns"),
            }
        }
    }

    #[test]
    fn earliest_sees_cancelled_entries_until_retain_drops_them() {
        // Lazy deletion: the heap cannot tell a cancelled entry; the owner's `retain` (or
        // `drop_dead_heads`) removes it, and the order of what stays must survive the rebuild.
        let mut d = Deadlines::new();
        for key in 0..10 {
            d.push(100 - key as u64, Target::Task(key), 1);
        }
        assert_eq!(d.earliest(), Some(91));
        d.retain(|e| e.target() != Target::Task(9) && e.target() != Target::Task(7));
        assert_eq!(d.earliest(), Some(92));
        assert_eq!(
            d.peek().map(|e| e.target()),
            Some(Target::Task(8)),
            "peek agrees with earliest"
        );
        let ats: Vec<u64> = drain(&mut d, u64::MAX).iter().map(|e| e.at).collect();
        assert_eq!(ats, vec![92, 94, 95, 96, 97, 98, 99, 100]);
    }

    #[test]
    fn pop_removes_the_earliest_entry_only() {
        let mut d = Deadlines::new();
        d.push(5, Target::Timer(1), 0);
        d.push(3, Target::Timer(2), 0);
        d.pop();
        assert_eq!(d.earliest(), Some(5));
        d.pop();
        d.pop(); // popping an empty heap is harmless
        assert_eq!(d.peek(), None);
    }

    #[test]
    fn the_heap_is_sparse_only_once_dead_entries_dominate() {
        // Below 1024 entries a rebuild is never worth it; above, once more than half are dead.
        let mut d = Deadlines::new();
        for key in 0..1024 {
            d.push(key as u64, Target::Task(key), 0);
        }
        assert!(!d.is_sparse(0), "1024 entries, all dead: still small");
        d.push(0, Target::Task(0), 1);
        assert!(d.is_sparse(0), "1025 dead entries");
        assert!(
            !d.is_sparse(1),
            "1025 entries, 1 live: 2*1+1024 = 1026 allowed"
        );
        for key in 0..2000 {
            d.push(key as u64, Target::Timer(key), 0);
        }
        // 3025 entries.
        assert!(d.is_sparse(1000));
        assert!(!d.is_sparse(1001));
    }

    #[test]
    fn clear_forgets_every_deadline() {
        let mut d = Deadlines::new();
        d.push(0, Target::Task(0), 0);
        d.push(0, Target::Timer(0), 0);
        d.clear();
        assert_eq!(d.earliest(), None);
        assert_eq!(d.pop_due(u64::MAX), None);
        assert!(!d.is_sparse(0));
    }

    #[test]
    fn the_clock_never_goes_backwards() {
        let d = Deadlines::new();
        let mut last = d.now();
        for _ in 0..1000 {
            let now = d.now();
            assert!(now >= last);
            last = now;
        }
    }
}
