//! Tasks, the ready queue, the resume loop: `step`, `finished`, wake-ups, removal and the
//! `copas.timeout` timers that run inside the core timer coroutine.
//!
//! Rust holds only slab keys; the coroutines themselves live in Lua tables indexed by key:
//! `threads` (strong), or `forever` (weak values) for a task that has slept until woken for
//! more than a second or when the loop finishes, so that an abandoned sleeper can be collected
//! (upstream keeps them in a weak set). Short lock and semaphore waits never move. No `RefCell`
//! borrow is held across a resume: the coroutine calls back into this module. Nor across a Lua
//! allocation (a table entry, a string, a handle): the collector may run `__gc` finalizers
//! there, and a finalizer may call any public function, so every such point leaves the core
//! consistent (a task's slot is taken before its coroutine is stored; the moves between the
//! strong and the weak table allocate nothing, see `raw.rs`).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::os::fd::RawFd;
use std::os::raw::c_void;
use std::time::Duration;

use mlua::{ffi, AnyUserData, Function, Lua, Table, Thread, Value};
use slab::Slab;

use crate::dns::{Answer, Resolver};
use crate::io::{self, is_luasocket_client, luasocket_fd, Conn, Pattern, Received};
use crate::raw::{EntryWatch, TaskSlots};
use crate::reactor::{Reactor, Ready};
use crate::resume::{resume, Arg, Outcome, ValueBox};
use crate::semaphore::{Semaphore, Semaphores, Take};
use crate::sockets::{Server, Sockets, TaskRef};
use crate::stats::Stats;
use crate::timers::{Deadlines, Entry, Target};

/// Yield opcodes: `coroutine.yield(TOKEN, op, arg, arg2)`.
pub const OP_PAUSE: i64 = 1;
pub const OP_FOREVER: i64 = 2;
pub const OP_TIMER_DONE: i64 = 3;
/// Wait until fd `arg` is readable (writable), or until the monotonic deadline `arg2` (seconds,
/// see `Core::now`). The yield returns 1 when the fd is worth a retry, 0 on the deadline.
pub const OP_READ: i64 = 4;
pub const OP_WRITE: i64 = 5;
/// Wait for name lookup `arg` to finish, or until the deadline `arg2`; returns as OP_READ.
pub const OP_LOOKUP: i64 = 6;
/// Wait in the line of semaphore `arg` for `arg2` resources, at most `arg3` seconds (none: for
/// ever); `arg4`, when given, is the count the Lua side kept while nobody waited. The yield
/// returns 1 when granted, 0 on the timeout, 2 when the semaphore was destroyed.
pub const OP_SEMAPHORE: i64 = 7;
const GRANTED: f64 = 1.0;
const TIMED_OUT: f64 = 0.0;
const DESTROYED: f64 = 2.0;

/// A wait at least this long (with nothing happening) counts as idle.
const IDLE_WAIT: Duration = Duration::from_millis(100);
const IDLE_GC_INTERVAL: Duration = Duration::from_secs(1);

/// How long an accept that failed (descriptors ran out) waits before it is tried again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What the shim's accept hook reports.
const ACCEPTED: i64 = 1;
const ACCEPT_FAILED: i64 = 2;

const NESTED_STEP: &str = "copas.step and copas.loop cannot run inside a step (from a copas \
     thread, an error handler, a timer callback or a finalizer)";

/// Clears `Core::stepping` when the step ends, however it ends.
struct StepGuard<'a>(&'a Cell<bool>);

impl Drop for StepGuard<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

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
    /// `pauseforever()`: until woken; does not keep the loop alive by itself.
    Forever,
    /// Waiting for readiness of `fd`, at most until `at`.
    Io {
        fd: RawFd,
        write: bool,
        at: Option<u64>,
    },
    /// Waiting for a name lookup, at most until `at`.
    Lookup {
        id: u64,
        at: Option<u64>,
    },
    /// In the line of semaphore `id`, at most until `at`. Not ended by `copas.wakeup`; otherwise
    /// a forever-sleeper (the semaphore's Lua object holds the coroutine while it may give).
    Semaphore {
        id: i64,
        at: Option<u64>,
    },
}

impl Wait {
    fn deadline(&self) -> Option<u64> {
        match *self {
            Wait::Sleeping(at) => Some(at),
            Wait::Io { at, .. } | Wait::Lookup { at, .. } | Wait::Semaphore { at, .. } => at,
            _ => None,
        }
    }

    /// A wait without a deadline, whose coroutine moves to `Store::forever` when it lasts
    /// (`Core::demote`), to be collected if nothing can end it.
    fn is_forever(&self) -> bool {
        matches!(self, Wait::Forever | Wait::Semaphore { at: None, .. })
    }
}

