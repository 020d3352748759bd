//! Errors cross the seam in Lua's words.
//!
//! An error returned by an mlua callback reaches Lua as a userdata whose text is mlua's
//! (`error converting Lua nil to i64`, `runtime error: ...`, an OS error's `(os error 9)`)
//! followed by a stack traceback. Programs match error strings, so a core function never
//! returns an error to mlua: `Reply` turns it into the results `false, message`, with the
//! message a Lua function would give (`lua_style`: `bad argument #1 to 'remove' (number
//! expected, got nil)`), and `true, ...` otherwise; `plain_errors`, a C function around the
//! mlua one, raises the message as a plain string. (mlua's own error path also fails while
//! the interpreter closes, when finalizers may still call copas.)

use std::os::raw::{c_int, c_void};

use mlua::state::RawLua;
use mlua::{ffi, Error, FromLuaMulti, Function, IntoLuaMulti, Lua, MultiValue, WeakLua};

use crate::protect_slots;

/// The arguments of a core function, converted by mlua straight off the Lua stack; a bad
/// argument is kept as the error instead of being raised through mlua.
pub struct Args<A>(pub mlua::Result<A>);

impl<A: FromLuaMulti> FromLuaMulti for Args<A> {
    fn from_lua_multi(values: MultiValue, lua: &Lua) -> mlua::Result<Self> {
        Ok(Args(A::from_lua_multi(values, lua)))
    }

    unsafe fn from_stack_multi(nvals: c_int, lua: &RawLua) -> mlua::Result<Self> {
        // SAFETY: forwarded as mlua called it.
        Ok(Args(unsafe { A::from_stack_multi(nvals, lua) }))
    }

    unsafe fn from_stack_args(
        nargs: c_int,
        i: usize,
        to: Option<&str>,
        lua: &RawLua,
    ) -> mlua::Result<Self> {
        // SAFETY: forwarded as mlua called it.
        Ok(Args(unsafe { A::from_stack_args(nargs, i, to, lua) }))
    }
}

/// The results of a core function for `plain_errors`: `true` and its results, or `false` and
/// the message of its error (`Reply::new` words it). Pushed straight onto the Lua stack: no
/// list of values is made per call.
pub struct Reply<R>(Result<R, String>);

impl<R> Reply<R> {
    pub fn new(name: &str, results: mlua::Result<R>) -> Self {
        Reply(results.map_err(|e| lua_style(name, &e)))
    }
}

impl<R: IntoLuaMulti> IntoLuaMulti for Reply<R> {
    fn into_lua_multi(self, lua: &Lua) -> mlua::Result<MultiValue> {
        match self.0 {
            Ok(results) => (true, results).into_lua_multi(lua),
            Err(message) => (false, message).into_lua_multi(lua),
        }
    }

    unsafe fn push_into_stack_multi(self, lua: &RawLua) -> mlua::Result<c_int> {
        // SAFETY: forwarded as mlua called it.
        unsafe {
            match self.0 {
                Ok(results) => (true, results).push_into_stack_multi(lua),
                Err(message) => (false, message).push_into_stack_multi(lua),
            }
        }
    }
}

/// The message a Lua function named `name` would raise for `err`.
pub fn lua_style(name: &str, err: &Error) -> String {
    match err {
        Error::BadArgument { pos, cause, .. } => {
            format!("bad argument #{pos} to '{name}' ({})", reason(cause))
        }
        Error::FromLuaConversionError { .. } => {
            format!("bad argument #1 to '{name}' ({})", reason(err))
        }
        Error::CallbackError { cause, .. } | Error::WithContext { cause, .. } => {
            lua_style(name, cause)
        }
        Error::RuntimeError(msg) | Error::MemoryError(msg) => msg.clone(),
        Error::ExternalError(e) => without_os_error_code(&e.to_string()),
        other => format!("{name}: {}", first_line(&other.to_string())),
    }
}

/// The part in parentheses of a bad argument message: `number expected, got nil`.
fn reason(err: &Error) -> String {
    match err {
        Error::FromLuaConversionError { from, to, .. } => {
            format!("{} expected, got {from}", lua_type_name(to))
        }
        Error::CallbackError { cause, .. } | Error::WithContext { cause, .. } => reason(cause),
        Error::RuntimeError(msg) => msg.clone(),
        other => first_line(&other.to_string()),
    }
}

/// The Lua type a conversion target stands for (`i64` is a number).
fn lua_type_name(rust: &str) -> &str {
    match rust {
        "i8" | "i16" | "i32" | "i64" | "isize" | "u8" | "u16" | "u32" | "u64" | "usize" | "f32"
        | "f64" | "integer" | "number" => "number",
        "String" | "string" | "BString" => "string",
        "bool" | "boolean" => "boolean",
        "Table" | "table" => "table",
        "Function" | "function" => "function",
        "Thread" | "thread" => "thread",
        "AnyUserData" | "userdata" => "userdata",
        other => other,
    }
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_string()
}

