//! The protocol between the Lua side and the core: how a copas coroutine asks to wait, what its
//! yield then returns, the receive modes of the connection reads, and what the accept hook
//! reports. `export` puts every constant into the `copas.core` table, where `lua/copas.lua`
//! and its modules take them from; nothing on the Lua side repeats a number.

use std::os::raw::c_void;

use mlua::{LightUserData, Table};

/// Its address marks a yield as coming from the copas shim: `coroutine.yield(TOKEN, op, ...)`.
/// Anything else a coroutine yields is user code yielding to copas, which is an error.
static TOKEN: u8 = 0;

pub fn token() -> *mut c_void {
    &TOKEN as *const u8 as *mut c_void
}

/// `pause(arg)`: sleep `arg` seconds (none, or not positive: one step). The yield returns the
/// time slept.
pub const OP_PAUSE: i64 = 1;
/// `pauseforever()`: until woken.
pub const OP_FOREVER: i64 = 2;
/// The core timer coroutine is done with the timer it was resumed for.
pub const OP_TIMER_DONE: i64 = 3;
/// Wait until fd `arg` is readable (writable), or until the monotonic deadline `arg2` (seconds,
/// see `Core::now`). The yield returns 1 when the fd is worth a retry, 0 on the deadline.
pub const OP_READ: i64 = 4;
pub const OP_WRITE: i64 = 5;
/// Wait for name lookup `arg` to finish, or until the deadline `arg2`; returns as OP_READ.
pub const OP_LOOKUP: i64 = 6;
/// Wait in the line of semaphore `arg` for `arg2` resources, at most `arg3` seconds (none: for
/// ever); `arg4`, when given, is the count the Lua side kept while nobody waited. The yield
/// returns GRANTED, TIMED_OUT or DESTROYED.
pub const OP_SEMAPHORE: i64 = 7;

/// Receive on the connection the core reads directly (`binding.rs` `read_directly`): the
/// LuaSocket object is the sixth value of the yield, `arg` its fd, `arg2` the deadline, `arg3`
/// the pattern (a count, or PATTERN_LINE / PATTERN_ALL), `arg4` the prefix length. The core
/// reads when the fd becomes readable and resumes the coroutine only once the receive is
/// complete, with LuaSocket's results without the prefix (`data` or `nil, err, partial`;
/// `nil, "timeout", partial` at the deadline); or with the number 1 when the coroutine must
/// try itself (the socket was closed meanwhile).
pub const OP_RECEIVE: i64 = 8;
pub const PATTERN_LINE: f64 = -1.0;
pub const PATTERN_ALL: f64 = -2.0;

/// Send on a LuaSocket TCP connection: the object is the sixth value of the yield and the data
/// (a string) the seventh; `arg` its fd, `arg2` the deadline, `arg3` the index of the first
/// byte still to send and `arg4` LuaSocket's `j` (none: to the end). The core writes whenever
/// the fd becomes writable and resumes the coroutine once all of it went out (`true, last`),
/// an error or `copas.close` stopped it (`false, err, last`; `false, "timeout", last` at the
/// deadline).
pub const OP_SEND: i64 = 9;

/// The results of an OP_SEMAPHORE wait.
pub const GRANTED: f64 = 1.0;
pub const TIMED_OUT: f64 = 0.0;
pub const DESTROYED: f64 = 2.0;

/// Receive patterns of a connection read (anything else is a byte count).
pub const MODE_LINE: i64 = 1;
pub const MODE_ALL: i64 = 2;

/// What the shim's accept hook reports: it accepted a connection (try again next step), there
/// was none, or the accept failed (descriptors ran out: try again after a back-off).
pub const ACCEPTED: i64 = 1;
pub const NOTHING_TO_ACCEPT: i64 = 0;
pub const ACCEPT_FAILED: i64 = 2;

/// Puts `TOKEN` and every constant above into the module table.
pub fn export(module: &Table) -> mlua::Result<()> {
    module.set("TOKEN", LightUserData(token()))?;
    let ops = [
        ("OP_PAUSE", OP_PAUSE),
        ("OP_FOREVER", OP_FOREVER),
        ("OP_TIMER_DONE", OP_TIMER_DONE),
        ("OP_READ", OP_READ),
        ("OP_WRITE", OP_WRITE),
        ("OP_LOOKUP", OP_LOOKUP),
        ("OP_SEMAPHORE", OP_SEMAPHORE),
        ("OP_RECEIVE", OP_RECEIVE),
        ("OP_SEND", OP_SEND),
        ("MODE_LINE", MODE_LINE),
        ("MODE_ALL", MODE_ALL),
        ("ACCEPTED", ACCEPTED),
        ("NOTHING_TO_ACCEPT", NOTHING_TO_ACCEPT),
        ("ACCEPT_FAILED", ACCEPT_FAILED),
    ];
    for (name, value) in ops {
        module.set(name, value)?;
    }
    for (name, value) in [
        ("GRANTED", GRANTED),
        ("TIMED_OUT", TIMED_OUT),
        ("DESTROYED", DESTROYED),
        ("PATTERN_LINE", PATTERN_LINE),
        ("PATTERN_ALL", PATTERN_ALL),
    ] {
        module.set(name, value)?;
    }
    Ok(())
}
