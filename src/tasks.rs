//! Tasks: their identity, what each waits for, and the run → resume → settle path.
//!
//! Rust holds only slab keys; the coroutines live in Lua tables indexed by key (`slots.rs`):
//! `threads` (strong), or `forever` (weak values) for a long forever-sleeper (`forever.rs`).
//! Ids handed to Lua pack the key with a generation. A turn: `run_task` resumes the coroutine
//! through the raw `lua_resume` (`resume.rs`) with nothing borrowed; `settle` files it by what
//! it yielded (`file_wait`: a sleep here, an fd or lookup wait in `readiness.rs`, a semaphore
//! wait in `semaphore_waits.rs`) or ends it, reporting an error through the error hook.

use std::os::fd::RawFd;
use std::os::raw::c_void;

use mlua::{ffi, Lua, Thread, Value};

use crate::core::{Core, Sched};
use crate::protocol::{
    OP_FOREVER, OP_LOOKUP, OP_PAUSE, OP_READ, OP_RECEIVE, OP_SEMAPHORE, OP_SEND, OP_WRITE,
};
use crate::readiness::{Ask, Transfer};
use crate::resume::{resume, Arg, Outcome};

const FOREIGN_YIELD: &str =
    "coroutine.yield was called without a resume first, user-code cannot yield to Copas";

/// Ids handed to Lua pack a slab key with a generation, so a stale id never hits a reused slot.
/// Together they stay below 2^53, so an id survives as a Lua 5.1 double.
const KEY_BITS: u32 = 24;

const GEN_MASK: u32 = (1 << 29) - 1;

/// A task's slab key and generation.
pub type TaskRef = (usize, u32);

pub(crate) fn pack(key: usize, gen: u32) -> mlua::Result<i64> {
    if key >= 1 << KEY_BITS {
        return Err(mlua::Error::runtime(
            "copas: too many threads or timers at once",
        ));
    }
    Ok(((gen as i64) << KEY_BITS) | key as i64)
}

pub(crate) fn unpack(id: i64) -> (usize, u32) {
    (
        (id & ((1 << KEY_BITS) - 1)) as usize,
        ((id >> KEY_BITS) as u32) & GEN_MASK,
    )
}

/// What a task waits for.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Wait {
    Ready,
    Running,
    /// In the deadline heap until this deadline.
    Sleeping(u64),
    /// `pause(math.huge)`: asleep for ever, and it keeps the loop alive (upstream quirk).
    SleepingUnbounded,
    /// `pauseforever()`: until woken; does not keep the loop alive by itself.
    Forever,
    /// Waiting for readiness of `fd`, at most until `at`; what it asked the core to do then
    /// (resume it, or finish its receive or send first) is in the fd's waiter list.
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

pub(crate) struct Task {
    pub(crate) gen: u32,
    pub(crate) registered: bool,
    pub(crate) canceled: bool,
    pub(crate) started: bool,
    /// Call the exit hook when the task ends (set by the shim: error handler, autoclose).
    pub(crate) notify_exit: bool,
    pub(crate) wait: Wait,
    /// Its coroutine is in `Store::forever` (weak), moved there by a long forever-wait; it
    /// goes back to `Store::threads` before the task runs again (`Core::revive`).
    pub(crate) weak: bool,
    /// What its next resume returns, when its wait ended with a result (I/O, lookup, semaphore).
    pub(crate) result: Option<f64>,
    /// What a receive or send the core finished for it gave (OP_RECEIVE, OP_SEND), for its
    /// next resume. Boxed: most tasks never have one, and a task is kept small.
    pub(crate) transfer: Option<Box<Transfer>>,
    /// Monotonic time of the last yield, to report the elapsed wait on resume.
    pub(crate) since: u64,
    /// The coroutine's lua_State. Valid while `Store::threads` holds the coroutine, which it does
    /// whenever the task can be resumed (a forever-sleeper is moved back there on wake-up).
    pub(crate) state: *mut ffi::lua_State,
}

/// Runs one task's turn so that a bug of the core (a panic) costs at most that task, never the
/// loop or the interpreter. The panic message has already gone to stderr through the hook.
pub(crate) fn guarded(turn: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(turn)).is_err() {
        eprintln!("copas: internal error in the scheduler; the loop goes on");
    }
}