/// `Bad file descriptor (os error 9)` reads `Bad file descriptor`, as LuaSocket says it.
fn without_os_error_code(text: &str) -> String {
    let text = first_line(text);
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_string(),
        _ => text,
    }
}

/// Wraps the mlua function `f` in a C function that calls it and re-raises its errors as plain
/// strings, cut before mlua's traceback. Error values that are not mlua's (a table raised by a
/// hook) pass unchanged. Once the mlua state `open` refers to is gone (finalizers that run
/// while the interpreter closes may still call copas), `f` is not called at all: mlua's
/// callback machinery is gone with it, so the wrapper raises `CLOSING` itself.
pub fn plain_errors(lua: &Lua, f: Function, open: &'static WeakLua) -> mlua::Result<Function> {
    let open = open as *const WeakLua as *mut c_void;
    // SAFETY: the closure pushes one C closure over the argument `f`, on the stack mlua
    // prepared for it, and a light userdata (room for three values is checked by mlua).
    unsafe {
        lua.exec_raw(f, |l| {
            ffi::lua_pushlightuserdata(l, open);
            ffi::lua_pushcclosure(l, call_with_plain_errors, 2);
        })
    }
}

/// What copas functions raise once the interpreter's mlua state is gone.
const CLOSING: &[u8] = b"copas: the Lua state is closing";

const TRACEBACK: &[u8] = b"\nstack traceback:";

unsafe extern "C-unwind" fn call_with_plain_errors(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: made by `plain_errors`, so upvalue 1 is the wrapped function and upvalue 2 a
    // leaked `WeakLua`. Nothing on this frame owns memory, so the `lua_error` jump past it
    // frees nothing twice and leaks nothing.
    unsafe {
        let open = &*(ffi::lua_touserdata(l, ffi::lua_upvalueindex(2)) as *const WeakLua);
        if open.try_upgrade().is_none() {
            ffi::lua_pushlstring(l, CLOSING.as_ptr() as *const _, CLOSING.len());
            ffi::lua_error(l);
        }
        let n = ffi::lua_gettop(l);
        ffi::lua_checkstack(l, 4);
        // Below the call: what mlua's protected-call slots held (`protect_slots.rs`).
        let saved = protect_slots::save(l);
        for _ in 0..saved {
            ffi::lua_insert(l, 1);
        }
        ffi::lua_pushvalue(l, ffi::lua_upvalueindex(1));
        ffi::lua_insert(l, saved + 1);
        let status = ffi::lua_pcall(l, n, ffi::LUA_MULTRET, 0);
        protect_slots::restore(l, saved);
        for _ in 0..saved {
            ffi::lua_remove(l, 1);
        }
        if status == ffi::LUA_OK {
            if ffi::lua_toboolean(l, 1) != 0 {
                ffi::lua_remove(l, 1);
                return ffi::lua_gettop(l);
            }
            ffi::lua_settop(l, 2); // the message, from `Reply`
            ffi::lua_error(l);
        }
        // An error of mlua itself (a panic of the core, a failed allocation).
        if matches!(ffi::lua_type(l, -1), ffi::LUA_TSTRING | ffi::LUA_TUSERDATA) {
            let mut len = 0usize;
            let text = ffi::luaL_tolstring(l, -1, &mut len) as *const u8;
            let text = std::slice::from_raw_parts(text, len);
            let cut = text
                .windows(TRACEBACK.len())
                .position(|w| w == TRACEBACK)
                .unwrap_or(len);
            let message = text.strip_prefix(b"runtime error: ").unwrap_or(text);
            let message = &message[..cut - (len - message.len())];
            ffi::lua_pushlstring(l, message.as_ptr() as *const _, message.len());
        }
        ffi::lua_error(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // mlua's error type holds the cause of a bad argument in an Arc, Send or not.
    #[allow(clippy::arc_with_non_send_sync)]
    #[test]
    fn a_conversion_error_reads_as_a_bad_argument() {
        let err = Error::BadArgument {
            to: None,
            pos: 2,
            name: None,
            cause: std::sync::Arc::new(Error::FromLuaConversionError {
                from: "nil",
                to: "i64".to_string(),
                message: Some("expected number".to_string()),
            }),
        };
        assert_eq!(
            lua_style("remove", &err),
            "bad argument #2 to 'remove' (number expected, got nil)"
        );
    }

    #[test]
    fn an_os_error_loses_its_code() {
        let err = Error::external(std::io::Error::from_raw_os_error(9));
        assert_eq!(lua_style("watch", &err), "Bad file descriptor");
    }

    #[test]
    fn a_runtime_error_keeps_its_message() {
        let err = Error::runtime("copas: too many threads or timers at once");
        assert_eq!(
            lua_style("spawn", &err),
            "copas: too many threads or timers at once"
        );
    }
}
