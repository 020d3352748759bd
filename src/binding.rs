//! The Lua face of one scheduler instance: the table `copas.core.new()` returns, whose
//! functions close over one `Core`, grouped by concept as the core's files are.
//!
//! Most are mlua functions (`Instance::add`), wrapped so that their errors reach Lua in Lua's
//! words (`errors.rs`). The ones called per request or per hand-off (`recv` and `send` of a
//! connection the core reads, a semaphore's `take`, `give` and counts) are plain
//! `lua_CFunction`s: through an mlua callback each argument and result passes mlua's reference
//! stack, about 150 ns a call with a userdata and strings against 30 ns for a callback without
//! arguments (measured on 5.4); here the arguments are read off the Lua stack and the results
//! pushed directly. Each has two upvalues: the `Core` (light userdata) and the instance table,
//! which holds the mlua closures that own the `Core` (an `Rc`), so the core lives as long as
//! the function does.

use std::cell::Cell;
use std::os::raw::{c_int, c_void};
use std::ptr;
use std::rc::Rc;

use mlua::{ffi, AnyUserData, Function, Lua, Table, Thread, Value, WeakLua};

use crate::core::{keep_for_process, Core};
use crate::errors::{self, Args, Reply};
use crate::luasocket::{self, Pattern, Received};
use crate::protocol::{self, MODE_ALL, MODE_LINE};
use crate::semaphore::Take;

/// The instance table being built, and the core its functions close over.
struct Instance<'a> {
    lua: &'a Lua,
    table: Table,
    core: Rc<Core>,
    /// The mlua state, for the wrappers to see that it is gone (kept for the process).
    open: &'static WeakLua,
}

impl Instance<'_> {
    /// Adds `name = function(args) ... end`, the function closing over the core. Its errors,
    /// bad arguments included, reach Lua as plain strings in Lua's words (`errors.rs`).
    fn add<A, R, F>(&self, name: &'static str, f: F) -> mlua::Result<()>
    where
        A: mlua::FromLuaMulti,
        R: mlua::IntoLuaMulti,
        F: Fn(&Lua, &Core, A) -> mlua::Result<R> + 'static,
    {
        let core = Rc::clone(&self.core);
        let function = self.lua.create_function(move |lua, args: Args<A>| {
            Ok(Reply::new(
                name,
                args.0.and_then(|args| f(lua, &core, args)),
            ))
        })?;
        self.table
            .raw_set(name, errors::plain_errors(self.lua, function, self.open)?)
    }
}

/// `copas.core.new()`: a fresh scheduler instance.
pub fn new_instance(lua: &Lua) -> mlua::Result<Table> {
    let instance = Instance {
        lua,
        table: lua.create_table()?,
        core: Rc::new(Core::new(lua, protocol::token())?),
        open: keep_for_process(lua.weak()),
    };
    instance.core.handle.set(Rc::as_ptr(&instance.core));
    add_task_functions(&instance)?;
    add_loop_functions(&instance)?;
    add_timeout_functions(&instance)?;
    add_hook_functions(&instance)?;
    add_status_functions(&instance)?;
    add_semaphore_functions(&instance)?;
    add_socket_functions(&instance)?;
    add_c_functions(lua, &instance.table, &instance.core)?;
    Ok(instance.table)
}

/// Threads: `tasks.rs`.
fn add_task_functions(i: &Instance) -> mlua::Result<()> {
    i.add("spawn", |_, c, (co, registered): (Thread, bool)| {
        c.spawn(co, registered)
    })?;
    i.add("attach", |_, c, co: Thread| c.attach(co))?;
    i.add("run_now", |lua, c, (id, arg): (i64, Value)| {
        c.run_now(lua, id, arg)
    })?;
    i.add("wakeup", |_, c, id: i64| c.wakeup(id))?;
    i.add("remove", |_, c, id: i64| Ok(c.remove(id)))?;
    i.add("alive", |_, c, id: i64| Ok(c.alive(id)))?;
    i.add("watch_exit", |_, c, id: i64| {
        c.watch_exit(id);
        Ok(())
    })
}

/// Step, loop, finished, cancelall: `stepping.rs`.
fn add_loop_functions(i: &Instance) -> mlua::Result<()> {
    i.add("step", |lua, c, timeout: Option<f64>| c.step(lua, timeout))?;
    i.add(
        "run",
        |lua, c, (copas, step, finished, timeout): (Table, Function, Function, Option<f64>)| {
            c.run(lua, &copas, &step, &finished, timeout)
        },
    )?;
    i.add("finished", |_, c, ()| Ok(c.finished()))?;
    i.add("cancel_all", |lua, c, ()| {
        let (waited_on, servers) = c.cancel_all();
        Ok((
            lua.create_sequence_from(waited_on)?,
            lua.create_sequence_from(servers)?,
        ))
    })
}

