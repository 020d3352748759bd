//! One monotonic deadline structure for sleeping tasks and `copas.timeout` timers.
//!
//! A binary heap with lazy deletion: cancelling or waking early leaves the entry in the heap, and
//! the owner checks on expiry whether the entry is still the current one (by its sequence number).
//! When dead entries outnumber live ones the heap is rebuilt, so cancel-heavy programs (a lock
//! taken with a 10 s timeout and released at once, a million times) keep it small.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// What an expiring deadline is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// Wake the task in this slab slot, if its sleep is still the one with this sequence number.
    Task(usize),
    /// Fire the `copas.timeout` timer in this slab slot.
    Timer(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub at: u64,
    pub seq: u64,
    pub target: Target,
}

pub struct Deadlines {
    base: Instant,
    heap: BinaryHeap<Reverse<Entry>>,
    next_seq: u64,
}

impl Deadlines {
    pub fn new() -> Self {
        Deadlines {
            base: Instant::now(),
            heap: BinaryHeap::new(),
            next_seq: 0,
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
        Some(self.now().saturating_add(delay.as_nanos() as u64))
    }

    /// Schedules `target` at `at` and returns the entry's sequence number.
    pub fn push(&mut self, at: u64, target: Target) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Reverse(Entry { at, seq, target }));
        seq
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

    /// Rebuilds the heap without dead entries once they dominate it.
    pub fn compact_if_sparse(&mut self, live: usize, is_live: impl Fn(&Entry) -> bool) {
        if self.heap.len() <= 2 * live + 1024 {
            return;
        }
        let entries = std::mem::take(&mut self.heap).into_vec();
        self.heap = entries
            .into_iter()
            .filter(|Reverse(e)| is_live(e))
            .collect();
    }

    pub fn clear(&mut self) {
        self.heap.clear();
    }
}
