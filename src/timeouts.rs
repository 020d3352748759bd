//! `copas.timeout` timers, and the liveness of the deadline heap's entries.
//!
//! Timers, sleeping tasks, I/O and semaphore waits with a timeout, and servers backing off after
//! a failed accept all share one deadline heap (`timers.rs`), with lazy deletion: an entry
//! whose owner moved on stays in the heap until it comes up or the heap is compacted, and
//! `is_live` tells. A timer's callback runs inside the core timer coroutine, made by a shim
//! factory; a callback that yields into copas turns that coroutine into an ordinary task, and
//! a fresh core timer takes over.

use std::os::fd::RawFd;
use std::time::Duration;

use mlua::{Function, Lua, Thread};

use crate::core::{Core, Sched};
use crate::protocol::{OP_TIMER_DONE, TIMED_OUT};
use crate::resume::{resume, Arg, Outcome};
use crate::tasks::{pack, unpack, Wait};
use crate::timers::{nanos, Deadlines, Entry, Target};

/// A pending `copas.timeout` timer; its callback is kept by the shim, under the timer's id.
pub(crate) struct TimerRec {
    pub(crate) gen: u32,
}

impl Sched {
    /// A deadline in seconds of `Core::now` as heap time.
    pub(crate) fn deadline_at(&self, seconds: Option<f64>) -> Option<u64> {
        let s = seconds.filter(|s| s.is_finite())?;
        Some(nanos(Duration::try_from_secs_f64(s.max(0.0)).ok()?))
    }

    pub(crate) fn push_deadline(&mut self, key: usize, at: Option<u64>) {
        if let Some(at) = at {
            let gen = self.tasks[key].gen;
            self.deadlines.push(at, Target::Task(key), gen);
            self.compact();
        }
    }

    /// Whether a heap entry is still wanted: its task still waits until exactly then, its
    /// timer is still armed, its server still backs off until then.
    pub(crate) fn is_live(&self, e: &Entry) -> bool {
        match e.target() {
            Target::Task(k) => matches!(self.tasks.get(k),
                Some(t) if t.gen == e.gen() && t.wait.deadline() == Some(e.at)),
            Target::Timer(k) => matches!(self.timers.get(k), Some(t) if t.gen == e.gen()),
            Target::Server(fd) => self.sockets.backoff_until(fd as RawFd) == Some(e.at),
        }
    }

    /// Rebuilds the heap without dead entries once they dominate it.
    pub(crate) fn compact(&mut self) {
        let live = self.sleeping + self.timers.len();
        if !self.deadlines.is_sparse(live) {
            return;
        }
        let mut deadlines = std::mem::replace(&mut self.deadlines, Deadlines::new());
        deadlines.retain(|e| self.is_live(e));
        self.deadlines = deadlines;
    }

    /// Pops cancelled entries off the front of the heap, so that a removed sleeper or a
    /// cancelled timeout does not hold the next wait short.
    pub(crate) fn drop_dead_heads(&mut self) {
        while let Some(e) = self.deadlines.peek() {
            if self.is_live(&e) {
                break;
            }
            self.deadlines.pop();
        }
    }

    /// Moves due sleepers to the ready queue, servers whose back-off is over to the accept list,
    /// and returns the due timers, in deadline order.
    pub(crate) fn expire(&mut self) -> Vec<(usize, u32)> {
        let now = self.deadlines.now();
        self.step_now = now;
        let mut due_timers = Vec::new();
        while let Some(e) = self.deadlines.pop_due(now) {
            if !self.is_live(&e) {
                continue;
            }
            match e.target() {
                Target::Task(k) => self.expire_task(k),
                Target::Timer(k) => due_timers.push((k, self.timers[k].gen)),
                Target::Server(fd) => self.sockets.end_backoff(fd as RawFd),
            }
        }
        due_timers
    }

