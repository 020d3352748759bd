//! The raw resume of a task coroutine and the decoding of what it yielded.
//!
//! mlua's `Thread::resume` turns a non-string error value into a string and appends a traceback;
//! Copas error handlers must receive the original value, with the dead coroutine's stack intact
//! for `debug.traceback(co)`. So the resume goes through `lua_resume` directly.

use std::os::raw::{c_int, c_void};
use std::ptr;

use mlua::{ffi, Lua, RegistryKey, Table, Value};

use crate::luasocket::Received;
use crate::readiness::Sent;

/// What a resumed coroutine did.
pub enum Outcome {
    /// Yielded `(TOKEN, op, args...)` (up to four numbers, then a userdata and a string): a
    /// wait request from the copas shim. The userdata and the string stay valid while the
    /// coroutine waits: its frame holds them.
    Wait {
        op: i64,
        args: [Option<f64>; 4],
        object: *const c_void,
        bytes: *const [u8],
    },
    /// Yielded anything else: user code called `coroutine.yield` itself.
    ForeignYield,
    /// The body returned.
    Finished,
    /// The body raised; the value is the error object as raised.
    Failed(Value),
}

/// What a resume passes to the coroutine.
pub enum Arg {
    Nothing,
    /// A number, passed only to a coroutine that yielded (a fresh one starts without it).
    Number(f64),
    /// The value put into the box with `ValueBox::put_arg`, passed in any case.
    Boxed,
    /// What a receive the core finished gave: LuaSocket's results without the prefix.
    Received(Received),
    /// What a send the core finished gave: `true, last` or `false, err, last`.
    Sent(Sent),
}

/// Values cross between Lua and the raw resume through this table: the error object leaves the
/// coroutine through slot 1 (so mlua hands it over as a `Value` without converting it), and a
/// resume argument other than a number enters through slot 2.
pub struct ValueBox {
    table: Table,
    key: RegistryKey,
}

const ERROR_SLOT: i32 = 1;
const ARG_SLOT: i32 = 2;

impl ValueBox {
    pub fn new(lua: &Lua) -> mlua::Result<Self> {
        let table = lua.create_table()?;
        let key = lua.create_registry_value(table.clone())?;
        Ok(ValueBox { table, key })
    }

    fn take(&self) -> Value {
        let v = self.table.raw_get(ERROR_SLOT).unwrap_or(Value::Nil);
        let _ = self.table.raw_set(ERROR_SLOT, Value::Nil);
        v
    }

    pub fn put_arg(&self, v: Value) -> mlua::Result<()> {
        self.table.raw_set(ARG_SLOT, v)
    }

    /// Moves the boxed argument onto `l`'s stack and empties the slot.
    ///
    /// SAFETY (caller): `l` is a valid lua_State with room for two more values.
    unsafe fn push_arg(&self, l: *mut ffi::lua_State) {
        ffi::lua_rawgeti(l, ffi::LUA_REGISTRYINDEX, self.key.id() as _);
        ffi::lua_rawgeti(l, -1, ARG_SLOT as _);
        ffi::lua_pushnil(l);
        ffi::lua_rawseti(l, -3, ARG_SLOT as _);
        ffi::lua_remove(l, -2);
    }
}

/// Resumes `co` with `arg`.
///
/// # Safety
/// `l` must be the lua_State of a coroutine that stays referenced (alive) during the call.
pub unsafe fn resume(
    lua: &Lua,
    l: *mut ffi::lua_State,
    token: *mut c_void,
    arg: Arg,
    values: &ValueBox,
) -> Outcome {
    // SAFETY: per the contract above `l` is valid; its stack is only touched through the C API
    // while it is suspended (checked first), and left with nothing of ours on it.
    unsafe {
        if let Some(msg) = not_resumable(l) {
            return Outcome::Failed(lua.create_string(msg).map_or(Value::Nil, Value::String));
        }
        let mut nargs: c_int = 0;
        match arg {
            Arg::Number(x) if ffi::lua_status(l) == ffi::LUA_YIELD => {
                ffi::lua_checkstack(l, 1);
                ffi::lua_pushnumber(l, x);
                nargs = 1;
            }
            Arg::Boxed => {
                ffi::lua_checkstack(l, 2);
                values.push_arg(l);
                nargs = 1;
            }
            Arg::Received(received) => {
                ffi::lua_checkstack(l, 3);
                nargs = push_received(l, received);
            }
            Arg::Sent((last, err)) => {
                ffi::lua_checkstack(l, 3);
                ffi::lua_pushboolean(l, err.is_none() as c_int);
                if let Some(err) = err {
                    ffi::lua_pushlstring(l, err.as_ptr() as *const _, err.len());
                }
                ffi::lua_pushnumber(l, last);
                nargs = if err.is_none() { 2 } else { 3 };
            }
            _ => {}
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
                // The error object is on top of the dead coroutine's stack. (Taking it out goes
                // through mlua: the caller checks that mlua's state lives.)
                ffi::lua_checkstack(l, 2);
                ffi::lua_rawgeti(l, ffi::LUA_REGISTRYINDEX, values.key.id() as _);
                ffi::lua_insert(l, -2);
                ffi::lua_rawseti(l, -2, ERROR_SLOT as _);
                ffi::lua_pop(l, 1);
                Outcome::Failed(values.take())
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
    let number_at = |i: c_int| {
        if nres > i {
            let mut isnum: c_int = 0;
            let x = ffi::lua_tonumberx(l, -nres + i, &mut isnum);
            (isnum != 0).then_some(x)
        } else {
            None
        }
    };
    let object = if nres > 6 {
        ffi::lua_touserdata(l, -nres + 6) as *const c_void
    } else {
        ptr::null()
    };
    let mut len = 0usize;
    let bytes = if nres > 7 && ffi::lua_type(l, -nres + 7) == ffi::LUA_TSTRING {
        ffi::lua_tolstring(l, -nres + 7, &mut len) as *const u8
    } else {
        ptr::null()
    };
    Outcome::Wait {
        op,
        args: [number_at(2), number_at(3), number_at(4), number_at(5)],
        object,
        bytes: ptr::slice_from_raw_parts(bytes, len),
    }
}

/// Pushes LuaSocket's results of a receive onto `l`; returns how many.
///
/// SAFETY (caller): `l` is a suspended coroutine's state with room for three values. Pushing a
/// string can raise (out of memory) and unwind past this frame: the buffers, moved in here,
/// then leak instead of being freed twice.
unsafe fn push_received(l: *mut ffi::lua_State, received: Received) -> c_int {
    let push = |bytes: &[u8]| ffi::lua_pushlstring(l, bytes.as_ptr() as *const _, bytes.len());
    let received = std::mem::ManuallyDrop::new(received);
    let n = match &*received {
        Received::Done(data) => {
            push(data);
            1
        }
        Received::WouldBlock(part) => {
            ffi::lua_pushnil(l);
            push(b"timeout");
            push(part);
            3
        }
        Received::Failed(err, part) => {
            ffi::lua_pushnil(l);
            push(err.as_bytes());
            push(part);
            3
        }
    };
    drop(std::mem::ManuallyDrop::into_inner(received));
    n
}
