//! Where task coroutines live: two Lua tables indexed by task key, `threads` (strong) and
//! `forever` (weak values), accessed through the C API on a private thread's stack.
//!
//! On Lua 5.1 and LuaJIT every `mlua::Table::raw_set` runs inside a protected call made by
//! pushing a fresh C closure: about 144 bytes of garbage per call, and a point where the
//! collector may run finalizers that call back into the core. The scheduler clears a
//! coroutine's slot each time a task ends, and moves coroutines between the strong and the
//! weak table (also from a semaphore `give`, a raw C function, where mlua's idea of the
//! current state may be stale), so those go through here.

use std::os::raw::c_int;

use mlua::{ffi, Lua, RegistryKey, Table};

/// The two tables that hold task coroutines by key: `threads` (strong) and `forever` (weak
/// values).
///
/// None of these operations runs a garbage-collection step, so no finalizer can call into the
/// core in the middle of one: raw gets and sets of existing keys allocate nothing, and a set
/// that adds a key only grows the table (the collector steps only where objects are created).
/// The function that moves a coroutine between the tables is made once, since pushing a C
/// function allocates a closure on 5.1/LuaJIT.
pub struct TaskSlots {
    // Keeps the scratch thread (and so `state`) alive: a registry reference, which lasts as long
    // as the interpreter (an mlua handle would go with mlua's state, which a closing
    // interpreter may finalize before a finalizer that still calls copas).
    _thread: RegistryKey,
    state: *mut ffi::lua_State,
    threads: RegistryKey,
    forever: RegistryKey,
    move_back: RegistryKey,
}

impl TaskSlots {
    pub fn new(lua: &Lua, threads: &Table, forever: &Table) -> mlua::Result<Self> {
        let thread = lua.create_thread(lua.create_function(|_, ()| Ok(()))?)?;
        let state = thread.state();
        // SAFETY: `move_back` only makes raw accesses to the arguments `move_slot` gives it.
        let move_back = unsafe { lua.create_c_function(move_back)? };
        Ok(TaskSlots {
            _thread: lua.create_registry_value(thread)?,
            state,
            threads: lua.create_registry_value(threads.clone())?,
            forever: lua.create_registry_value(forever.clone())?,
            move_back: lua.create_registry_value(move_back)?,
        })
    }

    /// Sets `threads[key] = nil`.
    ///
    /// # Safety
    /// `threads[key]` must currently hold a non-nil value (the table has no metatable): then
    /// the assignment finds the existing slot, so it neither allocates nor raises, and no error
    /// can unwind through this frame.
    pub unsafe fn clear(&self, key: usize) {
        // SAFETY: the caller's promise.
        unsafe { self.clear_in(&self.threads, key) }
    }

    /// Sets `forever[key] = nil`, if it holds anything (its coroutine may have been collected).
    pub fn clear_forever(&self, key: usize) {
        if !self.collected(key) {
            // SAFETY: `forever[key]` holds a value, and weak tables have no `__newindex`.
            unsafe { self.clear_in(&self.forever, key) }
        }
    }

    /// # Safety
    /// As `clear`, for the table `table` refers to.
    unsafe fn clear_in(&self, table: &RegistryKey, key: usize) {
        let l = self.state;
        // SAFETY: `l` is the scratch thread's state, kept alive by `_thread` and used by nothing
        // else; a fresh thread has LUA_MINSTACK (20) free slots and two are pushed and popped.
        unsafe {
            ffi::lua_settop(l, 0);
            ffi::lua_rawgeti(l, ffi::LUA_REGISTRYINDEX, table.id() as _);
            ffi::lua_pushnil(l);
            ffi::lua_rawseti(l, -2, key as _);
            ffi::lua_settop(l, 0);
        }
    }

    /// Moves `forever[key]` to `threads[key]`. False when it is gone (collected).
    pub fn revive(&self, key: usize) -> bool {
        self.move_slot(&self.forever, &self.threads, key)
    }

    /// Moves `threads[key]` to `forever[key]`, where it can be collected. False when there was
    /// nothing to move.
    pub fn demote(&self, key: usize) -> bool {
        self.move_slot(&self.threads, &self.forever, key)
    }

    /// True when `forever[key]` is empty: its coroutine was collected (or moved back).
    pub fn collected(&self, key: usize) -> bool {
        let l = self.state;
        // SAFETY: `l` is the scratch thread's state (see `clear`); two values are pushed, and
        // raw gets of an integer key neither allocate nor raise.
        unsafe {
            ffi::lua_settop(l, 0);
            ffi::lua_rawgeti(l, ffi::LUA_REGISTRYINDEX, self.forever.id() as _);
            ffi::lua_rawgeti(l, -1, key as _);
            let empty = ffi::lua_isnil(l, -1) != 0;
            ffi::lua_settop(l, 0);
            empty
        }
    }

    /// `to[key] = from[key]`, `from[key] = nil`; false when `from[key]` was empty. Adding the
    /// key to `to` may grow it, which can fail for want of memory, so it runs protected.
    fn move_slot(&self, from: &RegistryKey, to: &RegistryKey, key: usize) -> bool {
        let l = self.state;
        // SAFETY: `l` is the scratch thread's state (see `clear`); four values are pushed, and
        // `move_back` runs protected, so an error ends the call with a status instead of
        // unwinding through this frame.
        unsafe {
            ffi::lua_settop(l, 0);
            ffi::lua_rawgeti(l, ffi::LUA_REGISTRYINDEX, self.move_back.id() as _);
            ffi::lua_rawgeti(l, ffi::LUA_REGISTRYINDEX, from.id() as _);
            ffi::lua_rawgeti(l, ffi::LUA_REGISTRYINDEX, to.id() as _);
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
    // SAFETY: called by `TaskSlots::move_slot` with two tables and an integer; raw accesses only.
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