    /// A task's deadline passed: a sleeper wakes; an I/O waiter leaves its fd's list (so later
    /// readiness never resumes it, upstream bug #208) and its yield returns 0.
    pub(crate) fn expire_task(&mut self, key: usize) {
        match self.tasks[key].wait {
            Wait::Io { fd, write, .. } => {
                let gen = self.tasks[key].gen;
                if let Some(waiter) = self.sockets.remove_waiter(fd, write, (key, gen)) {
                    self.last_try(key, waiter.ask);
                }
                self.end_io_wait(key, false, true);
            }
            Wait::Lookup { .. } => self.end_io_wait(key, false, true),
            Wait::Semaphore { id, .. } => {
                let gen = self.tasks[key].gen;
                self.end_wait(key, TIMED_OUT);
                self.left_line(id, (key, gen));
            }
            _ => self.make_ready(key),
        }
    }
}

impl Core {
    /// Arms a timer of `delay` seconds and returns its id; on expiry the core timer coroutine is
    /// resumed with that id (the shim keeps the callbacks). 0 for an infinite delay.
    pub fn add_timer(&self, delay: f64) -> mlua::Result<i64> {
        let mut s = self.sched.borrow_mut();
        let Some(at) = s.deadlines.deadline_after(delay) else {
            return Ok(0);
        };
        let gen = s.next_gen();
        let key = s.timers.insert(TimerRec { gen });
        s.deadlines.push(at, Target::Timer(key), gen);
        s.compact();
        let id = pack(key, gen);
        if id.is_err() {
            s.timers.remove(key);
        }
        id
    }

    pub fn cancel_timer(&self, id: i64) {
        let (key, gen) = unpack(id);
        self.with_sched(|s| {
            if matches!(s.timers.get(key), Some(t) if t.gen == gen) {
                s.timers.remove(key);
            }
        });
    }

    /// Pending `copas.timeout` timers, counting semaphore waits with a timeout (upstream arms
    /// one for each).
    pub fn timer_count(&self) -> usize {
        self.with_sched(|s| s.timers.len() + s.timed_waits)
    }

    pub fn set_core_timer_factory(&self, f: Function) {
        let mut hooks = self.hooks.borrow_mut();
        hooks.core_timer_factory = Some(f);
        hooks.core_timer = None;
    }

    /// Runs one due `copas.timeout` callback inside the core timer coroutine.
    pub(crate) fn fire_timer(&self, lua: &Lua, key: usize, gen: u32) {
        if !self.lua_is_open() {
            return; // the interpreter is closing: nothing runs any more
        }
        {
            let mut s = self.sched.borrow_mut();
            // An earlier callback of this batch may have cancelled it.
            if !matches!(s.timers.get(key), Some(t) if t.gen == gen) {
                return;
            }
            s.timers.remove(key);
        }
        let Some(timer_co) = self.core_timer() else {
            return;
        };
        let Ok(id) = pack(key, gen) else {
            return;
        };
        if self.tracing() {
            self.trace("resume", &timer_co, None);
        }
        // SAFETY: `timer_co` is a live Thread handle for the duration of the call.
        match unsafe {
            resume(
                lua,
                timer_co.state(),
                self.token,
                Arg::Number(id as f64),
                &self.values,
            )
        } {
            Outcome::Wait {
                op: OP_TIMER_DONE, ..
            } => {}
            other => {
                // The callback yielded into copas (or the timer body ended): the coroutine
                // becomes an ordinary task and a fresh core timer takes over.
                self.hooks.borrow_mut().core_timer = None;
                self.make_task_of_timer_coroutine(lua, timer_co, other);
            }
        }
    }

    /// The coroutine that runs `copas.timeout` callbacks, made by the shim's factory when needed.
    fn core_timer(&self) -> Option<Thread> {
        let mut hooks = self.hooks.borrow_mut();
        if hooks.core_timer.is_none() {
            let factory = hooks.core_timer_factory.clone()?;
            drop(hooks);
            let co: Thread = factory.call(()).ok()?;
            hooks = self.hooks.borrow_mut();
            hooks.core_timer = Some(co);
        }
        hooks.core_timer.clone()
    }

    /// The core timer coroutine did not come back with OP_TIMER_DONE: from now on it is a task.
    fn make_task_of_timer_coroutine(&self, lua: &Lua, co: Thread, outcome: Outcome) {
        if let Ok((key, _)) = self.insert_task(co, false, Wait::Running) {
            self.settle(lua, key, outcome);
        }
    }
}