struct Task {
    gen: u32,
    registered: bool,
    canceled: bool,
    started: bool,
    /// Call the exit hook when the task ends (set by the shim: error handler, autoclose).
    notify_exit: bool,
    wait: Wait,
    /// Its coroutine is in `Store::forever` (weak), moved there by a long forever-wait; it
    /// goes back to `Store::threads` before the task runs again (`Core::revive`).
    weak: bool,
    /// What its next resume returns, when its wait ended with a result (I/O, lookup, semaphore).
    result: Option<f64>,
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
    /// Tasks in an I/O wait.
    io_waiting: usize,
    forever_at_sweep: usize,
    /// `step_now` of the last pass that moved long forever-sleepers to the weak table.
    last_demotion: u64,
    /// Monotonic time of the last idle garbage collection.
    last_idle_gc: u64,
    /// The clock read once per step; yields and resumes within the step use it.
    step_now: u64,
    reactor: Reactor,
    /// The readiness list of the previous step, emptied, kept for its capacity.
    spare_events: Vec<Ready>,
    sockets: Sockets,
    resolver: Resolver,
    lookup_waiters: HashMap<u64, TaskRef>,
    /// Weak tasks made ready: `Core::revive_woken` moves their coroutine back before anything
    /// else can happen (a collection could take it).
    revive: Vec<usize>,
    semaphores: Semaphores,
    /// Semaphore waits with a timeout: they count as `copas.timeout` timers, as upstream's are.
    timed_waits: usize,
    /// The waiters a semaphore operation granted to, emptied, kept for its capacity.
    granted: Vec<TaskRef>,
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

    /// A deadline in seconds of `Core::now` as heap time.
    fn deadline_at(&self, seconds: Option<f64>) -> Option<u64> {
        let s = seconds.filter(|s| s.is_finite())?;
        Some(Duration::try_from_secs_f64(s.max(0.0)).ok()?.as_nanos() as u64)
    }

    fn push_deadline(&mut self, key: usize, at: Option<u64>) {
        if let Some(at) = at {
            let gen = self.tasks[key].gen;
            self.deadlines.push(at, Target::Task(key), gen);
            self.compact();
        }
    }

    /// Takes a task out of whatever wait it is in, keeping the counters right.
    fn leave_wait(&mut self, key: usize) {
        let Some(t) = self.tasks.get_mut(key) else {
            return;
        };
        match t.wait {
            Wait::Sleeping(_) | Wait::SleepingUnbounded => self.sleeping -= 1,
            Wait::Forever => self.forever -= 1,
            Wait::Io { .. } => self.io_waiting -= 1,
            Wait::Lookup { id, .. } => {
                self.lookup_waiters.remove(&id);
            }
            Wait::Semaphore { at, .. } => {
                self.forever -= 1;
                self.timed_waits -= usize::from(at.is_some());
            }
            _ => {}
        }
        t.wait = Wait::Running;
    }

    /// Ends a task's wait with `result` for its resume, and queues it.
    fn end_wait(&mut self, key: usize, result: f64) {
        self.make_ready(key);
        self.tasks[key].result = Some(result);
    }

    /// True while a socket, server or lookup could still wake the loop.
    fn has_sources(&self) -> bool {
        self.io_waiting > 0 || self.sockets.servers() > 0 || self.resolver.pending() > 0
    }

    /// Ends an I/O or lookup wait: the task becomes ready (queued unless `queue` is false: the
    /// caller runs it at once), and its yield returns whether it was readiness.
    fn end_io_wait(&mut self, key: usize, ready: bool, queue: bool) {
        self.leave_wait(key);
        let t = &mut self.tasks[key];
        t.wait = Wait::Ready;
        t.result = Some(if ready { 1.0 } else { 0.0 });
        if queue {
            self.ready.push_back((key, t.gen));
        }
    }

    /// The waiters in `list` still waiting on this fd and direction, made ready to run now.
    fn claim_waiters(&mut self, list: &mut Vec<TaskRef>, fd: RawFd, write: bool) {
        list.retain(|&(key, gen)| {
            let waiting = matches!(self.task(key, gen),
                Some(t) if matches!(t.wait, Wait::Io { fd: f, write: w, .. } if f == fd && w == write));
            if waiting {
                self.end_io_wait(key, true, false);
            }
            waiting
        });
    }

    fn waits_on(&self, task: &TaskRef) -> bool {
        matches!(self.tasks.get(task.0), Some(t) if t.gen == task.1 && matches!(t.wait, Wait::Io { .. }))
    }

    /// Drops a task's record (its coroutine is the caller's business).
    fn remove_task(&mut self, key: usize) {
        self.leave_wait(key);
        self.tasks.remove(key);
    }

    /// Queues a task. A weak one (only a wake-up, a grant or an expiry ends its wait, and each
    /// is followed by `Core::revive_woken`) gets its coroutine back in `Store::threads` first.
    fn make_ready(&mut self, key: usize) {
        if self.tasks[key].weak {
            self.revive.push(key);
        }
        self.leave_wait(key);
        let t = &mut self.tasks[key];
        t.wait = Wait::Ready;
        self.ready.push_back((key, t.gen));
    }

