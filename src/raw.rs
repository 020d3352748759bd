//! Table accesses the scheduler makes per task or per step, through the C API on a private
//! thread's stack.
//!
//! On Lua 5.1 and LuaJIT every `mlua::Table::raw_set` runs inside a protected call made by
//! pushing a fresh C closure: about 144 bytes of garbage per call. The scheduler clears a
//! coroutine's slot each time a task ends, so it does that here. A semaphore `give` (a raw C
//! function, where mlua's idea of the current state may be stale) moves a waiter's coroutine
//! back from the weak table to the strong one, so that goes through here too. And reading a function out of
//! a table through mlua makes (and drops) a reference for it: `copas.loop`, which checks
//! `copas.step` and `copas.finished` before every step, compares them by identity here.

use std::os::raw::{c_int, c_void};

use mlua::{ffi, Function, Lua, RegistryKey, Table, Thread};

/// The two tables that hold task coroutines by key: `threads` (strong) and `forever` (weak
/// values).
pub struct TaskSlots {
    // Keeps the scratch thread (and so `state`) alive.
    _thread: Thread,
    state: *mut ffi::lua_State,
    threads: RegistryKey,
    forever: RegistryKey,
}

impl TaskSlots {
    pub fn new(lua: &Lua, threads: &Table, forever: &Table) -> mlua::Result<Self> {
        let thread = lua.create_thread(lua.create_function(|_, ()| Ok(()))?)?;
        let state = thread.state();
        Ok(TaskSlots {
            _thread: thread,
            state,
            threads: lua.create_registry_value(threads.clone())?,
            forever: lua.create_registry_value(forever.clone())?,
        })
    }

    /// Sets `threads[key] = nil`.
    ///
    /// # Safety
    /// `threads[key]` must currently hold a non-nil value (the table has no metatable): then
    /// the assignment finds the existing slot, so it neither allocates nor raises, and no error
    /// can unwind through this frame.
    pub unsafe fn clear(&self, key: usize) {
        let l = self.state;
        // SAFETY: `l` is the scratch thread's state, kept alive by `_thread` and used by nothing
        // else; a fresh thread has LUA_MINSTACK (20) free slots and two are pushed and popped.
        unsafe {
            ffi::lua_settop(l, 0);
            ffi::lua_rawgeti(l, ffi::LUA_REGISTRYINDEX, self.threads.id() as _);
            ffi::lua_pushnil(l);
            ffi::lua_rawseti(l, -2, key as _);
            ffi::lua_settop(l, 0);
        }
    }

    /// Moves `forever[key]` to `threads[key]`. False when it is gone (collected). Storing may
    /// allocate, and so run finalizers, so it runs as a protected call on the scratch thread.
    pub fn revive(&self, key: usize) -> bool {
        let l = self.state;
        // SAFETY: `l` is the scratch thread's state (see `clear`); four values are pushed, and
        // `move_back` runs protected, so an error (out of memory, a failing finalizer on 5.1)
        // ends the call with a status instead of unwinding through this frame.
        unsafe {
            ffi::lua_settop(l, 0);
            ffi::lua_pushcfunction(l, move_back);
            ffi::lua_rawgeti(l, ffi::LUA_REGISTRYINDEX, self.forever.id() as _);
            ffi::lua_rawgeti(l, ffi::LUA_REGISTRYINDEX, self.threads.id() as _);
            ffi::lua_pushinteger(l, key as _);
            let moved = ffi::lua_pcall(l, 3, 1, 0) == ffi::LUA_OK && ffi::lua_toboolean(l, -1) != 0;
            ffi::lua_settop(l, 0);
            moved
        }
    }
}

/// `move_back(from, to, key)`: `to[key] = from[key]`, `from[key] = nil`; returns whether there
/// was a value.
unsafe extern "C-unwind" fn move_back(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by `TaskSlots::revive` with two tables and an integer; raw accesses only.
    unsafe {
        let key = ffi::lua_tointegerx(l, 3, std::ptr::null_mut());
        ffi::lua_rawgeti(l, 1, key);
        if ffi::lua_isnil(l, -1) != 0 {
            ffi::lua_pushboolean(l, 0);
            return 1;
        }
        ffi::lua_rawseti(l, 2, key);
        ffi::lua_pushnil(l);
        ffi::lua_rawseti(l, 1, key);
        ffi::lua_pushboolean(l, 1);
        1
    }
}

/// Tells whether two entries of a table still hold the values they held when it was made.
pub struct EntryWatch {
    _thread: Thread,
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
            _thread: thread,
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