/// `copas.timeout`: `timeouts.rs`.
fn add_timeout_functions(i: &Instance) -> mlua::Result<()> {
    i.add("add_timer", |_, c, delay: f64| c.add_timer(delay))?;
    i.add("cancel_timer", |_, c, id: i64| {
        c.cancel_timer(id);
        Ok(())
    })?;
    i.add("timer_count", |_, c, ()| Ok(c.timer_count()))?;
    i.add("set_core_timer_factory", |_, c, f: Function| {
        c.set_core_timer_factory(f);
        Ok(())
    })
}

/// The shim's hooks: `hooks.rs`.
fn add_hook_functions(i: &Instance) -> mlua::Result<()> {
    i.add("set_error_hook", |_, c, f: Option<Function>| {
        c.set_error_hook(f);
        Ok(())
    })?;
    i.add("set_exit_hook", |_, c, f: Option<Function>| {
        c.set_exit_hook(f);
        Ok(())
    })?;
    i.add("set_accept_hook", |_, c, f: Option<Function>| {
        c.set_accept_hook(f);
        Ok(())
    })?;
    i.add("set_tracer", |_, c, f: Option<Function>| {
        c.set_tracer(f);
        Ok(())
    })
}

/// `copas.status`: `status.rs`.
fn add_status_functions(i: &Instance) -> mlua::Result<()> {
    i.add("counts", |_, c, ()| Ok(c.counts()))?;
    i.add("io_counts", |_, c, ()| Ok(c.io_counts()))?;
    i.add("io_waiting", |_, c, id: i64| Ok(c.io_waiting(id)))?;
    i.add("set_stats", |_, c, on: bool| {
        c.set_stats(on);
        Ok(())
    })?;
    i.add("stats_enabled", |_, c, ()| Ok(c.stats_enabled()))?;
    i.add("take_stats", |_, c, out: Table| c.take_stats(&out))
}

/// `copas.semaphore` (take, give and counts are C functions, below): `semaphore_waits.rs`.
fn add_semaphore_functions(i: &Instance) -> mlua::Result<()> {
    i.add("semaphore_new", |_, c, (max, start): (f64, f64)| {
        c.semaphore_new(max, start)
    })?;
    i.add("semaphore_remove", |_, c, (id, destroyed): (i64, bool)| {
        c.semaphore_remove(id, destroyed);
        Ok(())
    })?;
    i.add("semaphore_hand_over", |_, c, id: i64| {
        Ok(c.semaphore_hand_over(id))
    })
}

/// A descriptor from Lua: `getfd()` gives a float on 5.3+ and -1 for none.
fn fd_arg(x: f64) -> i32 {
    if x.is_finite() && x >= 0.0 && x < i32::MAX as f64 {
        x as i32
    } else {
        -1
    }
}

/// Sockets and name lookups (recv and send are C functions, below): `readiness.rs`.
fn add_socket_functions(i: &Instance) -> mlua::Result<()> {
    i.add("now", |_, c, ()| Ok(c.now()))?;
    i.add("watch", |_, c, fd: f64| c.watch(fd_arg(fd)))?;
    i.add("close_fd", |_, c, fd: f64| {
        c.close_fd(fd_arg(fd));
        Ok(())
    })?;
    i.add("add_server", |_, c, (fd, udp): (f64, bool)| {
        c.add_server(fd_arg(fd), udp);
        Ok(())
    })?;
    i.add("remove_server", |_, c, fd: f64| {
        c.remove_server(fd_arg(fd));
        Ok(())
    })?;
    i.add("is_tcp_client", |lua, _, skt: Value| {
        Ok(matches!(skt, Value::UserData(ud) if luasocket::is_luasocket_client(lua, &ud)))
    })?;
    i.add("read_directly", |lua, c, (skt, fd): (AnyUserData, f64)| {
        Ok(c.read_directly(lua, &skt, fd_arg(fd)))
    })?;
    // A name that is not UTF-8 cannot be a host name: its lookup fails as any unknown name.
    i.add("resolve", |_, c, host: mlua::LuaString| {
        c.resolve(String::from_utf8_lossy(&host.as_bytes()).into_owned())
    })?;
    i.add("lookup_result", |lua, c, id: i64| {
        match c.lookup_result(id) {
            Some(Ok(addrs)) => Ok((Value::Table(lua.create_sequence_from(addrs)?), Value::Nil)),
            Some(Err(msg)) => Ok((Value::Nil, Value::String(lua.create_string(msg)?))),
            None => Ok((Value::Nil, Value::Nil)),
        }
    })
}

