//! Tasks, the ready queue, the resume loop: `step`, `finished`, wake-ups, removal and the
//! `copas.timeout` timers that run inside the core timer coroutine.
//!
//! Rust holds only slab keys; the coroutines themselves live in Lua tables indexed by key:
//! `threads` (strong), or `forever` (weak values) for a task that has slept until woken for
//! more than a second or when the loop finishes, so that an abandoned sleeper can be collected
//! (upstream keeps them in a weak set). Short lock and semaphore waits never move. No `RefCell`
//! borrow is held across a resume: the coroutine calls back into this module.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::os::raw::c_void;
use std::time::Duration;

use mlua::{ffi, Function, Lua, LuaString, Table, Thread, Value};
use slab::Slab;

use crate::raw::SlotClearer;
use crate::reactor::Reactor;
use crate::resume::{resume, ErrorBox, Outcome};
use crate::stats::Stats;
use crate::timers::{Deadlines, Entry, Target};

/// Yield opcodes: `coroutine.yield(TOKEN, op, arg)`.
pub const OP_PAUSE: i64 = 1;
pub const OP_FOREVER: i64 = 2;
pub const OP_TIMER_DONE: i64 = 3;

const FOREIGN_YIELD: &str =
    "coroutine.yield was called without a resume first, user-code cannot yield to Copas";

/// Ids handed to Lua pack a slab key with a generation, so a stale id never hits a reused slot.
/// Together they stay below 2^53, so an id survives as a Lua 5.1 double.
const KEY_BITS: u32 = 24;
const GEN_MASK: u32 = (1 << 29) - 1;

fn pack(key: usize, gen: u32) -> mlua::Result<i64> {
    if key >= 1 << KEY_BITS {
        return Err(mlua::Error::runtime(
            "copas: too many threads or timers at once",
        ));
    }
    Ok(((gen as i64) << KEY_BITS) | key as i64)
}

