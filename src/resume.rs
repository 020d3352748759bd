//! The raw resume of a task coroutine and the decoding of what it yielded.
//!
//! mlua's `Thread::resume` turns a non-string error value into a string and appends a traceback;
//! Copas error handlers must receive the original value, with the dead coroutine's stack intact
//! for `debug.traceback(co)`. So the resume goes through `lua_resume` directly.

use std::os::raw::{c_int, c_void};
use std::ptr;

use mlua::ffi;
use mlua::{Lua, RegistryKey, Table, Value};

/// What a resumed coroutine did.
pub enum Outcome {
    /// Yielded `(TOKEN, op, arg)`: a wait request from the copas shim.
    Wait { op: i64, arg: Option<f64> },
    /// Yielded anything else: user code called `coroutine.yield` itself.
    ForeignYield,
    /// The body returned.
    Finished,
    /// The body raised; the value is the error object as raised.
    Failed(Value),
}

/// The error object leaves the coroutine through slot 1 of this table, so that mlua can hand it
/// over as a `Value` without converting it.
pub struct ErrorBox {
    table: Table,
    key: RegistryKey,
}

impl ErrorBox {
    pub fn new(lua: &Lua) -> mlua::Result<Self> {
        let table = lua.create_table()?;
        let key = lua.create_registry_value(table.clone())?;
        Ok(ErrorBox { table, key })
    }

    fn take(&self) -> Value {
        let v = self.table.raw_get(1).unwrap_or(Value::Nil);
        let _ = self.table.raw_set(1, Value::Nil);
        v
    }
}

/// Resumes `co`, passing `arg` (the elapsed wait) unless this is its first run.
///
/// # Safety
/// `l` must be the lua_State of a coroutine that stays referenced (alive) during the call.
pub unsafe fn resume(
    lua: &Lua,
    l: *mut ffi::lua_State,
    token: *mut c_void,
    arg: Option<f64>,
    errors: &ErrorBox,
) -> Outcome {
    // SAFETY: per the contract above `l` is valid; its stack is only touched through the C API
    // while it is suspended (checked first), and left with nothing of ours on it.
    unsafe {
        if let Some(msg) = not_resumable(l) {
            return Outcome::Failed(lua.create_string(msg).map_or(Value::Nil, Value::String));
        }
        let mut nargs: c_int = 0;
        if let Some(x) = arg {
            if ffi::lua_status(l) == ffi::LUA_YIELD {
                ffi::lua_checkstack(l, 1);
                ffi::lua_pushnumber(l, x);
                nargs = 1;
            }
        }
        let mut nres: c_int = 0;
        let rc = ffi::lua_resume(l, ptr::null_mut(), nargs, &mut nres);
        match rc {
            ffi::LUA_YIELD => {
                let outcome = decode_wait(l, nres, token);
                ffi::lua_pop(l, nres);
                outcome
            }
            ffi::LUA_OK => {
                ffi::lua_pop(l, nres);
                Outcome::Finished
            }
            _ => {
                // The error object is on top of the dead coroutine's stack.
                ffi::lua_checkstack(l, 2);
                ffi::lua_rawgeti(l, ffi::LUA_REGISTRYINDEX, errors.key.id() as _);
                ffi::lua_insert(l, -2);
                ffi::lua_rawseti(l, -2, 1);
                ffi::lua_pop(l, 1);
                Outcome::Failed(errors.take())
            }
        }
    }
}

/// Why `l` cannot be resumed, if it cannot. A coroutine may be resumed when it yielded, or when
/// it is fresh: status OK, no call in progress, its body function on the stack. Lua 5.1's
/// `lua_resume` does not check this and would call whatever is left on a dead coroutine's stack.
///
/// SAFETY (caller): `l` must be a valid lua_State.
unsafe fn not_resumable(l: *mut ffi::lua_State) -> Option<&'static str> {
    match ffi::lua_status(l) {
        ffi::LUA_YIELD => None,
        ffi::LUA_OK => {
            let mut ar: ffi::lua_Debug = std::mem::zeroed();
            if ffi::lua_getstack(l, 0, &mut ar) != 0 {
                Some("cannot resume non-suspended coroutine")
            } else if ffi::lua_gettop(l) == 0 {
                Some("cannot resume dead coroutine")
            } else {
                None
            }
        }
        _ => Some("cannot resume dead coroutine"),
    }
}

/// SAFETY (caller): `l` is a valid, just-yielded lua_State with `nres` values on top.
unsafe fn decode_wait(l: *mut ffi::lua_State, nres: c_int, token: *mut c_void) -> Outcome {
    if nres < 2 || ffi::lua_touserdata(l, -nres) != token {
        return Outcome::ForeignYield;
    }
    let mut isnum: c_int = 0;
    let op = ffi::lua_tointegerx(l, -nres + 1, &mut isnum);
    if isnum == 0 {
        return Outcome::ForeignYield;
    }
    let arg = if nres >= 3 {
        let x = ffi::lua_tonumberx(l, -nres + 2, &mut isnum);
        (isnum != 0).then_some(x)
    } else {
        None
    };
    Outcome::Wait { op, arg }
}