    fn is_live(&self, e: &Entry) -> bool {
        match e.target() {
            Target::Task(k) => matches!(self.tasks.get(k),
                Some(t) if t.gen == e.gen() && t.wait.deadline() == Some(e.at)),
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
        if !self.ready.is_empty() || !self.sockets.accept_again.is_empty() {
            return Some(Duration::ZERO);
        }
        self.drop_dead_heads();
        let user = timeout
            .filter(|t| *t >= 0.0)
            .and_then(|t| Duration::try_from_secs_f64(t).ok());
        // Rounded up to whole milliseconds: epoll waits in milliseconds anyway, and sleepers due
        // within one millisecond then wake in one step instead of one step (and syscall) each.
        let backoff = self.sockets.backoff.iter().map(|(_, at)| *at).min();
        let earliest = match (self.deadlines.earliest(), backoff) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let next = earliest.map(|at| {
            let ns = at.saturating_sub(self.deadlines.now());
            Duration::from_millis(ns.div_ceil(1_000_000))
        });
        match (user, next) {
            (Some(u), Some(n)) => Some(u.min(n)),
            (None, Some(n)) => Some(n),
            // With no deadline and no socket nothing can end the wait early, and nothing can
            // happen during it: return at once (loop(timeout) would otherwise sit out its
            // timeout on the way out, where upstream waits one 0.1 s tick).
            (_, None) if !self.has_sources() => Some(Duration::ZERO),
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
                Target::Task(k) => self.expire_task(k),
                Target::Timer(k) => due_timers.push((k, self.timers[k].gen)),
            }
        }
        due_timers
    }
}

impl Sched {
    /// A task's deadline passed: a sleeper wakes; an I/O waiter leaves its fd's list (so later
    /// readiness never resumes it, upstream bug #208) and its yield returns 0.
    fn expire_task(&mut self, key: usize) {
        match self.tasks[key].wait {
            Wait::Io { fd, write, .. } => {
                let gen = self.tasks[key].gen;
                self.sockets.remove_waiter(fd, write, (key, gen));
                self.end_io_wait(key, false, true);
            }
            Wait::Lookup { .. } => self.end_io_wait(key, false, true),
            Wait::Semaphore { id, .. } => {
                self.end_wait(key, TIMED_OUT);
                // The line may have been held up by this waiter alone.
                self.on_semaphore(id, |sema, waiting, granted| sema.serve(waiting, granted));
            }
            _ => self.make_ready(key),
        }
    }

    /// Runs `op` on semaphore `id` (None when it is gone); the waiters it grants end their wait.
    fn on_semaphore<R>(
        &mut self,
        id: i64,
        op: impl FnOnce(&mut Semaphore, &dyn Fn(TaskRef) -> bool, &mut Vec<TaskRef>) -> R,
    ) -> Option<R> {
        let (key, gen) = unpack(id);
        let Sched {
            tasks,
            semaphores,
            granted,
            ..
        } = self;
        let sema = semaphores.get(key, gen)?;
        let waiting = |task| waits_for_semaphore(tasks, task, id);
        let r = op(sema, &waiting, granted);
        let mut granted = std::mem::take(&mut self.granted);
        for &(key, _) in &granted {
            self.end_wait(key, GRANTED);
        }
        granted.clear();
        self.granted = granted; // kept for its capacity
        Some(r)
    }

    /// Servers to accept on this step: those that accepted last step and those whose backoff
    /// after a failed accept is over.
    fn servers_to_retry(&mut self) -> Vec<RawFd> {
        let mut fds = std::mem::take(&mut self.sockets.accept_again);
        if !self.sockets.backoff.is_empty() {
            let now = self.deadlines.now();
            self.sockets.backoff.retain(|&(fd, at)| {
                if at <= now {
                    fds.push(fd);
                }
                at > now
            });
        }
        fds
    }
}

/// Lua-side storage for the values the scheduler refers to by key.
struct Store {
    threads: Table,
}

struct Hooks {
    on_error: Option<Function>,
    on_exit: Option<Function>,
    on_accept: Option<Function>,
    tracer: Option<Function>,
    core_timer_factory: Option<Function>,
    core_timer: Option<Thread>,
}

