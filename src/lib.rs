//! `copas.core`: the scheduler, timers and reactor behind copas-rs.
//!
//! `require("copas.core")` gives a table of the protocol's constants (`protocol.rs`) whose
//! `new()` makes one independent scheduler instance (`binding.rs`: a table of functions over
//! one `Core`). `lua/copas.lua` makes one per load, so reloading copas gives a fresh instance,
//! as upstream.
//!
//! The files, one concept each: `core.rs` (the instance state and its borrowing rule),
//! `tasks.rs`, `stepping.rs`, `timeouts.rs`, `readiness.rs`, `semaphore_waits.rs`,
//! `forever.rs`, `hooks.rs`, `status.rs` (the scheduler's concepts, each an `impl Core`);
//! `timers.rs` (the deadline heap), `semaphore.rs` (waiting lines), `sockets.rs` (per-fd
//! waiters and servers), `luasocket.rs` (LuaSocket's semantics: receive patterns, connection
//! buffers, object identity, send ranges), `reactor.rs` (epoll), `dns.rs` (lookups off the
//! loop), `resume.rs` (the raw resume), `slots.rs` (where coroutines live), `stats.rs` (step
//! statistics), `errors.rs` (errors in Lua's words), `binding.rs` (the Lua face).

mod binding;
mod core;
mod dns;
mod errors;
mod forever;
mod hooks;
mod luasocket;
mod protect_slots;
mod protocol;
mod reactor;
mod readiness;
mod resume;
mod semaphore;
mod semaphore_waits;
mod slots;
mod sockets;
mod stats;
mod status;
mod stepping;
mod tasks;
#[cfg(test)]
mod test_rng;
mod timeouts;
mod timers;

use std::os::raw::{c_char, c_int, c_void};

use mlua::{Lua, Table};

#[mlua::lua_module(name = "copas_core")]
fn copas_core(lua: &Lua) -> mlua::Result<Table> {
    stay_loaded();
    let module = lua.create_table()?;
    // The runtime this build is for (set by build.rs), to tell builds apart when debugging paths.
    module.set("RUNTIME", env!("COPAS_LUA_RUNTIME"))?;
    protocol::export(&module)?;
    module.set(
        "gettime",
        lua.create_function(|_, ()| Ok(stats::epoch_seconds()))?,
    )?;
    module.set(
        "new",
        lua.create_function(|lua, ()| binding::new_instance(lua))?,
    )?;
    // SAFETY: `exec_raw` gives the state with room for the three values `find` may push.
    unsafe { lua.exec_raw::<()>((), |l| protect_slots::find(l)) }?;
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

/// What the dynamic linker knows of the loaded object that holds `addr`.
fn loaded_object_of(addr: *const c_void) -> Option<DlInfo> {
    let mut info = DlInfo {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    };
    // SAFETY: `dladdr` only fills `info`, for any address.
    (unsafe { dladdr(addr, &mut info) } != 0).then_some(info)
}

/// Whether `addr` lies in this library (its code or its statics).
#[cfg(feature = "lua51")]
pub(crate) fn in_this_library(addr: *const c_void) -> bool {
    let base = |a| loaded_object_of(a).map(|info| info.dli_fbase);
    base(addr).is_some_and(|b| Some(b) == base(stay_loaded as *const c_void))
}

/// Keeps this library mapped until the process exits. `lua_close` runs the finalizers of all
/// objects in an order of its own, and LuaJIT unloads C modules among the first; a finalizer
/// that calls copas after that (adding a thread, running the loop) would jump into unmapped
/// code. Failing to pin only leaves the old behaviour.
fn stay_loaded() {
    let Some(info) = loaded_object_of(stay_loaded as *const c_void) else {
        return;
    };
    if !info.dli_fname.is_null() {
        // SAFETY: `dlopen` with RTLD_NOLOAD only takes another reference to the already loaded
        // library named by the path `dladdr` gave, and RTLD_NODELETE keeps it loaded; the
        // handle is never closed.
        unsafe { dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE) };
    }
}
