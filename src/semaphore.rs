//! The waiting lines of `copas.semaphore` (and of the queue and future built on it).
//!
//! While threads wait, the line and the count live here, so that `give` hands resources to
//! waiters and makes them ready without a Lua-level `copas.wakeup` per waiter, and a waiting
//! `take` is one yield. While nobody waits, the Lua side keeps the count (its take and give then
//! call nothing, and LuaJIT compiles them): a waiter hands it over with its OP_SEMAPHORE yield,
//! and every operation here gives it back once no waiter is left (`released`).
//!
//! The line is FIFO with head-of-line blocking (behaviour contract §9.2). Waiters that left it
//! (timed out, removed, died) are skipped when they reach the head: the scheduler tells which
//! waiters still wait, so a task is never handed resources it does not wait for.

use std::collections::VecDeque;

use slab::Slab;

use crate::tasks::TaskRef;

struct Waiter {
    task: TaskRef,
    requested: f64,
}

pub struct Semaphore {
    gen: u32,
    count: f64,
    max: f64,
    line: VecDeque<Waiter>,
}

/// What `take` decided without waiting.
#[derive(Debug, PartialEq)]
pub enum Take {
    Granted,
    TooMany,
    /// The line is not empty or the count too low: the caller queues (`enqueue`) and waits.
    Wait,
}

#[derive(Default)]
pub struct Semaphores {
    slab: Slab<Semaphore>,
}

impl Semaphores {
    /// A new semaphore; returns its slab key (the caller pairs it with `gen`).
    pub fn insert(&mut self, gen: u32, max: f64, start: f64) -> usize {
        self.slab.insert(Semaphore {
            gen,
            count: start,
            max,
            line: VecDeque::new(),
        })
    }

    pub fn get(&mut self, key: usize, gen: u32) -> Option<&mut Semaphore> {
        self.slab.get_mut(key).filter(|s| s.gen == gen)
    }

    /// Forgets a semaphore (destroyed, or its Lua object collected). Returns its line.
    pub fn remove(&mut self, key: usize, gen: u32) -> Vec<TaskRef> {
        if self.get(key, gen).is_none() {
            return Vec::new();
        }
        let sema = self.slab.remove(key);
        sema.line.into_iter().map(|w| w.task).collect()
    }
}

impl Semaphore {
    pub fn count(&self) -> f64 {
        self.count
    }

    /// Takes over the count the Lua side kept while the line was empty.
    pub fn set_count(&mut self, count: f64) {
        self.count = count;
    }

    /// The count, when no waiter is left in line: the Lua side keeps it from then on.
    pub fn released(&self, waiting: impl Fn(TaskRef) -> bool) -> Option<f64> {
        (!self.line.iter().any(|w| waiting(w.task))).then_some(self.count)
    }

    /// `take(requested)` where `waiting` tells which tasks in line still wait for this
    /// semaphore; grants to the line first (`granted`), so that waiters that left never hold up
    /// a request that can be satisfied.
    pub fn take(
        &mut self,
        requested: f64,
        waiting: impl Fn(TaskRef) -> bool,
        granted: &mut Vec<TaskRef>,
    ) -> Take {
        self.serve(waiting, granted);
        if self.line.is_empty() && self.count >= requested {
            self.count -= requested;
            Take::Granted
        } else if requested > self.max {
            Take::TooMany
        } else {
            Take::Wait
        }
    }

    pub fn enqueue(&mut self, task: TaskRef, requested: f64) {
        self.line.push_back(Waiter { task, requested });
    }

    /// `give(amount)`: adds resources, capped at `max` (then false: "too many"), and grants to
    /// the line (`granted`).
    pub fn give(
        &mut self,
        amount: f64,
        waiting: impl Fn(TaskRef) -> bool,
        granted: &mut Vec<TaskRef>,
    ) -> bool {
        let count = self.count + amount;
        let fits = count <= self.max;
        self.count = if fits { count } else { self.max };
        self.serve(waiting, granted);
        fits
    }

    /// Grants to the head of the line, strictly in order, until a head that still waits asks
    /// for more than there is; drops those that left on the way.
    pub fn serve(&mut self, waiting: impl Fn(TaskRef) -> bool, granted: &mut Vec<TaskRef>) {
        while let Some(head) = self.line.front() {
            if waiting(head.task) {
                if head.requested > self.count {
                    break;
                }
                self.count -= head.requested;
                granted.push(head.task);
            }
            self.line.pop_front();
        }
    }

    /// The resources requested by the tasks still waiting, minus those available.
    pub fn wait(&self, waiting: impl Fn(TaskRef) -> bool) -> f64 {
        let requested: f64 = self
            .line
            .iter()
            .filter(|w| waiting(w.task))
            .map(|w| w.requested)
            .sum();
        requested - self.count
    }
}
