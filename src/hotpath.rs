//! The functions called per request or per hand-off, as plain `lua_CFunction`s: `recv` and
//! `send` of a LuaSocket TCP connection, and `take`, `give` and the counts of a semaphore.
//!
//! A server calls the first two for every line and every response. Through an mlua callback each
//! argument and result passes mlua's reference stack: about 150 ns a call with a userdata and
//! strings, against 30 ns for a callback without arguments (measured on 5.4). Here the arguments
//! are read off the Lua stack and the results pushed directly.
//!
//! Each function has two upvalues: the `Core` (light userdata) and the instance table, which
//! holds the mlua closures that own the `Core` (an `Rc`), so the core lives as long as the
//! function does.

use std::os::raw::{c_int, c_void};
use std::ptr;
use std::rc::Rc;

use mlua::{ffi, Function, Lua, Table};

use crate::io::{Pattern, Received};
use crate::scheduler::Core;
use crate::semaphore::Take;

/// Receive patterns passed by the shim (anything else is a byte count).
pub const MODE_LINE: i64 = 1;
pub const MODE_ALL: i64 = 2;

pub fn register(lua: &Lua, t: &Table, core: &Rc<Core>) -> mlua::Result<()> {
    let fns: [(&str, ffi::lua_CFunction); 5] = [
        ("recv", recv),
        ("send", send),
        ("semaphore_take", semaphore_take),
        ("semaphore_give", semaphore_give),
        ("semaphore_counts", semaphore_counts),
    ];
    for (name, f) in fns {
        let core_ptr = Rc::as_ptr(core) as *mut c_void;
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

/// SAFETY (caller): `l` is running a closure made by `register`.
unsafe fn core_of<'a>(l: *mut ffi::lua_State) -> &'a Core {
    &*(ffi::lua_touserdata(l, ffi::lua_upvalueindex(1)) as *const Core)
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
        let received = if skt.is_null() {
            Received::Failed("closed", Vec::new())
        } else {
            caught(|| core.recv(skt, pattern, have, partial))
                .unwrap_or(Received::Failed("internal error", Vec::new()))
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
        if skt.is_null() || p.is_null() {
            ffi::lua_pushnil(l);
            push_bytes(l, b"closed");
            ffi::lua_pushnumber(l, 0.0);
            return 3;
        }
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
            core.semaphore_take(id as i64, requested)
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
            core.semaphore_give(id as i64, amount)
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
        match caught(|| core.semaphore_counts(id as i64)).flatten() {
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