/// Whether `task` (still) waits in the line of semaphore `id`.
fn waits_for_semaphore(tasks: &Slab<Task>, (key, gen): TaskRef, id: i64) -> bool {
    matches!(tasks.get(key), Some(t) if t.gen == gen
        && matches!(t.wait, Wait::Semaphore { id: i, .. } if i == id))
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

pub struct Core {
    sched: RefCell<Sched>,
    /// A step is running (see `enter_step`).
    stepping: Cell<bool>,
    slots: TaskSlots,
    store: Store,
    hooks: RefCell<Hooks>,
    values: ValueBox,
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
            slots: TaskSlots::new(lua, &threads, &forever)?,
            stepping: Cell::new(false),
            sched: RefCell::new(Sched {
                tasks: Slab::new(),
                ready: VecDeque::new(),
                spare: VecDeque::new(),
                deadlines: Deadlines::new(),
                timers: Slab::new(),
                next_gen: 0,
                sleeping: 0,
                forever: 0,
                io_waiting: 0,
                forever_at_sweep: 0,
                last_demotion: 0,
                last_idle_gc: 0,
                step_now: 0,
                reactor: Reactor::new(),
                spare_events: Vec::new(),
                sockets: Sockets::default(),
                resolver: Resolver::new(),
                lookup_waiters: HashMap::new(),
                revive: Vec::new(),
                semaphores: Semaphores::default(),
                timed_waits: 0,
                granted: Vec::new(),
                stats: Stats::default(),
            }),
            store: Store { threads },
            hooks: RefCell::new(Hooks {
                on_error: None,
                on_exit: None,
                on_accept: None,
                tracer: None,
                core_timer_factory: None,
                core_timer: None,
            }),
            values: ValueBox::new(lua)?,
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

    /// Takes the slot first and stores the coroutine after: storing allocates, and a finalizer
    /// run by that allocation may add a thread itself (it must get another slot) or cancel all
    /// (which leaves `Running` tasks alone, so the record stays `Running` until its coroutine
    /// is stored, as `discard` expects of every other task).
    fn insert_task(&self, co: Thread, registered: bool, wait: Wait) -> mlua::Result<(usize, u32)> {
        let (key, gen) = {
            let mut s = self.sched.borrow_mut();
            let gen = s.next_gen();
            let key = s.tasks.insert(Task {
                gen,
                registered,
                canceled: false,
                started: wait == Wait::Running,
                notify_exit: false,
                wait: Wait::Running,
                weak: false,
                result: None,
                since: 0,
                state: co.state(),
            });
            (key, gen)
        };
        if let Err(e) = self.store.threads.raw_set(key, co) {
            self.sched.borrow_mut().tasks.remove(key);
            return Err(e);
        }
        self.sched.borrow_mut().tasks[key].wait = wait;
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
            Wait::Sleeping(_) | Wait::SleepingUnbounded | Wait::Forever => s.make_ready(key),
            _ => {}
        }
        drop(s);
        self.revive_woken();
        Ok(())
    }

    /// Moves the coroutines of weak tasks just made ready back from `Store::forever` to
    /// `Store::threads`; a task whose coroutine was collected meanwhile is dropped.
    fn revive_woken(&self) {
        let keys = std::mem::take(&mut self.sched.borrow_mut().revive);
        for key in keys {
            let revived = self.slots.revive(key);
            let mut s = self.sched.borrow_mut();
            if revived {
                if let Some(t) = s.tasks.get_mut(key) {
                    t.weak = false;
                }
            } else {
                s.remove_task(key);
            }
        }
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
            Wait::Sleeping(_)
                | Wait::SleepingUnbounded
                | Wait::Forever
                | Wait::Io { .. }
                | Wait::Lookup { .. }
                | Wait::Semaphore { .. }
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
            let forever = t.weak;
            s.remove_task(key);
            forever
        };
        if was_forever {
            self.slots.clear_forever(key);
        } else {
            // SAFETY: a task not moved to the weak table always has its coroutine in
            // `Store::threads` (see `insert_task`, `demote`, `wakeup`), a table without metatable.
            unsafe { self.slots.clear(key) };
        }
    }

    /// `copas.semaphore.new`: a semaphore of `max` resources holding `start`; returns its id.
    pub fn semaphore_new(&self, max: f64, start: f64) -> mlua::Result<i64> {
        let mut s = self.sched.borrow_mut();
        let gen = s.next_gen();
        let key = s.semaphores.insert(gen, max, start);
        let id = pack(key, gen);
        if id.is_err() {
            s.semaphores.remove(key, gen);
        }
        id
    }

    /// `take(requested)` without waiting: granted, too many, or the caller waits in line
    /// (OP_SEMAPHORE); and the count if no waiter is left (`Semaphore::released`). None when
    /// the semaphore is gone.
    pub fn semaphore_take(&self, id: i64, requested: f64) -> Option<(Take, Option<f64>)> {
        let take = self
            .sched
            .borrow_mut()
            .on_semaphore(id, |sema, waiting, granted| {
                (
                    sema.take(requested, waiting, granted),
                    sema.released(waiting),
                )
            });
        self.revive_woken();
        take
    }

    /// `give(amount)`: false when capped at the maximum ("too many"); and the count if no
    /// waiter is left. None when the semaphore is gone.
    pub fn semaphore_give(&self, id: i64, amount: f64) -> Option<(bool, Option<f64>)> {
        let give = self
            .sched
            .borrow_mut()
            .on_semaphore(id, |sema, waiting, granted| {
                (sema.give(amount, waiting, granted), sema.released(waiting))
            });
        self.revive_woken();
        give
    }

    /// (count, resources waited for minus count, whether no waiter is left) of a semaphore;
    /// None when it is gone.
    pub fn semaphore_counts(&self, id: i64) -> Option<(f64, f64, bool)> {
        self.sched
            .borrow_mut()
            .on_semaphore(id, |sema, waiting, _| {
                (
                    sema.count(),
                    sema.wait(waiting),
                    sema.released(waiting).is_some(),
                )
            })
    }

    /// Forgets a semaphore. `destroyed`: its waiters' takes return "destroyed" (otherwise its
    /// Lua object was collected, and so were they, or they wait for their timeout).
    pub fn semaphore_remove(&self, id: i64, destroyed: bool) {
        let (key, gen) = unpack(id);
        {
            let mut s = self.sched.borrow_mut();
            let line = s.semaphores.remove(key, gen);
            if destroyed {
                for task in line {
                    if waits_for_semaphore(&s.tasks, task, id) {
                        s.end_wait(task.0, DESTROYED);
                    }
                }
            }
        }
        self.revive_woken();
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

    /// Pending `copas.timeout` timers, counting semaphore waits with a timeout (upstream arms
    /// one for each).
    pub fn timer_count(&self) -> usize {
        let s = self.sched.borrow();
        s.timers.len() + s.timed_waits
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
            .filter(|(_, t)| t.weak)
            .map(|(k, _)| k)
            .collect();
        for key in asleep {
            if self.slots.collected(key) {
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
                    t.wait.is_forever() && !t.weak && (all || now.saturating_sub(t.since) >= SECOND)
                })
                .map(|(k, _)| k)
                .collect()
        };
        for key in keys {
            // Each move is checked again: a finalizer run by an earlier one may have woken,
            // removed or replaced any of these tasks.
            if self.is_strong_forever_sleeper(key) {
                self.slots.demote(key);
                if let Some(t) = self.sched.borrow_mut().tasks.get_mut(key) {
                    t.weak = true;
                }
            }
        }
    }

    fn is_strong_forever_sleeper(&self, key: usize) -> bool {
        matches!(self.sched.borrow().tasks.get(key), Some(t) if t.wait.is_forever() && !t.weak)
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
            && !s.has_sources()
            && s.sockets.accept_again.is_empty()
            && (s.forever == 0 || (s.timers.is_empty() && s.timed_waits == 0))
    }

    pub fn set_stats(&self, on: bool) {
        self.sched.borrow_mut().stats.set_enabled(on);
    }

    pub fn stats_enabled(&self) -> bool {
        self.sched.borrow().stats.enabled()
    }

    pub fn take_stats(&self, out: &Table) -> mlua::Result<()> {
        let fields = self.sched.borrow_mut().stats.take_fields();
        for (name, value) in fields.into_iter().flatten() {
            out.raw_set(name, value)?;
        }
        Ok(())
    }

    /// `copas.cancelall()`: every task but the running ones, every sleeper and every pending
    /// timeout is dropped; nothing of it runs again. Returns the descriptors the shim closes:
    /// connections somebody waited on, and servers (it cannot walk its own tables for them: a
    /// finalizer may add to them meanwhile, and `next` then fails).
    pub fn cancel_all(&self) -> (Vec<RawFd>, Vec<RawFd>) {
        let doomed: Vec<usize> = self
            .sched
            .borrow()
            .tasks
            .iter()
            .filter(|(_, t)| t.wait != Wait::Running)
            .map(|(k, _)| k)
            .collect();
        // `discard` makes no Lua allocation, so no finalizer runs in this loop.
        for key in doomed {
            self.discard(key);
        }
        let mut s = self.sched.borrow_mut();
        let to_close = s.sockets.waited_on_and_servers();
        s.timers.clear();
        s.ready.clear();
        s.deadlines.clear();
        s.sleeping = 0;
        s.forever = 0;
        s.io_waiting = 0;
        s.sockets.clear();
        s.lookup_waiters.clear();
        s.resolver = Resolver::new();
        to_close
    }

    /// `copas.step`: wait for the next event or deadline, then run what became ready.
    /// Returns whether any socket event was handled.
    pub fn step(&self, lua: &Lua, timeout: Option<f64>) -> mlua::Result<bool> {
        let _stepping = self.enter_step()?;
        self.step_once(lua, timeout)
    }

    /// Marks a step as running until the guard is dropped; an error if one runs already.
    /// A step inside a step (from a copas thread, an error handler or a finalizer) would resume
    /// tasks the outer step is in the middle of handling.
    fn enter_step(&self) -> mlua::Result<StepGuard<'_>> {
        if self.stepping.replace(true) {
            return Err(mlua::Error::runtime(NESTED_STEP));
        }
        Ok(StepGuard(&self.stepping))
    }

    fn step_once(&self, lua: &Lua, timeout: Option<f64>) -> mlua::Result<bool> {
        let (mut events, idle) = self.wait(timeout)?;
        let retry = self.sched.borrow_mut().servers_to_retry();
        let handled = !events.is_empty() || !retry.is_empty();
        if idle && !handled {
            self.collect_garbage_when_idle(lua);
        }
        for fd in retry {
            self.accept(fd)?;
        }
        for ev in events.iter().filter(|ev| ev.read) {
            self.sched
                .borrow_mut()
                .sockets
                .mark_readable(ev.fd, ev.read_closed);
            self.on_readable(lua, ev.fd)?;
        }
        for ev in events.iter().filter(|ev| ev.write) {
            self.wake_and_run(lua, ev.fd, true);
        }
        events.clear();
        self.sched.borrow_mut().spare_events = events;
        let due_timers = self.sched.borrow_mut().expire();
        self.revive_woken();
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
        Ok(handled)
    }

    /// The readable phase for one fd: a TCP server accepts a connection; otherwise every reader
    /// runs (in the order they started waiting; each retries, so none is stranded, upstream
    /// bug #165). A UDP server's datagram that nobody waits for ends its hold on the loop.
    fn on_readable(&self, lua: &Lua, fd: RawFd) -> mlua::Result<()> {
        let server = self.sched.borrow().sockets.server(fd);
        if server == Server::Tcp {
            return self.accept(fd);
        }
        if !self.wake_and_run(lua, fd, false) && server == Server::Udp {
            self.sched.borrow_mut().sockets.set_server(fd, Server::None);
        }
        Ok(())
    }

    /// Runs every task waiting on `fd` in one direction. Returns whether there was any.
    fn wake_and_run(&self, lua: &Lua, fd: RawFd, write: bool) -> bool {
        let mut claimed = {
            let mut s = self.sched.borrow_mut();
            let mut list = s.sockets.take_waiters(fd, write);
            s.claim_waiters(&mut list, fd, write);
            list
        };
        for &(key, gen) in &claimed {
            guarded(|| self.run_task(lua, key, gen));
        }
        let any = !claimed.is_empty();
        claimed.clear();
        if write && !any {
            // Nobody waits to write any more: stop the writability edges.
            let mut s = self.sched.borrow_mut();
            if s.sockets.set_write_interest(fd, false) {
                let _ = s.reactor.register(fd, false);
            }
        }
        // The list's allocation goes back for the next wait on this fd.
        self.sched
            .borrow_mut()
            .sockets
            .give_back(fd, write, claimed);
        any
    }

    /// Accepts one connection on a TCP server through the shim's hook, which starts the
    /// handler. Errors of the hook propagate out of `step`, as upstream's accept errors do.
    fn accept(&self, fd: RawFd) -> mlua::Result<()> {
        let hook = self.hooks.borrow().on_accept.clone();
        let Some(hook) = hook else {
            return Ok(());
        };
        let status: i64 = hook.call(fd)?;
        let mut s = self.sched.borrow_mut();
        if s.sockets.server(fd) != Server::Tcp {
            return Ok(()); // removed or closed by the handler
        }
        match status {
            ACCEPTED => s.sockets.accept_again.push(fd),
            ACCEPT_FAILED => {
                let at = s.deadlines.now() + ACCEPT_BACKOFF.as_nanos() as u64;
                s.sockets.backoff.push((fd, at));
            }
            _ => {}
        }
        Ok(())
    }

    pub fn set_accept_hook(&self, f: Option<Function>) {
        self.hooks.borrow_mut().on_accept = f;
    }

    /// Seconds on the monotonic clock of the deadlines (the unit of I/O wait deadlines).
    pub fn now(&self) -> f64 {
        self.sched.borrow().deadlines.now() as f64 / 1e9
    }

    /// Adds `fd` to the epoll set (once per socket object; the shim keeps track).
    pub fn watch(&self, fd: RawFd) -> mlua::Result<bool> {
        if fd < 0 {
            return Ok(false);
        }
        let mut s = self.sched.borrow_mut();
        let write = s.sockets.wants_write(fd);
        Ok(s.reactor.register(fd, write).is_ok())
    }

    /// `copas.close`: before the descriptor goes away, every task waiting on it is woken (its
    /// retry then reports "closed", upstream bug #104) and it leaves the epoll set.
    pub fn close_fd(&self, fd: RawFd) {
        let mut s = self.sched.borrow_mut();
        for (key, gen) in s.sockets.forget(fd) {
            if s.waits_on(&(key, gen)) {
                s.end_io_wait(key, true, true);
            }
        }
        s.reactor.deregister(fd);
    }

    /// Takes over reading a plain LuaSocket TCP connection (see `io.rs`). `getfd` is what its
    /// `getfd()` said; the descriptor is also read from the object itself on every call (so a
    /// socket closed behind copas's back reads as closed), and the two must agree here.
    pub fn adopt_conn(&self, lua: &Lua, skt: &AnyUserData, getfd: RawFd) -> mlua::Result<bool> {
        if !is_luasocket_client(lua, skt) {
            return Ok(false);
        }
        let (owner, fd) = luasocket_fd(skt.to_pointer());
        if fd < 0 || fd != getfd {
            return Ok(false);
        }
        let mut s = self.sched.borrow_mut();
        let write = s.sockets.wants_write(fd);
        if s.reactor.register(fd, write).is_err() {
            return Ok(false);
        }
        *s.sockets.conn(fd, owner) = Conn::new(owner);
        Ok(true)
    }

    /// `receive` on an adopted connection (the LuaSocket object at `skt`). `have` is the length
    /// of the caller's prefix. See `hotpath.rs` for the results.
    pub fn recv(
        &self,
        skt: *const c_void,
        pattern: Pattern,
        have: usize,
        partial: bool,
    ) -> Received {
        let (owner, fd) = luasocket_fd(skt);
        if fd < 0 {
            return Received::Failed("closed", Vec::new());
        }
        self.sched
            .borrow_mut()
            .sockets
            .receive(fd, owner, pattern, have, partial)
    }

    /// `send(data, i, j)` on a LuaSocket TCP connection, with LuaSocket's index rules; returns
    /// the last index sent and the error that stopped it.
    pub fn send(
        &self,
        skt: *const c_void,
        bytes: &[u8],
        i: Option<f64>,
        j: Option<f64>,
    ) -> (f64, Option<&'static str>) {
        let (_, fd) = luasocket_fd(skt);
        let size = bytes.len() as i64;
        let mut start = i.unwrap_or(1.0) as i64;
        let mut end = j.unwrap_or(-1.0) as i64;
        if start < 0 {
            start += size + 1;
        }
        if end < 0 {
            end += size + 1;
        }
        start = start.max(1);
        end = end.min(size);
        if fd < 0 {
            return ((start - 1) as f64, Some("closed"));
        }
        let (sent, err) = if start <= end {
            io::send(fd, &bytes[(start - 1) as usize..end as usize])
        } else {
            (0, None)
        };
        ((start - 1 + sent as i64) as f64, err)
    }

    /// Registers a server socket. A descriptor epoll refuses (not open, not a socket) is
    /// accepted without effect, as upstream accepts any object with a `getfd`: such a server
    /// never accepts anything.
    pub fn add_server(&self, fd: RawFd, udp: bool) -> mlua::Result<()> {
        let mut s = self.sched.borrow_mut();
        if fd < 0 || s.reactor.register(fd, false).is_err() {
            return Ok(());
        }
        s.sockets.set_write_interest(fd, false);
        let kind = if udp { Server::Udp } else { Server::Tcp };
        // Connections queued already are reported at once: epoll checks readiness on add.
        s.sockets.set_server(fd, kind);
        Ok(())
    }

    pub fn remove_server(&self, fd: RawFd) {
        self.sched.borrow_mut().sockets.set_server(fd, Server::None);
    }

    /// True while the task waits on a socket or a name lookup.
    pub fn io_waiting(&self, id: i64) -> bool {
        let (key, gen) = unpack(id);
        let mut s = self.sched.borrow_mut();
        matches!(s.task(key, gen), Some(t) if matches!(t.wait, Wait::Io { .. } | Wait::Lookup { .. }))
    }

    /// (read, write): descriptors with a waiter, servers counting as read, for `copas.status()`.
    pub fn io_counts(&self) -> (usize, usize) {
        let s = self.sched.borrow();
        s.sockets.counts(|t| s.waits_on(t))
    }

    /// A task for a coroutine that `run_now` will start (accept and UDP server handlers).
    pub fn attach(&self, co: Thread) -> mlua::Result<i64> {
        let (key, gen) = self.insert_task(co, false, Wait::Ready)?;
        let id = pack(key, gen);
        if id.is_err() {
            self.discard(key);
        }
        id
    }

    /// Runs an attached task at once, passing `arg` (upstream resumes accept handlers
    /// synchronously with the client socket).
    pub fn run_now(&self, lua: &Lua, id: i64, arg: Value) -> mlua::Result<()> {
        let (key, gen) = unpack(id);
        let state = {
            let mut s = self.sched.borrow_mut();
            let Some(t) = s
                .task(key, gen)
                .filter(|t| t.wait == Wait::Ready && !t.started)
            else {
                return Ok(());
            };
            t.wait = Wait::Running;
            t.started = true;
            t.state
        };
        self.values.put_arg(arg)?;
        guarded(|| {
            // SAFETY: an attached task's coroutine is in `Store::threads`, so `state` is live.
            let outcome = unsafe { resume(lua, state, self.token, Arg::Boxed, &self.values) };
            self.settle(lua, key, outcome);
        });
        Ok(())
    }

    /// Starts looking up `host` off the loop thread; the caller waits with OP_LOOKUP.
    pub fn resolve(&self, host: String) -> mlua::Result<i64> {
        let mut s = self.sched.borrow_mut();
        let waker = s.reactor.waker().map_err(mlua::Error::external)?;
        let id = s
            .resolver
            .start(host, waker)
            .map_err(mlua::Error::external)?;
        Ok(id as i64)
    }

    /// The answer of lookup `id` (once); None when it has not arrived (the lookup is then
    /// abandoned).
    pub fn lookup_result(&self, id: i64) -> Option<Answer> {
        self.sched.borrow_mut().resolver.take(id as u64)
    }

    /// Lookups that finished: their waiters become ready. (A thread yields for its lookup in the
    /// same turn it starts it, so an answer without a waiter was abandoned.)
    fn collect_lookups(&self) {
        let mut s = self.sched.borrow_mut();
        for id in s.resolver.collect() {
            let waiter = s.lookup_waiters.remove(&id).filter(|&(key, gen)| {
                matches!(s.task(key, gen), Some(t) if matches!(t.wait, Wait::Lookup { id: i, .. } if i == id))
            });
            match waiter {
                Some((key, _)) => s.end_io_wait(key, true, true),
                // Its thread was removed while the lookup ran: nobody will take the answer.
                None => drop(s.resolver.take(id)),
            }
        }
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
        let _stepping = self.enter_step()?;
        let binding = EntryWatch::new(lua, copas, ["step", "finished"], [step, finished])?;
        loop {
            if !binding.unchanged() {
                return Ok(false);
            }
            self.step_once(lua, timeout)?;
            if self.finished() {
                return Ok(true);
            }
        }
    }

    /// Waits for events; also tells whether the wait was long enough to call the loop idle.
    fn wait(&self, timeout: Option<f64>) -> mlua::Result<(Vec<Ready>, bool)> {
        let mut events = std::mem::take(&mut self.sched.borrow_mut().spare_events);
        let idle;
        let woke = {
            let mut s = self.sched.borrow_mut();
            let wait = s.wait_time(timeout);
            idle = wait.is_none_or(|d| d >= IDLE_WAIT);
            let stats = s.stats.enabled();
            if stats {
                s.stats.before_wait();
            }
            let woke = s
                .reactor
                .wait(wait, &mut events)
                .map_err(mlua::Error::external)?;
            if stats {
                s.stats.after_wait();
            }
            woke
        };
        if woke {
            self.collect_lookups();
        }
        Ok((events, idle))
    }

    /// A full collection when the loop idles, at most once a second. Upstream collects on 10% of
    /// its idle steps; programs rely on it to close sockets they dropped without closing (whose
    /// peers wait for "closed"), and it empties weak tables.
    fn collect_garbage_when_idle(&self, lua: &Lua) {
        let due = {
            let mut s = self.sched.borrow_mut();
            let now = s.deadlines.now();
            let due = now.saturating_sub(s.last_idle_gc) >= IDLE_GC_INTERVAL.as_nanos() as u64;
            if due {
                s.last_idle_gc = now;
            }
            due
        };
        if due {
            let _ = lua.gc_collect();
        }
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
            let arg = match t.result.take() {
                Some(result) => Arg::Number(result),
                None if std::mem::replace(&mut t.started, true) => Arg::Number(elapsed),
                None => Arg::Nothing,
            };
            (t.state, arg)
        };
        if self.tracing() {
            self.trace_task("resume", key, None);
        }
        // SAFETY: the task is Ready, so `Store::threads[key]` holds its coroutine and `state`
        // points to a live lua_State.
        let outcome = unsafe { resume(lua, state, self.token, arg, &self.values) };
        self.settle(lua, key, outcome);
    }

    /// Files a task according to what its resume ended with.
    fn settle(&self, lua: &Lua, key: usize, outcome: Outcome) {
        match outcome {
            Outcome::Wait { op, args } => {
                if self.tracing() {
                    self.trace_task("yield", key, Some((op, args[0])));
                }
                if !self.file_wait(key, op, args) {
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
    fn file_wait(&self, key: usize, op: i64, [arg, arg2, arg3, arg4]: [Option<f64>; 4]) -> bool {
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
                s.tasks[key].wait = Wait::Forever;
                s.forever += 1;
            }
            OP_READ | OP_WRITE => {
                let Some(fd) = arg.filter(|x| *x >= 0.0 && *x < i32::MAX as f64) else {
                    return false;
                };
                let fd = fd as RawFd;
                let write = op == OP_WRITE;
                if write && s.sockets.set_write_interest(fd, true) {
                    // Failing means the fd was closed behind copas's back: the wait then ends
                    // by its deadline or never, as a wait on a closed socket in upstream.
                    let _ = s.reactor.register(fd, true);
                }
                let at = s.deadline_at(arg2);
                let gen = s.tasks[key].gen;
                s.sockets.add_waiter(fd, write, (key, gen));
                s.tasks[key].wait = Wait::Io { fd, write, at };
                s.io_waiting += 1;
                s.push_deadline(key, at);
            }
            OP_LOOKUP => {
                let Some(id) = arg.map(|x| x as u64) else {
                    return false;
                };
                let at = s.deadline_at(arg2);
                let gen = s.tasks[key].gen;
                s.tasks[key].wait = Wait::Lookup { id, at };
                if s.resolver.pending_id(id) {
                    s.lookup_waiters.insert(id, (key, gen));
                    s.push_deadline(key, at);
                } else {
                    s.end_io_wait(key, true, true); // answered already
                }
            }
            OP_SEMAPHORE => {
                let (Some(id), Some(requested)) = (arg, arg2) else {
                    return false;
                };
                let id = id as i64;
                let at = arg3.and_then(|t| s.deadlines.deadline_after(t));
                let gen = s.tasks[key].gen;
                let queued = s.on_semaphore(id, |sema, _, _| {
                    if let Some(count) = arg4 {
                        sema.set_count(count);
                    }
                    sema.enqueue((key, gen), requested)
                });
                if queued.is_none() {
                    s.end_wait(key, DESTROYED);
                    return true;
                }
                s.tasks[key].wait = Wait::Semaphore { id, at };
                s.forever += 1;
                s.timed_waits += usize::from(at.is_some());
                s.push_deadline(key, at);
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