fn foreign_yield_error(lua: &Lua) -> Value {
    lua.create_string(FOREIGN_YIELD)
        .map_or(Value::Nil, Value::String)
}

impl Wait {
    pub(crate) fn deadline(&self) -> Option<u64> {
        match *self {
            Wait::Sleeping(at) => Some(at),
            Wait::Io { at, .. } | Wait::Lookup { at, .. } | Wait::Semaphore { at, .. } => at,
            _ => None,
        }
    }

    /// A wait without a deadline, whose coroutine moves to `Store::forever` when it lasts
    /// (`Core::demote`), to be collected if nothing can end it.
    pub(crate) fn is_forever(&self) -> bool {
        matches!(self, Wait::Forever | Wait::Semaphore { at: None, .. })
    }
}

impl Sched {
    pub(crate) fn next_gen(&mut self) -> u32 {
        self.next_gen = (self.next_gen + 1) & GEN_MASK;
        self.next_gen
    }

    pub(crate) fn task(&mut self, key: usize, gen: u32) -> Option<&mut Task> {
        self.tasks.get_mut(key).filter(|t| t.gen == gen)
    }

    /// Takes a task out of whatever wait it is in, keeping the counters right.
    pub(crate) fn leave_wait(&mut self, key: usize) {
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
    pub(crate) fn end_wait(&mut self, key: usize, result: f64) {
        self.make_ready(key);
        self.tasks[key].result = Some(result);
    }

    /// Ends an I/O or lookup wait: the task becomes ready (queued unless `queue` is false: the
    /// caller runs it at once), and its yield returns whether it was readiness.
    pub(crate) fn end_io_wait(&mut self, key: usize, ready: bool, queue: bool) {
        self.leave_wait(key);
        let t = &mut self.tasks[key];
        t.wait = Wait::Ready;
        t.result = Some(if ready { 1.0 } else { 0.0 });
        if queue {
            self.ready.push_back((key, t.gen));
        }
    }

    /// Drops a task's record (its coroutine is the caller's business). A task waiting in a
    /// semaphore's line leaves it.
    pub(crate) fn remove_task(&mut self, key: usize) {
        let line = match self.tasks.get(key) {
            Some(t) => match t.wait {
                Wait::Semaphore { id, .. } => Some((id, (key, t.gen))),
                _ => None,
            },
            None => return,
        };
        self.leave_wait(key);
        self.tasks.remove(key);
        if let Some((id, task)) = line {
            self.left_line(id, task);
        }
    }

    /// Queues a task. A weak one (only a wake-up, a grant or an expiry ends its wait, and each
    /// is followed by `Core::revive_woken`) gets its coroutine back in `Store::threads` first.
    pub(crate) fn make_ready(&mut self, key: usize) {
        if self.tasks[key].weak {
            self.revive.push((key, self.tasks[key].gen));
        }
        self.leave_wait(key);
        let t = &mut self.tasks[key];
        t.wait = Wait::Ready;
        self.ready.push_back((key, t.gen));
    }
}

impl Core {
    /// Registers a new task, ready to run in the next resumable phase. `registered` tasks are the
    /// ones `removethread` can cancel (threads added with addthread, as upstream).
    pub fn spawn(&self, co: Thread, registered: bool) -> mlua::Result<i64> {
        let (key, gen) = self.insert_task(co, registered, Wait::Ready)?;
        let id = pack(key, gen);
        if id.is_err() {
            self.discard(key);
        } else {
            self.with_sched(|s| s.ready.push_back((key, gen)));
        }
        id
    }

