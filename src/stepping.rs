//! The loop: `copas.step` (wait for events or the next deadline, then run what became ready),
//! `copas.loop`'s inner loop in Rust, `finished`, and `cancelall`.
//!
//! A step: poll (never longer than the next deadline); accept on servers that are due; for
//! each readable fd accept or run its readers; run the writers of each writable fd; expire
//! deadlines (sleepers, I/O timeouts, semaphore timeouts, server back-offs) and fire due
//! `copas.timeout` callbacks; run the tasks that became ready, each once, in order; move long
//! forever-sleepers to the weak table. A step never runs inside another one.

use std::cell::Cell;
use std::os::fd::RawFd;
use std::os::raw::c_void;
use std::time::Duration;

use mlua::{ffi, Function, Lua, RegistryKey, Table};

use crate::core::{Core, Sched};
use crate::dns::Resolver;
use crate::forever::IDLE_WAIT;
use crate::reactor::Ready;
use crate::tasks::{guarded, Wait};

/// What `copas.step`/`copas.loop` raise when a step is running already.
const NESTED_STEP: &str = "copas.step and copas.loop cannot run inside a step (from a copas \
     thread, an error handler, a timer callback or a finalizer)";

/// Clears `Core::stepping` when the step ends, however it ends.
pub(crate) struct StepGuard<'a>(&'a Cell<bool>);

impl Drop for StepGuard<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

impl Sched {
    /// How long the loop may wait: 0 with work ready, else until the next deadline, capped by
    /// the caller's timeout (negative means none: upstream's select would block for ever there).
    fn poll_timeout(&mut self, timeout: Option<f64>) -> Option<Duration> {
        if !self.ready.is_empty() || !self.sockets.accept_again.is_empty() {
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
            (_, None) if !self.has_sources() => Some(Duration::ZERO),
            (u, None) => u,
        }
    }
}

impl Core {
    /// `copas.finished()`: nothing ready, asleep or registered, and no forever-sleeper that a
    /// pending timeout could still wake. When finished, the forever-sleepers left are abandoned
    /// unless someone wakes them: they go to the weak table, to be collected if nobody can.
    pub fn finished(&self) -> bool {
        let done = self.is_finished();
        if done && self.with_sched(|s| s.forever > 0) {
            self.demote(true);
        }
        done
    }

    fn is_finished(&self) -> bool {
        self.with_sched(|s| {
            s.ready.is_empty()
                && s.sleeping == 0
                && !s.has_sources()
                && s.sockets.accept_again.is_empty()
                && (s.forever == 0 || (s.timers.is_empty() && s.timed_waits == 0))
        })
    }

