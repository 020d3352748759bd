//! The registry slots through which mlua hands each protected call its C function on Lua 5.1,
//! and how a nested copas call leaves them as it found them.
//!
//! mlua 0.12.2 on Lua 5.1 (module mode) starts a protected call (`raw_set`, `create_string`,
//! ...) by storing its two C functions in two registry slots, keyed by two statics of its own,
//! from inside a `lua_cpcall`, then reading them back for `lua_pcall`. Lua 5.1 runs a
//! garbage-collection step as that `lua_cpcall` returns (`luaD_call` ends with
//! `luaC_checkGC`); the step may run a `__gc` finalizer, and a finalizer that calls copas makes
//! protected calls of its own, which store their functions in the same slots. The interrupted
//! call then reads the nested call's function and runs it on its own parameters: a segfault.
//! (LuaJIT checks the collector only before it allocates, and 5.2+ mlua pushes the functions
//! directly, so only 5.1 has the window.)
//!
//! Every mlua function of the core enters through `errors::call_with_plain_errors`, which
//! `save`s the slots' values on the Lua stack before the call and `restore`s them after it:
//! whatever a nested call stored, the interrupted one reads its own. The slots are found once
//! per process (`find`): the registry's light-userdata keys that point into this library and
//! hold C functions. If mlua stops using them, nothing is found and nothing is kept.

#[cfg(feature = "lua51")]
mod lua51 {
    use std::os::raw::{c_int, c_void};
    use std::sync::OnceLock;

    use mlua::ffi;

    /// mlua's slots: the error handler's and the protected function's.
    const SLOTS: usize = 2;

    struct Keys([usize; SLOTS]);

    static KEYS: OnceLock<Option<Keys>> = OnceLock::new();

    fn keys() -> Option<&'static Keys> {
        KEYS.get().and_then(Option::as_ref)
    }

    /// Looks for the slots in the registry of `l`, once per process. mlua fills them at its
    /// first protected call, which has run by the time a module's table is filled.
    ///
    /// SAFETY (caller): `l` is a valid state with room for three more values.
    pub unsafe fn find(l: *mut ffi::lua_State) {
        KEYS.get_or_init(|| {
            let mut found = Vec::new();
            // SAFETY: a `lua_next` walk of the registry that changes nothing; each pass
            // leaves the key on the stack for the next one.
            unsafe {
                ffi::lua_pushnil(l);
                while ffi::lua_next(l, ffi::LUA_REGISTRYINDEX) != 0 {
                    if ffi::lua_type(l, -2) == ffi::LUA_TLIGHTUSERDATA
                        && ffi::lua_iscfunction(l, -1) != 0
                    {
                        let key = ffi::lua_touserdata(l, -2);
                        if crate::in_this_library(key) {
                            found.push(key as usize);
                        }
                    }
                    ffi::lua_pop(l, 1);
                }
            }
            let keys: [usize; SLOTS] = found.try_into().ok()?;
            Some(Keys(keys))
        });
    }

    /// Pushes the slots' values (as many as `save` returns; 0 if the slots are unknown).
    ///
    /// SAFETY (caller): `l` is a valid state with room for `SLOTS` more values.
    pub unsafe fn save(l: *mut ffi::lua_State) -> c_int {
        let Some(keys) = keys() else { return 0 };
        for key in keys.0 {
            // SAFETY: a raw read of the registry; nothing is allocated.
            unsafe {
                ffi::lua_pushlightuserdata(l, key as *mut c_void);
                ffi::lua_rawget(l, ffi::LUA_REGISTRYINDEX);
            }
        }
        SLOTS as c_int
    }

    /// Stores back the values `save` pushed, now at stack indexes `1..=saved`.
    ///
    /// SAFETY (caller): `l` is a valid state, and `save` pushed `saved` values that were then
    /// moved to the bottom of the stack.
    pub unsafe fn restore(l: *mut ffi::lua_State, saved: c_int) {
        let Some(keys) = keys().filter(|_| saved > 0) else {
            return;
        };
        // SAFETY: asks for stack room; without it (a stack at its limit) the slots stay as the
        // nested call left them, which only matters inside the rare window described above.
        if unsafe { ffi::lua_checkstack(l, 2) } == 0 {
            return;
        }
        for (i, key) in keys.0.into_iter().enumerate() {
            // SAFETY: the keys exist in the registry, so the raw write allocates nothing.
            unsafe {
                ffi::lua_pushlightuserdata(l, key as *mut c_void);
                ffi::lua_pushvalue(l, i as c_int + 1);
                ffi::lua_rawset(l, ffi::LUA_REGISTRYINDEX);
            }
        }
    }
}

#[cfg(not(feature = "lua51"))]
mod other {
    use std::os::raw::c_int;

    use mlua::ffi;

    pub unsafe fn find(_: *mut ffi::lua_State) {}

    pub unsafe fn save(_: *mut ffi::lua_State) -> c_int {
        0
    }

    pub unsafe fn restore(_: *mut ffi::lua_State, _: c_int) {}
}

#[cfg(feature = "lua51")]
pub use lua51::{find, restore, save};
#[cfg(not(feature = "lua51"))]
pub use other::{find, restore, save};
