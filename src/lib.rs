//! `copas.core`: the scheduler, timers and reactor behind copas-rs.
//!
//! `require("copas.core")` gives a table whose `new()` makes one independent scheduler instance
//! (a table of functions over shared state). `lua/copas.lua` makes one per load, so reloading
//! copas gives a fresh instance, as upstream.

mod dns;
mod errors;
mod hotpath;
mod io;
mod raw;
mod reactor;
mod resume;
mod scheduler;
mod semaphore;
mod sockets;
mod stats;
mod timers;

use std::os::raw::{c_char, c_int, c_void};
use std::rc::Rc;

use mlua::{AnyUserData, Function, LightUserData, Lua, MultiValue, Table, Thread, Value};

use scheduler::{
    Core, OP_FOREVER, OP_LOOKUP, OP_PAUSE, OP_READ, OP_SEMAPHORE, OP_TIMER_DONE, OP_WRITE,
};

/// Its address marks a yield as coming from the copas shim.
static TOKEN: u8 = 0;

fn token() -> *mut c_void {
    &TOKEN as *const u8 as *mut c_void
}

#[mlua::lua_module(name = "copas_core")]
fn copas_core(lua: &Lua) -> mlua::Result<Table> {
    stay_loaded();
    let module = lua.create_table()?;
    // The runtime this build is for (set by build.rs), to tell builds apart when debugging paths.
    module.set("RUNTIME", env!("COPAS_LUA_RUNTIME"))?;
    module.set("TOKEN", LightUserData(token()))?;
    module.set("OP_PAUSE", OP_PAUSE)?;
    module.set("OP_FOREVER", OP_FOREVER)?;
    module.set("OP_TIMER_DONE", OP_TIMER_DONE)?;
    module.set("OP_READ", OP_READ)?;
    module.set("OP_WRITE", OP_WRITE)?;
    module.set("OP_LOOKUP", OP_LOOKUP)?;
    module.set("OP_SEMAPHORE", OP_SEMAPHORE)?;
    module.set("MODE_LINE", hotpath::MODE_LINE)?;
    module.set("MODE_ALL", hotpath::MODE_ALL)?;
    module.set(
        "gettime",
        lua.create_function(|_, ()| Ok(stats::epoch_seconds()))?,
    )?;
    module.set("new", lua.create_function(|lua, ()| new_instance(lua))?)?;
    Ok(module)
}

#[repr(C)]
struct DlInfo {
    dli_fname: *const c_char,
    dli_fbase: *mut c_void,
    dli_sname: *const c_char,
    dli_saddr: *mut c_void,
}

extern "C" {
    fn dladdr(addr: *const c_void, info: *mut DlInfo) -> c_int;
    fn dlopen(filename: *const c_char, flags: c_int) -> *mut c_void;
}

const RTLD_NOW: c_int = 2;
const RTLD_NOLOAD: c_int = 4;
const RTLD_NODELETE: c_int = 0x1000;

/// Keeps this library mapped until the process exits. `lua_close` runs the finalizers of all
/// objects in an order of its own, and LuaJIT unloads C modules among the first; a finalizer
/// that calls copas after that (adding a thread, running the loop) would jump into unmapped
/// code. Failing to pin only leaves the old behaviour.
fn stay_loaded() {
    let mut info = DlInfo {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    };
    // SAFETY: `dladdr` fills `info` for an address inside this library (a function of it);
    // `dlopen` with RTLD_NOLOAD only takes another reference to the already loaded library
    // named by the path it gave, and RTLD_NODELETE keeps it loaded; the handle is never closed.
    unsafe {
        if dladdr(stay_loaded as *const c_void, &mut info) != 0 && !info.dli_fname.is_null() {
            dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
        }
    }
}

