//! The state of one scheduler instance: `Core`, and `Sched`, everything the scheduler knows,
//! behind one `RefCell`.
//!
//! The one rule of this state: **no borrow of `Core::sched` (or `Core::hooks`) is held across
//! anything that can run Lua code.** That is a resume (the coroutine calls back into the core),
//! a call of a Lua function (hooks, the accept hook, the tracer), and any Lua allocation (a
//! table entry, a string, an mlua handle): the collector may run `__gc` finalizers there, and a
//! finalizer may call any public function, `addthread` and `cancelall` included. So state is
//! never left half-made across such a point either (a task's slot is taken before its coroutine
//! is stored; the moves between the strong and the weak table allocate nothing, `slots.rs`).
//! `with_sched` keeps a borrow to the extent of one closure, which can make no Lua call.
//!
//! The concepts live in their own files, each with an `impl Core` (and `impl Sched`) block:
//! `tasks.rs` (tasks and the run → resume → settle path), `stepping.rs` (step, loop, finished,
//! cancelall), `timeouts.rs` (`copas.timeout` and deadline liveness), `readiness.rs` (fd
//! waiters, servers, accept, connection reads and writes, lookups), `semaphore.rs` (waiting
//! lines), `forever.rs` (forever-sleepers and idle collection), `hooks.rs` (error, exit, accept
//! hooks and tracing), `status.rs` (`copas.status` counts).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::os::raw::c_void;
use std::sync::Mutex;

use mlua::{Lua, Table, WeakLua};
use slab::Slab;

use crate::dns::Resolver;
use crate::hooks::Hooks;
use crate::reactor::{Reactor, Ready};
use crate::resume::ValueBox;
use crate::semaphore::Semaphores;
use crate::slots::TaskSlots;
use crate::sockets::Sockets;
use crate::stats::Stats;
use crate::tasks::{Task, TaskRef};
use crate::timeouts::TimerRec;
use crate::timers::Deadlines;

/// Lua-side storage for the values the scheduler refers to by key.
pub(crate) struct Store {
    pub(crate) threads: Table,
}

pub struct Core {
    pub(crate) sched: RefCell<Sched>,
    /// A step is running (see `enter_step`).
    pub(crate) stepping: Cell<bool>,
    pub(crate) slots: TaskSlots,
    pub(crate) store: Store,
    pub(crate) hooks: RefCell<Hooks>,
    pub(crate) values: ValueBox,
    pub(crate) token: *mut c_void,
    /// The mlua state; gone while the interpreter closes (see `lua_is_open`).
    lua: WeakLua,
    /// Where the plain C functions of `binding.rs` find this core: set once it is in its `Rc`,
    /// cleared when it is dropped. Kept for the process (`keep_for_process`), so those
    /// functions can always read it, also after the core is gone.
    pub(crate) handle: &'static Cell<*const Core>,
}

/// The addresses of the values `keep_for_process` keeps, so that they stay reachable.
static KEPT: Mutex<Vec<usize>> = Mutex::new(Vec::new());

/// Keeps `value` for the life of the process: a few bytes an instance, which the plain C
/// functions and the wrappers of an instance read, also while the interpreter closes, after the
/// instance itself is gone. Listed in `KEPT`, they are kept, not lost (valgrind).
pub(crate) fn keep_for_process<T: 'static>(value: T) -> &'static T {
    let kept: &'static T = Box::leak(Box::new(value));
    if let Ok(mut list) = KEPT.lock() {
        list.push(kept as *const T as usize);
    }
    kept
}

impl Drop for Core {
    fn drop(&mut self) {
        self.handle.set(std::ptr::null());
    }
}

pub(crate) struct Sched {
    pub(crate) tasks: Slab<Task>,
    pub(crate) ready: VecDeque<(usize, u32)>,
    /// The previous step's batch, emptied, kept for its capacity.
    pub(crate) spare: VecDeque<(usize, u32)>,
    pub(crate) deadlines: Deadlines,
    pub(crate) timers: Slab<TimerRec>,
    pub(crate) next_gen: u32,
    pub(crate) sleeping: usize,
    pub(crate) forever: usize,
    /// Tasks in an I/O wait.
    pub(crate) io_waiting: usize,
    pub(crate) forever_at_sweep: usize,
    /// `step_now` of the last pass that moved long forever-sleepers to the weak table.
    pub(crate) last_demotion: u64,
    /// Monotonic time of the last idle garbage collection.
    pub(crate) last_idle_gc: u64,
    /// The clock read once per step; yields and resumes within the step use it.
    pub(crate) step_now: u64,
    pub(crate) reactor: Reactor,
    /// The readiness list of the previous step, emptied, kept for its capacity.
    pub(crate) spare_events: Vec<Ready>,
    pub(crate) sockets: Sockets,
    pub(crate) resolver: Resolver,
    pub(crate) lookup_waiters: HashMap<u64, TaskRef>,
    /// Weak tasks made ready: `Core::revive_woken` moves their coroutine back before anything
    /// else can happen (a collection could take it).
    pub(crate) revive: Vec<TaskRef>,
    pub(crate) semaphores: Semaphores,
    /// Semaphore waits with a timeout: they count as `copas.timeout` timers, as upstream's are.
    pub(crate) timed_waits: usize,
    /// The waiters a semaphore operation granted to, emptied, kept for its capacity.
    pub(crate) granted: Vec<TaskRef>,
    pub(crate) stats: Stats,
}

impl Core {
    /// Runs `f` with the scheduler state borrowed; `f` cannot reach Lua, so the borrow never
    /// spans a resume, a Lua call or an allocation in Lua.
    pub(crate) fn with_sched<R>(&self, f: impl FnOnce(&mut Sched) -> R) -> R {
        f(&mut self.sched.borrow_mut())
    }

    /// False once the mlua state is gone: while the interpreter closes, the finalizers of its
    /// objects run in an order of their own, and one may call copas after mlua's own state
    /// was finalized. Nothing of the core may touch Lua then.
    pub(crate) fn lua_is_open(&self) -> bool {
        self.lua.try_upgrade().is_some()
    }

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
            hooks: RefCell::new(Hooks::default()),
            values: ValueBox::new(lua)?,
            token,
            lua: lua.weak(),
            handle: keep_for_process(Cell::new(std::ptr::null())),
        })
    }
}
