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
        Some(self.now().saturating_add(delay.as_nanos() as u64))
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