fn unpack(id: i64) -> (usize, u32) {
    (
        (id & ((1 << KEY_BITS) - 1)) as usize,
        ((id >> KEY_BITS) as u32) & GEN_MASK,
    )
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Wait {
    Ready,
    Running,
    /// In the deadline heap until this deadline.
    Sleeping(u64),
    /// `pause(math.huge)`: asleep for ever, and it keeps the loop alive (upstream quirk).
    SleepingUnbounded,
    /// `pauseforever()`: until woken; does not keep the loop alive by itself. `weak` once the
    /// coroutine was moved to `Store::forever`.
    Forever {
        weak: bool,
    },
}

struct Task {
    gen: u32,
    registered: bool,
    canceled: bool,
    started: bool,
    /// Call the exit hook when the task ends (set by the shim: error handler, autoclose).
    notify_exit: bool,
    wait: Wait,
    /// Monotonic time of the last yield, to report the elapsed wait on resume.
    since: u64,
    /// The coroutine's lua_State. Valid while `Store::threads` holds the coroutine, which it does
    /// whenever the task can be resumed (a forever-sleeper is moved back there on wake-up).
    state: *mut ffi::lua_State,
}

struct TimerRec {
    gen: u32,
}

struct Sched {
    tasks: Slab<Task>,
    ready: VecDeque<(usize, u32)>,
    /// The previous step's batch, emptied, kept for its capacity.
    spare: VecDeque<(usize, u32)>,
    deadlines: Deadlines,
    timers: Slab<TimerRec>,
    next_gen: u32,
    sleeping: usize,
    forever: usize,
    forever_at_sweep: usize,
    /// `step_now` of the last pass that moved long forever-sleepers to the weak table.
    last_demotion: u64,
    /// The clock read once per step; yields and resumes within the step use it.
    step_now: u64,
    reactor: Reactor,
    stats: Stats,
}

impl Sched {
    fn next_gen(&mut self) -> u32 {
        self.next_gen = (self.next_gen + 1) & GEN_MASK;
        self.next_gen
    }

    fn task(&mut self, key: usize, gen: u32) -> Option<&mut Task> {
        self.tasks.get_mut(key).filter(|t| t.gen == gen)
    }

    /// Takes a task out of whatever wait it is in, keeping the counters right.
    fn leave_wait(&mut self, key: usize) {
        let Some(t) = self.tasks.get_mut(key) else {
            return;
        };
        match t.wait {
            Wait::Sleeping(_) | Wait::SleepingUnbounded => self.sleeping -= 1,
            Wait::Forever { .. } => self.forever -= 1,
            _ => {}
        }
        t.wait = Wait::Running;
    }

    /// Drops a task's record (its coroutine is the caller's business).
    fn remove_task(&mut self, key: usize) {
        self.leave_wait(key);
        self.tasks.remove(key);
    }

    fn make_ready(&mut self, key: usize) {
        self.leave_wait(key);
        let t = &mut self.tasks[key];
        t.wait = Wait::Ready;
        self.ready.push_back((key, t.gen));
    }

    fn is_live(&self, e: &Entry) -> bool {
        match e.target() {
            Target::Task(k) => matches!(self.tasks.get(k),
                Some(t) if t.gen == e.gen() && t.wait == Wait::Sleeping(e.at)),
            Target::Timer(k) => matches!(self.timers.get(k), Some(t) if t.gen == e.gen()),
        }
    }

    /// Rebuilds the heap without dead entries once they dominate it.
    fn compact(&mut self) {
        let live = self.sleeping + self.timers.len();
        if !self.deadlines.is_sparse(live) {
            return;
        }
        let mut deadlines = std::mem::replace(&mut self.deadlines, Deadlines::new());
        deadlines.retain(|e| self.is_live(e));
        self.deadlines = deadlines;
    }

    /// How long the loop may wait: 0 with work ready, else until the next deadline, capped by
    /// the caller's timeout (negative means none: upstream's select would block for ever there).
    fn wait_time(&mut self, timeout: Option<f64>) -> Option<Duration> {
        if !self.ready.is_empty() {
            return Some(Duration::ZERO);
        }
        self.drop_dead_heads();
        let user = timeout
            .filter(|t| *t >= 0.0)
            .and_then(|t| Duration::try_from_secs_f64(t).ok());
        // Rounded up to whole milliseconds: epoll waits in milliseconds anyway, and sleepers due
        // within one millisecond then wake in one step instead of one step (and syscall) each.
        let next = self.deadlines.earliest().map(|at| {
            let ns = at.saturating_sub(self.deadlines.now());
            Duration::from_millis(ns.div_ceil(1_000_000))
        });
        match (user, next) {
            (Some(u), Some(n)) => Some(u.min(n)),
            (None, Some(n)) => Some(n),
            // With no deadline and no socket nothing can end the wait early, and nothing can
            // happen during it: return at once (loop(timeout) would otherwise sit out its
            // timeout on the way out, where upstream waits one 0.1 s tick).
            (_, None) if !self.reactor.has_sources() => Some(Duration::ZERO),
            (u, None) => u,
        }
    }

    /// Pops cancelled entries off the front of the heap, so that a removed sleeper or a
    /// cancelled timeout does not hold the next wait short.
    fn drop_dead_heads(&mut self) {
        while let Some(e) = self.deadlines.peek() {
            if self.is_live(&e) {
                break;
            }
            self.deadlines.pop();
        }
    }

    /// Moves due sleepers to the ready queue and returns the due timers, in deadline order.
    fn expire(&mut self) -> Vec<(usize, u32)> {
        let now = self.deadlines.now();
        self.step_now = now;
        let mut due_timers = Vec::new();
        while let Some(e) = self.deadlines.pop_due(now) {
            if !self.is_live(&e) {
                continue;
            }
            match e.target() {
                Target::Task(k) => self.make_ready(k),
                Target::Timer(k) => due_timers.push((k, self.timers[k].gen)),
            }
        }
        due_timers
    }
}

/// Lua-side storage for the values the scheduler refers to by key.
struct Store {
    threads: Table,
    forever: Table,
}

struct Hooks {
    on_error: Option<Function>,
    on_exit: Option<Function>,
    tracer: Option<Function>,
    core_timer_factory: Option<Function>,
    core_timer: Option<Thread>,
}

/// Runs one task's turn so that a bug of the core (a panic) costs at most that task, never the
/// loop or the interpreter. The panic message has already gone to stderr through the hook.
fn guarded(turn: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(turn)).is_err() {
        eprintln!("copas: internal error in the scheduler; the loop goes on");
    }
}