fn add_c_functions(lua: &Lua, t: &Table, core: &Rc<Core>) -> mlua::Result<()> {
    let fns: [(&str, ffi::lua_CFunction); 5] = [
        ("recv", recv),
        ("send", send),
        ("semaphore_take", semaphore_take),
        ("semaphore_give", semaphore_give),
        ("semaphore_counts", semaphore_counts),
    ];
    for (name, f) in fns {
        let core_ptr = core.handle as *const Cell<*const Core> as *mut c_void;
        // SAFETY: the closure only pushes values onto the stack mlua prepared (with room for
        // three), where the instance table is the one argument.
        let func: Function = unsafe {
            lua.exec_raw(t.clone(), |l| {
                ffi::lua_pushlightuserdata(l, core_ptr);
                ffi::lua_pushvalue(l, -2);
                ffi::lua_pushcclosure(l, f, 2);
                ffi::lua_remove(l, -2);
            })?
        };
        t.raw_set(name, func)?;
    }
    Ok(())
}

/// The core of the running C function; None once it was dropped (while the interpreter
/// closes, its finalizers may still call these functions).
///
/// SAFETY (caller): `l` is running a closure made by `add_c_functions`, whose first upvalue is
/// the core's `handle` (leaked, so always valid).
unsafe fn core_of<'a>(l: *mut ffi::lua_State) -> Option<&'a Core> {
    let handle = &*(ffi::lua_touserdata(l, ffi::lua_upvalueindex(1)) as *const Cell<*const Core>);
    handle.get().as_ref()
}

/// SAFETY (caller): `l` is a valid state with room for one more value.
unsafe fn push_bytes(l: *mut ffi::lua_State, bytes: &[u8]) {
    ffi::lua_pushlstring(l, bytes.as_ptr() as *const _, bytes.len());
}

/// The prefix (argument 4) and `data` as one string.
///
/// SAFETY (caller): as `push_bytes`, with room for two more values.
unsafe fn push_with_prefix(l: *mut ffi::lua_State, have: usize, data: &[u8]) {
    if have == 0 {
        push_bytes(l, data);
    } else {
        ffi::lua_pushvalue(l, 4);
        push_bytes(l, data);
        ffi::lua_concat(l, 2);
    }
}

/// Runs `f`, turning a panic (a bug of the core) into None instead of unwinding into Lua.
fn caught<R>(f: impl FnOnce() -> R) -> Option<R> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok()
}

fn optional_number(l: *mut ffi::lua_State, idx: c_int) -> Option<f64> {
    let mut isnum: c_int = 0;
    // SAFETY: `l` is the running state; reading an argument slot is always allowed.
    let x = unsafe { ffi::lua_tonumberx(l, idx, &mut isnum) };
    (isnum != 0).then_some(x)
}

/// `recv(skt, mode, count, prefix, partial)`: LuaSocket's `receive` results; `nil, "timeout"`
/// means "wait for readability" (with `partial`, the bytes buffered so far come back as the
/// third result and leave the buffer, as LuaSocket's partial result).
unsafe extern "C-unwind" fn recv(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: `register` made this closure; the arguments are read from their slots.
    unsafe {
        let core = core_of(l);
        let skt = ffi::lua_touserdata(l, 1) as *const c_void;
        let pattern = match ffi::lua_tointegerx(l, 2, ptr::null_mut()) {
            MODE_LINE => Pattern::Line,
            MODE_ALL => Pattern::All,
            _ => Pattern::Count(optional_number(l, 3).filter(|n| *n > 0.0).unwrap_or(0.0) as usize),
        };
        let mut have = 0usize;
        if ffi::lua_type(l, 4) == ffi::LUA_TSTRING {
            ffi::lua_tolstring(l, 4, &mut have);
        }
        let partial = ffi::lua_toboolean(l, 5) != 0;
        ffi::lua_checkstack(l, 4);
        let received = match core {
            Some(core) if !skt.is_null() => caught(|| core.recv(skt, pattern, have, partial))
                .unwrap_or(Received::Failed("internal error", Vec::new())),
            _ => Received::Failed("closed", Vec::new()),
        };
        // Pushing can raise (out of memory) and unwind past this frame; nothing below owns
        // memory but `received`, which then leaks instead of being freed twice.
        let received = std::mem::ManuallyDrop::new(received);
        let n = match &*received {
            Received::Done(data) => {
                push_with_prefix(l, have, data);
                1
            }
            Received::WouldBlock(part) => {
                ffi::lua_pushnil(l);
                push_bytes(l, b"timeout");
                if partial {
                    push_with_prefix(l, have, part);
                    3
                } else {
                    2
                }
            }
            Received::Failed(err, part) => {
                ffi::lua_pushnil(l);
                push_bytes(l, err.as_bytes());
                push_with_prefix(l, have, part);
                3
            }
        };
        drop(std::mem::ManuallyDrop::into_inner(received));
        n
    }
}