    /// Takes the slot first and stores the coroutine after: storing allocates, and a finalizer
    /// run by that allocation may add a thread itself (it must get another slot) or cancel all
    /// (which leaves `Running` tasks alone, so the record stays `Running` until its coroutine
    /// is stored, as `discard` expects of every other task).
    pub(crate) fn insert_task(
        &self,
        co: Thread,
        registered: bool,
        wait: Wait,
    ) -> mlua::Result<(usize, u32)> {
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
                transfer: None,
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

    /// A task for a coroutine that `run_now` will start (accept and UDP server handlers).
    pub fn attach(&self, co: Thread) -> mlua::Result<i64> {
        let (key, gen) = self.insert_task(co, false, Wait::Ready)?;
        let id = pack(key, gen);
        if id.is_err() {
            self.discard(key);
        }
        id
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
    pub(crate) fn revive_woken(&self) {
        let tasks = self.with_sched(|s| std::mem::take(&mut s.revive));
        for (key, gen) in tasks {
            // Gone or replaced since it was queued for revival (removed, cancelled): nothing to do.
            if !self.with_sched(|s| matches!(s.tasks.get(key), Some(t) if t.gen == gen && t.weak)) {
                continue;
            }
            let revived = self.slots.revive(key);
            self.with_sched(|s| {
                if revived {
                    s.tasks[key].weak = false;
                } else {
                    s.remove_task(key);
                }
            });
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
    pub(crate) fn discard(&self, key: usize) {
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

    pub(crate) fn run_task(&self, lua: &Lua, key: usize, gen: u32) {
        // While the interpreter closes, mlua's state (and what only it kept alive) may be gone
        // before a finalizer that still runs the loop: then nothing is resumed any more.
        if !self.lua_is_open() {
            return;
        }
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
            let result = t.result.take();
            let arg = match t.transfer.take().map(|t| *t) {
                Some(Transfer::Received(received)) => Arg::Received(received),
                Some(Transfer::Sent(sent)) => Arg::Sent(sent),
                None => match result {
                    Some(result) => Arg::Number(result),
                    None if std::mem::replace(&mut t.started, true) => Arg::Number(elapsed),
                    None => Arg::Nothing,
                },
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
    pub(crate) fn settle(&self, lua: &Lua, key: usize, outcome: Outcome) {
        match outcome {
            Outcome::Wait {
                op,
                args,
                object,
                bytes,
            } => {
                if self.tracing() {
                    self.trace_task("yield", key, Some((op, args[0])));
                }
                if !self.file_wait(key, op, args, object, bytes) {
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
    pub(crate) fn end_task(&self, key: usize, error: Option<Value>) {
        let notify = matches!(self.sched.borrow().tasks.get(key), Some(t) if t.notify_exit);
        // Reporting goes through mlua, which is gone while the interpreter closes.
        if error.is_none() && !notify || !self.lua_is_open() {
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

    /// Puts a yielded task where its opcode says. False for an opcode (or arguments) this core
    /// does not know: the task then ends with the foreign-yield error.
    pub(crate) fn file_wait(
        &self,
        key: usize,
        op: i64,
        [arg, arg2, arg3, arg4]: [Option<f64>; 4],
        object: *const c_void,
        bytes: *const [u8],
    ) -> bool {
        let canceled = self.with_sched(|s| {
            let now = s.step_now;
            s.tasks.get_mut(key).map(|t| {
                t.since = now;
                t.canceled
            })
        });
        match canceled {
            None => return true,
            Some(true) => {
                self.discard(key);
                return true;
            }
            Some(false) => {}
        }
        self.with_sched(|s| match op {
            OP_PAUSE => {
                s.sleep(key, arg);
                true
            }
            OP_FOREVER => {
                s.tasks[key].wait = Wait::Forever;
                s.forever += 1;
                true
            }
            OP_READ | OP_WRITE => s.wait_for_fd(key, op == OP_WRITE, arg, arg2, Ask::Retry),
            OP_RECEIVE => s.wait_to_receive(key, [arg, arg2, arg3, arg4], object),
            OP_SEND => s.wait_to_send(key, [arg, arg2, arg3, arg4], object, bytes),
            OP_LOOKUP => s.wait_for_lookup(key, arg, arg2),
            OP_SEMAPHORE => s.wait_in_line(key, arg, arg2, arg3, arg4),
            _ => false,
        })
    }
}

impl Sched {
    /// `pause(seconds)`: asleep until the deadline; for ever (keeping the loop alive, upstream
    /// quirk) when it is infinite; one step when there is none or it is not positive.
    fn sleep(&mut self, key: usize, seconds: Option<f64>) {
        let Some(seconds) = seconds.filter(|x| *x > 0.0) else {
            self.make_ready(key);
            return;
        };
        self.sleeping += 1;
        match self.deadlines.deadline_after(seconds) {
            Some(at) => {
                self.tasks[key].wait = Wait::Sleeping(at);
                self.push_deadline(key, Some(at));
            }
            None => self.tasks[key].wait = Wait::SleepingUnbounded,
        }
    }
}