fn foreign_yield_error(lua: &Lua) -> Value {
    lua.create_string(FOREIGN_YIELD)
        .map_or(Value::Nil, Value::String)
}

/// Interned table keys, so that checking them once per step costs no string hashing.
struct Keys {
    step: LuaString,
    finished: LuaString,
}

pub struct Core {
    sched: RefCell<Sched>,
    clear_threads: SlotClearer,
    keys: Keys,
    store: Store,
    hooks: RefCell<Hooks>,
    errors: ErrorBox,
    token: *mut c_void,
}

impl Core {
    pub fn new(lua: &Lua, token: *mut c_void) -> mlua::Result<Core> {
        let weak_values = lua.create_table()?;
        weak_values.raw_set("__mode", "v")?;
        let forever = lua.create_table()?;
        forever.set_metatable(Some(weak_values))?;
        let threads = lua.create_table()?;
        Ok(Core {
            clear_threads: SlotClearer::new(lua, &threads)?,
            sched: RefCell::new(Sched {
                tasks: Slab::new(),
                ready: VecDeque::new(),
                spare: VecDeque::new(),
                deadlines: Deadlines::new(),
                timers: Slab::new(),
                next_gen: 0,
                sleeping: 0,
                forever: 0,
                forever_at_sweep: 0,
                last_demotion: 0,
                step_now: 0,
                reactor: Reactor::new(),
                stats: Stats::default(),
            }),
            keys: Keys {
                step: lua.create_string("step")?,
                finished: lua.create_string("finished")?,
            },
            store: Store { threads, forever },
            hooks: RefCell::new(Hooks {
                on_error: None,
                on_exit: None,
                tracer: None,
                core_timer_factory: None,
                core_timer: None,
            }),
            errors: ErrorBox::new(lua)?,
            token,
        })
    }

    pub fn set_error_hook(&self, f: Option<Function>) {
        self.hooks.borrow_mut().on_error = f;
    }

    pub fn set_exit_hook(&self, f: Option<Function>) {
        self.hooks.borrow_mut().on_exit = f;
    }

    pub fn set_tracer(&self, f: Option<Function>) {
        self.hooks.borrow_mut().tracer = f;
    }

    pub fn set_core_timer_factory(&self, f: Function) {
        let mut hooks = self.hooks.borrow_mut();
        hooks.core_timer_factory = Some(f);
        hooks.core_timer = None;
    }

    /// Registers a new task, ready to run in the next resumable phase. `registered` tasks are the
    /// ones `removethread` can cancel (threads added with addthread, as upstream).
    pub fn spawn(&self, co: Thread, registered: bool) -> mlua::Result<i64> {
        let (key, gen) = self.insert_task(co, registered, Wait::Ready)?;
        let id = pack(key, gen);
        if id.is_err() {
            self.discard(key);
        } else {
            self.sched.borrow_mut().ready.push_back((key, gen));
        }
        id
    }

