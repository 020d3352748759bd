//! `copas.core`: the scheduler, timers and reactor behind copas-rs.
//!
//! `require("copas.core")` gives a table whose `new()` makes one independent scheduler instance
//! (a table of functions over shared state). `lua/copas.lua` makes one per load, so reloading
//! copas gives a fresh instance, as upstream.

mod dns;
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

use std::os::raw::c_void;
use std::rc::Rc;

use mlua::{AnyUserData, Function, LightUserData, Lua, Table, Thread, Value};

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

/// Adds `name = function(args) ... end` to `t`, the function closing over the instance.
fn add<A, R, F>(lua: &Lua, t: &Table, core: &Rc<Core>, name: &str, f: F) -> mlua::Result<()>
where
    A: mlua::FromLuaMulti,
    R: mlua::IntoLuaMulti,
    F: Fn(&Lua, &Core, A) -> mlua::Result<R> + 'static,
{
    let core = Rc::clone(core);
    t.raw_set(
        name,
        lua.create_function(move |lua, args| f(lua, &core, args))?,
    )
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
    add(lua, &t, &core, "cancel_all", |_, c, ()| c.cancel_all())?;
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
    add(lua, t, core, "fd_busy", |_, c, fd: f64| {
        Ok(c.fd_busy(fd_arg(fd)))
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
        |_, c, (skt, fd): (AnyUserData, f64)| c.adopt_conn(&skt, fd_arg(fd)),
    )?;
    add(lua, t, core, "resolve", |_, c, host: String| {
        c.resolve(host)
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