/// Adds `name = function(args) ... end` to `t`, the function closing over the instance. Its
/// errors, bad arguments included, reach Lua as plain strings in Lua's words (`errors.rs`).
fn add<A, R, F>(lua: &Lua, t: &Table, core: &Rc<Core>, name: &'static str, f: F) -> mlua::Result<()>
where
    A: mlua::FromLuaMulti,
    R: mlua::IntoLuaMulti,
    F: Fn(&Lua, &Core, A) -> mlua::Result<R> + 'static,
{
    let core = Rc::clone(core);
    let in_lua_words = move |e: mlua::Error| mlua::Error::runtime(errors::lua_style(name, &e));
    let function = lua.create_function(move |lua, args: MultiValue| {
        let args = A::from_lua_multi(args, lua).map_err(in_lua_words)?;
        f(lua, &core, args).map_err(in_lua_words)
    })?;
    t.raw_set(name, errors::plain_errors(lua, function)?)
}

fn new_instance(lua: &Lua) -> mlua::Result<Table> {
    let core = Rc::new(Core::new(lua, token())?);
    let t = lua.create_table()?;
    add(
        lua,
        &t,
        &core,
        "spawn",
        |_, c, (co, registered): (Thread, bool)| c.spawn(co, registered),
    )?;
    add(lua, &t, &core, "wakeup", |_, c, id: i64| c.wakeup(id))?;
    add(lua, &t, &core, "remove", |_, c, id: i64| Ok(c.remove(id)))?;
    add(lua, &t, &core, "alive", |_, c, id: i64| Ok(c.alive(id)))?;
    add(lua, &t, &core, "step", |lua, c, timeout: Option<f64>| {
        c.step(lua, timeout)
    })?;
    add(
        lua,
        &t,
        &core,
        "run",
        |lua, c, (copas, step, finished, timeout): (Table, Function, Function, Option<f64>)| {
            c.run(lua, &copas, &step, &finished, timeout)
        },
    )?;
    add(lua, &t, &core, "finished", |_, c, ()| Ok(c.finished()))?;
    add(
        lua,
        &t,
        &core,
        "semaphore_new",
        |_, c, (max, start): (f64, f64)| c.semaphore_new(max, start),
    )?;
    add(
        lua,
        &t,
        &core,
        "semaphore_remove",
        |_, c, (id, destroyed): (i64, bool)| {
            c.semaphore_remove(id, destroyed);
            Ok(())
        },
    )?;
    add(lua, &t, &core, "counts", |_, c, ()| Ok(c.counts()))?;
    add(lua, &t, &core, "add_timer", |_, c, delay: f64| {
        c.add_timer(delay)
    })?;
    add(lua, &t, &core, "cancel_timer", |_, c, id: i64| {
        c.cancel_timer(id);
        Ok(())
    })?;
    add(lua, &t, &core, "watch_exit", |_, c, id: i64| {
        c.watch_exit(id);
        Ok(())
    })?;
    add(
        lua,
        &t,
        &core,
        "set_exit_hook",
        |_, c, f: Option<Function>| {
            c.set_exit_hook(f);
            Ok(())
        },
    )?;
    add(
        lua,
        &t,
        &core,
        "timer_count",
        |_, c, ()| Ok(c.timer_count()),
    )?;
    add(lua, &t, &core, "cancel_all", |lua, c, ()| {
        let (waited_on, servers) = c.cancel_all();
        Ok((
            lua.create_sequence_from(waited_on)?,
            lua.create_sequence_from(servers)?,
        ))
    })?;
    add(
        lua,
        &t,
        &core,
        "set_error_hook",
        |_, c, f: Option<Function>| {
            c.set_error_hook(f);
            Ok(())
        },
    )?;
    add(lua, &t, &core, "set_tracer", |_, c, f: Option<Function>| {
        c.set_tracer(f);
        Ok(())
    })?;
    add(
        lua,
        &t,
        &core,
        "set_core_timer_factory",
        |_, c, f: Function| {
            c.set_core_timer_factory(f);
            Ok(())
        },
    )?;
    add(lua, &t, &core, "set_stats", |_, c, on: bool| {
        c.set_stats(on);
        Ok(())
    })?;
    add(lua, &t, &core, "stats_enabled", |_, c, ()| {
        Ok(c.stats_enabled())
    })?;
    add(lua, &t, &core, "take_stats", |_, c, out: Table| {
        c.take_stats(&out)
    })?;
    add_socket_functions(lua, &t, &core)?;
    hotpath::register(lua, &t, &core)?;
    Ok(t)
}

/// A descriptor from Lua: `getfd()` gives a float on 5.3+ and -1 for none.
fn fd_arg(x: f64) -> i32 {
    if x.is_finite() && x >= 0.0 && x < i32::MAX as f64 {
        x as i32
    } else {
        -1
    }
}

fn add_socket_functions(lua: &Lua, t: &Table, core: &Rc<Core>) -> mlua::Result<()> {
    add(lua, t, core, "now", |_, c, ()| Ok(c.now()))?;
    add(lua, t, core, "watch", |_, c, fd: f64| c.watch(fd_arg(fd)))?;
    add(lua, t, core, "close_fd", |_, c, fd: f64| {
        c.close_fd(fd_arg(fd));
        Ok(())
    })?;
    add(
        lua,
        t,
        core,
        "add_server",
        |_, c, (fd, udp): (f64, bool)| c.add_server(fd_arg(fd), udp),
    )?;
    add(lua, t, core, "remove_server", |_, c, fd: f64| {
        c.remove_server(fd_arg(fd));
        Ok(())
    })?;
    add(lua, t, core, "io_waiting", |_, c, id: i64| {
        Ok(c.io_waiting(id))
    })?;
    add(lua, t, core, "io_counts", |_, c, ()| Ok(c.io_counts()))?;
    add(lua, t, core, "attach", |_, c, co: Thread| c.attach(co))?;
    add(
        lua,
        t,
        core,
        "run_now",
        |lua, c, (id, arg): (i64, Value)| c.run_now(lua, id, arg),
    )?;
    add(
        lua,
        t,
        core,
        "set_accept_hook",
        |_, c, f: Option<Function>| {
            c.set_accept_hook(f);
            Ok(())
        },
    )?;
    add(
        lua,
        t,
        core,
        "adopt",
        |lua, c, (skt, fd): (AnyUserData, f64)| c.adopt_conn(lua, &skt, fd_arg(fd)),
    )?;
    add(lua, t, core, "is_tcp_client", |lua, _, skt: Value| {
        Ok(matches!(skt, Value::UserData(ud) if io::is_luasocket_client(lua, &ud)))
    })?;
    // A name that is not UTF-8 cannot be a host name: its lookup fails as any unknown name.
    add(lua, t, core, "resolve", |_, c, host: mlua::LuaString| {
        c.resolve(String::from_utf8_lossy(&host.as_bytes()).into_owned())
    })?;
    add(lua, t, core, "lookup_result", |lua, c, id: i64| {
        match c.lookup_result(id) {
            Some(Ok(addrs)) => Ok((Value::Table(lua.create_sequence_from(addrs)?), Value::Nil)),
            Some(Err(msg)) => Ok((Value::Nil, Value::String(lua.create_string(msg)?))),
            None => Ok((Value::Nil, Value::Nil)),
        }
    })?;
    Ok(())
}