    /// Stores the coroutine first, so that a task never exists without its coroutine in
    /// `Store::threads` (`discard` relies on it).
    fn insert_task(&self, co: Thread, registered: bool, wait: Wait) -> mlua::Result<(usize, u32)> {
        let key = self.sched.borrow().tasks.vacant_key();
        let state = co.state();
        self.store.threads.raw_set(key, co)?;
        let mut s = self.sched.borrow_mut();
        let gen = s.next_gen();
        let inserted = s.tasks.insert(Task {
            gen,
            registered,
            canceled: false,
            started: wait == Wait::Running,
            notify_exit: false,
            wait,
            since: 0,
            state,
        });
        debug_assert_eq!(inserted, key);
        Ok((key, gen))
    }

    /// `copas.wakeup`: a sleeping or forever-sleeping task becomes ready; anything else is left alone.
    pub fn wakeup(&self, id: i64) -> mlua::Result<()> {
        let (key, gen) = unpack(id);
        let mut s = self.sched.borrow_mut();
        let Some(t) = s.task(key, gen) else {
            return Ok(());
        };
        match t.wait {
            Wait::Sleeping(_) | Wait::SleepingUnbounded => s.make_ready(key),
            Wait::Forever { weak: false } => s.make_ready(key),
            Wait::Forever { weak: true } => {
                let co: Value = self.store.forever.raw_get(key)?;
                if co.is_nil() {
                    // Collected while asleep: nothing is left to wake.
                    s.remove_task(key);
                } else {
                    self.store.threads.raw_set(key, co)?;
                    self.store.forever.raw_set(key, Value::Nil)?;
                    s.make_ready(key);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// `copas.removethread`: a registered task is never resumed again; any task asleep is taken
    /// off the schedule at once (upstream removes it from the sleep structures, registered or not).
    /// Returns whether the task will never run again.
    pub fn remove(&self, id: i64) -> bool {
        let (key, gen) = unpack(id);
        let mut s = self.sched.borrow_mut();
        let Some(t) = s.task(key, gen) else {
            return false;
        };
        if t.registered {
            t.canceled = true;
        }
        let canceled = t.canceled;
        if matches!(
            t.wait,
            Wait::Sleeping(_) | Wait::SleepingUnbounded | Wait::Forever { .. }
        ) {
            drop(s);
            self.discard(key);
            return true;
        }
        canceled
    }

    /// True while the task exists and has not been removed.
    pub fn alive(&self, id: i64) -> bool {
        let (key, gen) = unpack(id);
        let mut s = self.sched.borrow_mut();
        matches!(s.task(key, gen), Some(t) if !t.canceled)
    }

    /// Removes a task and lets go of its coroutine. Only the table that holds it is touched:
    /// LuaJIT inserts a key even when the value assigned through the C API is nil.
    fn discard(&self, key: usize) {
        let was_forever = {
            let mut s = self.sched.borrow_mut();
            let Some(t) = s.tasks.get(key) else {
                return;
            };
            let forever = t.wait == Wait::Forever { weak: true };
            s.remove_task(key);
            forever
        };
        if was_forever {
            let _ = self.store.forever.raw_set(key, Value::Nil);
        } else {
            // SAFETY: a task not moved to the weak table always has its coroutine in
            // `Store::threads` (see `insert_task`, `demote`, `wakeup`), a table without metatable.
            unsafe { self.clear_threads.clear(key) };
        }
    }

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
        let mut s = self.sched.borrow_mut();
        if matches!(s.timers.get(key), Some(t) if t.gen == gen) {
            s.timers.remove(key);
        }
    }

    pub fn timer_count(&self) -> usize {
        self.sched.borrow().timers.len()
    }

    /// (ready, sleeping, forever): the task counts behind `copas.status()`.
    pub fn counts(&self) -> (usize, usize, usize) {
        self.sweep_collected_forever(true);
        let s = self.sched.borrow();
        (s.ready.len(), s.sleeping, s.forever)
    }

    /// Frees tasks whose forever-sleeping coroutine was garbage collected. Runs when the set has
    /// doubled since the last sweep (or when asked), so its cost stays linear overall.
    fn sweep_collected_forever(&self, always: bool) {
        let mut s = self.sched.borrow_mut();
        if s.forever == 0 || (!always && s.forever < 2 * s.forever_at_sweep + 64) {
            return;
        }
        let asleep: Vec<usize> = s
            .tasks
            .iter()
            .filter(|(_, t)| t.wait == Wait::Forever { weak: true })
            .map(|(k, _)| k)
            .collect();
        for key in asleep {
            if matches!(self.store.forever.raw_get::<Value>(key), Ok(Value::Nil)) {
                s.remove_task(key);
            }
        }
        s.forever_at_sweep = s.forever;
    }

    /// Moves forever-sleepers from the strong to the weak table: all of them, or those asleep
    /// for more than a second (checked at most once a second).
    fn demote(&self, all: bool) {
        const SECOND: u64 = 1_000_000_000;
        let keys: Vec<usize> = {
            let mut s = self.sched.borrow_mut();
            let now = s.step_now;
            if !all && now.saturating_sub(s.last_demotion) < SECOND {
                return;
            }
            s.last_demotion = now;
            s.tasks
                .iter()
                .filter(|(_, t)| {
                    t.wait == Wait::Forever { weak: false }
                        && (all || now.saturating_sub(t.since) >= SECOND)
                })
                .map(|(k, _)| k)
                .collect()
        };
        for key in keys {
            let Ok(co) = self.store.threads.raw_get::<Value>(key) else {
                continue;
            };
            if self.store.forever.raw_set(key, co).is_err() {
                continue;
            }
            // SAFETY: a strong forever-sleeper's coroutine is in `Store::threads`.
            unsafe { self.clear_threads.clear(key) };
            if let Some(t) = self.sched.borrow_mut().tasks.get_mut(key) {
                t.wait = Wait::Forever { weak: true };
            }
        }
    }

    /// `copas.finished()`: nothing ready, asleep or registered, and no forever-sleeper that a
    /// pending timeout could still wake. When finished, the forever-sleepers left are abandoned
    /// unless someone wakes them: they go to the weak table, to be collected if nobody can.
    pub fn finished(&self) -> bool {
        let done = self.is_finished();
        if done && self.sched.borrow().forever > 0 {
            self.demote(true);
        }
        done
    }

    fn is_finished(&self) -> bool {
        let s = self.sched.borrow();
        s.ready.is_empty()
            && s.sleeping == 0
            && !s.reactor.has_sources()
            && (s.forever == 0 || s.timers.is_empty())
    }

    pub fn set_stats(&self, on: bool) {
        self.sched.borrow_mut().stats.set_enabled(on);
    }

    pub fn stats_enabled(&self) -> bool {
        self.sched.borrow().stats.enabled()
    }

    pub fn take_stats(&self, out: &Table) -> mlua::Result<()> {
        self.sched.borrow_mut().stats.take_into(out)
    }

    /// `copas.cancelall()`: every task but the running ones, every sleeper and every pending
    /// timeout is dropped; nothing of it runs again.
    pub fn cancel_all(&self) -> mlua::Result<()> {
        let doomed: Vec<usize> = self
            .sched
            .borrow()
            .tasks
            .iter()
            .filter(|(_, t)| t.wait != Wait::Running)
            .map(|(k, _)| k)
            .collect();
        for key in doomed {
            self.discard(key);
        }
        let mut s = self.sched.borrow_mut();
        s.timers.clear();
        s.ready.clear();
        s.deadlines.clear();
        s.sleeping = 0;
        s.forever = 0;
        Ok(())
    }

    /// `copas.step`: wait for the next event or deadline, then run what became ready.
    /// Returns whether any socket event was handled.
    pub fn step(&self, lua: &Lua, timeout: Option<f64>) -> mlua::Result<bool> {
        let events = self.wait(timeout)?;
        let due_timers = self.sched.borrow_mut().expire();
        for (key, gen) in due_timers {
            guarded(|| self.fire_timer(lua, key, gen));
        }
        let mut batch = {
            let mut s = self.sched.borrow_mut();
            let spare = std::mem::take(&mut s.spare);
            std::mem::replace(&mut s.ready, spare)
        };
        for &(key, gen) in &batch {
            guarded(|| self.run_task(lua, key, gen));
        }
        batch.clear();
        self.sched.borrow_mut().spare = batch;
        if self.sched.borrow().forever > 0 {
            self.demote(false);
            self.sweep_collected_forever(false);
        }
        Ok(events > 0)
    }

    /// `copas.loop`'s inner loop without a return to Lua per step: steps until finished, or
    /// returns false as soon as `copas.step` or `copas.finished` no longer are the built-in ones
    /// (programs may wrap them, and the loop must then go through the table, as upstream).
    pub fn run(
        &self,
        lua: &Lua,
        copas: &Table,
        step: &Function,
        finished: &Function,
        timeout: Option<f64>,
    ) -> mlua::Result<bool> {
        let same = |name: &LuaString, f: &Function| matches!(copas.raw_get::<Value>(name), Ok(Value::Function(g)) if g == *f);
        loop {
            if !same(&self.keys.step, step) || !same(&self.keys.finished, finished) {
                return Ok(false);
            }
            self.step(lua, timeout)?;
            if self.finished() {
                return Ok(true);
            }
        }
    }

    fn wait(&self, timeout: Option<f64>) -> mlua::Result<usize> {
        let mut s = self.sched.borrow_mut();
        let wait = s.wait_time(timeout);
        let stats = s.stats.enabled();
        if stats {
            s.stats.before_wait();
        }
        let events = s.reactor.wait(wait).map_err(mlua::Error::external)?;
        if stats {
            s.stats.after_wait();
        }
        Ok(events)
    }

    fn run_task(&self, lua: &Lua, key: usize, gen: u32) {
        let (state, arg) = {
            let mut s = self.sched.borrow_mut();
            let now = s.step_now;
            let Some(t) = s.task(key, gen).filter(|t| t.wait == Wait::Ready) else {
                return;
            };
            if t.canceled {
                drop(s);
                self.discard(key);
                return;
            }
            t.wait = Wait::Running;
            let elapsed = (now.saturating_sub(t.since)) as f64 / 1e9;
            (
                t.state,
                std::mem::replace(&mut t.started, true).then_some(elapsed),
            )
        };
        if self.tracing() {
            self.trace_task("resume", key, None);
        }
        // SAFETY: the task is Ready, so `Store::threads[key]` holds its coroutine and `state`
        // points to a live lua_State.
        let outcome = unsafe { resume(lua, state, self.token, arg, &self.errors) };
        self.settle(lua, key, outcome);
    }

    /// Files a task according to what its resume ended with.
    fn settle(&self, lua: &Lua, key: usize, outcome: Outcome) {
        match outcome {
            Outcome::Wait { op, arg } => {
                if self.tracing() {
                    self.trace_task("yield", key, Some((op, arg)));
                }
                if !self.file_wait(key, op, arg) {
                    self.end_task(key, Some(foreign_yield_error(lua)));
                }
            }
            Outcome::ForeignYield => self.end_task(key, Some(foreign_yield_error(lua))),
            Outcome::Finished => {
                if self.tracing() {
                    self.trace_task("exit", key, None);
                }
                self.end_task(key, None);
            }
            Outcome::Failed(err) => self.end_task(key, Some(err)),
        }
    }

    /// A task ended, normally or with `error`: report the error, run the exit hook if asked
    /// for, and let go of the coroutine.
    fn end_task(&self, key: usize, error: Option<Value>) {
        let notify = matches!(self.sched.borrow().tasks.get(key), Some(t) if t.notify_exit);
        if error.is_none() && !notify {
            self.discard(key);
            return;
        }
        let co = self.store.threads.raw_get::<Thread>(key);
        self.discard(key);
        let Ok(co) = co else {
            return;
        };
        if let Some(err) = error {
            self.call_hook(|h| h.on_error.clone(), (err, co.clone()));
        }
        if notify {
            self.call_hook(|h| h.on_exit.clone(), co);
        }
    }

    /// `notify_exit` for the task: the exit hook runs when it ends.
    pub fn watch_exit(&self, id: i64) {
        let (key, gen) = unpack(id);
        if let Some(t) = self.sched.borrow_mut().task(key, gen) {
            t.notify_exit = true;
        }
    }

    /// Puts a yielded task where its opcode says. False for an opcode this core does not know.
    fn file_wait(&self, key: usize, op: i64, arg: Option<f64>) -> bool {
        let mut s = self.sched.borrow_mut();
        let now = s.step_now;
        let Some(t) = s.tasks.get_mut(key) else {
            return true;
        };
        t.since = now;
        if t.canceled {
            drop(s);
            self.discard(key);
            return true;
        }
        match op {
            OP_PAUSE => match arg.filter(|x| *x > 0.0) {
                None => s.make_ready(key),
                Some(x) => match s.deadlines.deadline_after(x) {
                    Some(at) => {
                        let gen = s.tasks[key].gen;
                        s.deadlines.push(at, Target::Task(key), gen);
                        s.tasks[key].wait = Wait::Sleeping(at);
                        s.sleeping += 1;
                        s.compact();
                    }
                    None => {
                        s.tasks[key].wait = Wait::SleepingUnbounded;
                        s.sleeping += 1;
                    }
                },
            },
            OP_FOREVER => {
                s.tasks[key].wait = Wait::Forever { weak: false };
                s.forever += 1;
            }
            _ => return false,
        }
        true
    }

    /// Runs one due `copas.timeout` callback inside the core timer coroutine.
    fn fire_timer(&self, lua: &Lua, key: usize, gen: u32) {
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
                Some(id as f64),
                &self.errors,
            )
        } {
            Outcome::Wait {
                op: OP_TIMER_DONE, ..
            } => {}
            other => {
                // The callback yielded into copas (or the timer body ended): the coroutine
                // becomes an ordinary task and a fresh core timer takes over.
                self.hooks.borrow_mut().core_timer = None;
                self.adopt(lua, timer_co, other);
            }
        }
    }

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

    fn adopt(&self, lua: &Lua, co: Thread, outcome: Outcome) {
        if let Ok((key, _)) = self.insert_task(co, false, Wait::Running) {
            self.settle(lua, key, outcome);
        }
    }

    /// Calls a shim hook. A failing hook (an error handler whose own reporting fails) must
    /// not stop the loop, so its error only goes to stderr.
    fn call_hook(&self, pick: impl Fn(&Hooks) -> Option<Function>, args: impl mlua::IntoLuaMulti) {
        let hook = pick(&self.hooks.borrow());
        if let Some(hook) = hook {
            if let Err(e) = hook.call::<()>(args) {
                let text = e.to_string();
                let first = text.lines().next().unwrap_or_default();
                eprintln!("copas: error while reporting a thread's error: {first}");
            }
        }
    }

    fn tracing(&self) -> bool {
        self.hooks.borrow().tracer.is_some()
    }

    fn trace_task(&self, event: &str, key: usize, wait: Option<(i64, Option<f64>)>) {
        if let Ok(co) = self.store.threads.raw_get::<Thread>(key) {
            self.trace(event, &co, wait);
        }
    }

    fn trace(&self, event: &str, co: &Thread, wait: Option<(i64, Option<f64>)>) {
        let tracer = self.hooks.borrow().tracer.clone();
        if let Some(tracer) = tracer {
            let (op, arg) = wait.map_or((None, None), |(op, arg)| (Some(op), arg));
            let _ = tracer.call::<()>((event, co.clone(), op, arg));
        }
    }
}