/// `send(skt, data, i, j)`: LuaSocket's `send` results (`last` or `nil, err, last`).
unsafe extern "C-unwind" fn send(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: `register` made this closure; `data` stays on the stack (so valid) for the call.
    unsafe {
        let core = core_of(l);
        let skt = ffi::lua_touserdata(l, 1) as *const c_void;
        let mut len = 0usize;
        let p = ffi::lua_tolstring(l, 2, &mut len);
        ffi::lua_checkstack(l, 3);
        let Some(core) = core.filter(|_| !skt.is_null() && !p.is_null()) else {
            ffi::lua_pushnil(l);
            push_bytes(l, b"closed");
            ffi::lua_pushnumber(l, 0.0);
            return 3;
        };
        let bytes = std::slice::from_raw_parts(p as *const u8, len);
        let (i, j) = (optional_number(l, 3), optional_number(l, 4));
        let (last, err) =
            caught(|| core.send(skt, bytes, i, j)).unwrap_or((0.0, Some("internal error")));
        match err {
            None => {
                ffi::lua_pushnumber(l, last);
                1
            }
            Some(e) => {
                ffi::lua_pushnil(l);
                push_bytes(l, e.as_bytes());
                ffi::lua_pushnumber(l, last);
                3
            }
        }
    }
}

/// `semaphore_take(id, requested)`: `true` (granted), `false` (wait in line with OP_SEMAPHORE),
/// or the error: "too many", "destroyed"; then the count if no waiter is left (the Lua side
/// keeps it from then on).
unsafe extern "C-unwind" fn semaphore_take(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: `register` made this closure; the arguments are read from their slots.
    unsafe {
        let core = core_of(l);
        let id = ffi::lua_tointegerx(l, 1, ptr::null_mut());
        let requested = ffi::lua_tonumberx(l, 2, ptr::null_mut());
        let outcome = caught(|| {
            core?
                .semaphore_take(id as i64, requested)
                .map(|(take, released)| {
                    let first = match take {
                        Take::Granted => Ok(true),
                        Take::Wait => Ok(false),
                        Take::TooMany => Err("too many"),
                    };
                    (first, released)
                })
        });
        push_semaphore_outcome(l, outcome)
    }
}

/// `semaphore_give(id, amount)`: `true`, or the error: "too many", "destroyed"; then the count
/// if no waiter is left.
unsafe extern "C-unwind" fn semaphore_give(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: as `semaphore_take`.
    unsafe {
        let core = core_of(l);
        let id = ffi::lua_tointegerx(l, 1, ptr::null_mut());
        let amount = ffi::lua_tonumberx(l, 2, ptr::null_mut());
        let outcome = caught(|| {
            core?
                .semaphore_give(id as i64, amount)
                .map(|(fits, released)| (if fits { Ok(true) } else { Err("too many") }, released))
        });
        push_semaphore_outcome(l, outcome)
    }
}

/// What a semaphore operation came to: None after a panic of the core, Some(None) when the
/// semaphore is gone, else the first result and the released count.
type SemaphoreOutcome = Option<Option<(Result<bool, &'static str>, Option<f64>)>>;

/// The results of `semaphore_take`/`semaphore_give`: a boolean or an error string, then the
/// released count, if any.
///
/// SAFETY (caller): `l` is the running state of one of those functions (room for two values).
unsafe fn push_semaphore_outcome(l: *mut ffi::lua_State, outcome: SemaphoreOutcome) -> c_int {
    let (first, released) = match outcome {
        Some(Some(outcome)) => outcome,
        Some(None) => (Err("destroyed"), None),
        None => (Err("internal error"), None),
    };
    match first {
        Ok(b) => ffi::lua_pushboolean(l, c_int::from(b)),
        Err(e) => push_bytes(l, e.as_bytes()),
    }
    match released {
        Some(count) => {
            ffi::lua_pushnumber(l, count);
            2
        }
        None => 1,
    }
}

/// `semaphore_counts(id)`: the count, the resources waited for minus the count, and whether no
/// waiter is left; nothing when the semaphore is gone.
unsafe extern "C-unwind" fn semaphore_counts(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: as `semaphore_take`, pushing two values.
    unsafe {
        let core = core_of(l);
        let id = ffi::lua_tointegerx(l, 1, ptr::null_mut());
        match caught(|| core?.semaphore_counts(id as i64)).flatten() {
            Some((count, wait, released)) => {
                ffi::lua_pushnumber(l, count);
                ffi::lua_pushnumber(l, wait);
                ffi::lua_pushboolean(l, c_int::from(released));
                3
            }
            _ => 0,
        }
    }
}