    /// `copas.cancelall()`: every task but the running ones, every sleeper and every pending
    /// timeout is dropped; nothing of it runs again. Returns the descriptors the shim closes:
    /// connections somebody waited on, and servers (it cannot walk its own tables for them: a
    /// finalizer may add to them meanwhile, and `next` then fails).
    pub fn cancel_all(&self) -> (Vec<RawFd>, Vec<RawFd>) {
        let doomed: Vec<usize> = self.with_sched(|s| {
            s.tasks
                .iter()
                .filter(|(_, t)| t.wait != Wait::Running)
                .map(|(k, _)| k)
                .collect()
        });
        // `discard` makes no Lua allocation, so no finalizer runs in this loop.
        for key in doomed {
            self.discard(key);
        }
        self.with_sched(|s| {
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
        })
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
        let (mut events, idle) = self.poll_events(timeout)?;
        let retry = self.with_sched(|s| std::mem::take(&mut s.sockets.accept_again));
        let handled = !events.is_empty() || !retry.is_empty();
        if idle && !handled {
            self.collect_garbage_when_idle(lua);
        }
        for fd in retry {
            self.accept(fd)?;
        }
        for ev in events.iter().filter(|ev| ev.read) {
            self.with_sched(|s| s.sockets.mark_readable(ev.fd, ev.read_closed));
            self.on_readable(lua, ev.fd)?;
        }
        for ev in events.iter().filter(|ev| ev.write) {
            self.wake_and_run(lua, ev.fd, true);
        }
        events.clear();
        self.with_sched(|s| s.spare_events = events);
        let due_timers = self.with_sched(|s| s.expire());
        self.revive_woken();
        for (key, gen) in due_timers {
            guarded(|| self.fire_timer(lua, key, gen));
        }
        let mut batch = self.with_sched(|s| {
            let spare = std::mem::take(&mut s.spare);
            std::mem::replace(&mut s.ready, spare)
        });
        for &(key, gen) in &batch {
            guarded(|| self.run_task(lua, key, gen));
        }
        batch.clear();
        self.with_sched(|s| s.spare = batch);
        if self.with_sched(|s| s.forever > 0) {
            self.demote(false);
            self.sweep_collected_forever(false);
        }
        Ok(handled)
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
    fn poll_events(&self, timeout: Option<f64>) -> mlua::Result<(Vec<Ready>, bool)> {
        let (woke, events, idle) = self.with_sched(|s| {
            let mut events = std::mem::take(&mut s.spare_events);
            let wait = s.poll_timeout(timeout);
            let idle = wait.is_none_or(|d| d >= IDLE_WAIT);
            let stats = s.stats.enabled();
            if stats {
                s.stats.before_wait();
            }
            let woke = s.reactor.wait(wait, &mut events);
            if stats {
                s.stats.after_wait();
            }
            (woke, events, idle)
        });
        let woke = woke.map_err(mlua::Error::external)?;
        if woke {
            self.collect_lookups();
        }
        Ok((events, idle))
    }
}

/// Tells whether two entries of a table still hold the values they held when it was made.
pub struct EntryWatch {
    // A registry reference keeps the scratch thread (and so `state`) alive, as in `slots.rs`.
    _thread: RegistryKey,
    state: *mut ffi::lua_State,
    table: RegistryKey,
    entries: [(RegistryKey, *const c_void); 2],
}

impl EntryWatch {
    /// Watches `table[names[i]]`, which now hold `values[i]`.
    pub fn new(
        lua: &Lua,
        table: &Table,
        names: [&str; 2],
        values: [&Function; 2],
    ) -> mlua::Result<Self> {
        let thread = lua.create_thread(lua.create_function(|_, ()| Ok(()))?)?;
        let state = thread.state();
        let entry = |i: usize| -> mlua::Result<(RegistryKey, *const c_void)> {
            Ok((
                lua.create_registry_value(lua.create_string(names[i])?)?,
                values[i].to_pointer(),
            ))
        };
        Ok(EntryWatch {
            _thread: lua.create_registry_value(thread)?,
            state,
            table: lua.create_registry_value(table.clone())?,
            entries: [entry(0)?, entry(1)?],
        })
    }

    /// True while both entries hold their values (by identity, raw access).
    pub fn unchanged(&self) -> bool {
        let l = self.state;
        // SAFETY: `l` is the scratch thread's state, kept alive by `_thread` and used by nothing
        // else; at most three of its LUA_MINSTACK (20) free slots are used. Raw gets of a table
        // with a string key neither allocate nor raise.
        unsafe {
            // A fresh thread still holds its body function: start from an empty stack.
            ffi::lua_settop(l, 0);
            ffi::lua_rawgeti(l, ffi::LUA_REGISTRYINDEX, self.table.id() as _);
            let same = self.entries.iter().all(|(name, value)| {
                ffi::lua_rawgeti(l, ffi::LUA_REGISTRYINDEX, name.id() as _);
                ffi::lua_rawget(l, 1);
                let same = ffi::lua_topointer(l, -1) == *value;
                ffi::lua_settop(l, 1);
                same
            });
            ffi::lua_settop(l, 0);
            same
        }
    }
}
