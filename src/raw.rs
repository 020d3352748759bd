//! Clearing a slot of a Lua table through the C API.
//!
//! On Lua 5.1 and LuaJIT every `mlua::Table::raw_set` runs inside a protected call made by
//! pushing a fresh C closure: about 144 bytes of garbage per call. The scheduler clears a
//! coroutine's slot each time a task ends, so it does that here, on a private thread's stack.

use std::os::raw::c_int;

use mlua::{ffi, Lua, RegistryKey, Table, Thread};

pub struct SlotClearer {
    // Keeps the scratch thread (and so `state`) alive.
    _thread: Thread,
    state: *mut ffi::lua_State,
    table: RegistryKey,
}

impl SlotClearer {
    /// A clearer for the slots of `table`.
    pub fn new(lua: &Lua, table: &Table) -> mlua::Result<Self> {
        let thread = lua.create_thread(lua.create_function(|_, ()| Ok(()))?)?;
        let state = thread.state();
        Ok(SlotClearer {
            _thread: thread,
            state,
            table: lua.create_registry_value(table.clone())?,
        })
    }

    /// Sets `table[key] = nil`.
    ///
    /// # Safety
    /// `table[key]` must currently hold a non-nil value and the table must have no metatable:
    /// then the assignment finds the existing slot, so it neither allocates nor raises, and no
    /// error can unwind through this frame.
    pub unsafe fn clear(&self, key: usize) {
        let l = self.state;
        // SAFETY: `l` is the scratch thread's state, kept alive by `_thread` and used by nothing
        // else; a fresh thread has LUA_MINSTACK (20) free slots and two are pushed and popped.
        unsafe {
            ffi::lua_rawgeti(l, ffi::LUA_REGISTRYINDEX, self.table.id() as _);
            ffi::lua_pushnil(l);
            ffi::lua_rawseti(l, -2, key as _);
            ffi::lua_settop(l, 0 as c_int);
        }
    }
}
