//! Readiness: who waits on which descriptor, in which direction, and what happens when epoll
//! says it is ready; servers and accepting (with the back-off after a failed accept, on the
//! one deadline heap); the connections the core reads and writes itself; name lookups.
//!
//! Waiting: a coroutine tries the operation first and yields OP_READ/OP_WRITE only after it
//! said "timeout"/"wantread"/"wantwrite"; on a LuaSocket connection it yields OP_RECEIVE or
//! OP_SEND instead, and the core finishes the transfer (`Ask`) before it resumes the coroutine
//! with its result (`Transfer`). Readiness runs *every* waiter of that direction in order (each retries; an
//! extra wake-up costs one failed try), so several readers of one socket are never stranded; a
//! deadline takes the waiter off the fd's list. Writability is asked of epoll only while
//! somebody waits to write (`Reactor::want_write`).

use std::os::fd::RawFd;
use std::os::raw::c_void;
use std::time::Duration;

use mlua::{AnyUserData, Lua};

use crate::core::{Core, Sched};
use crate::dns::Answer;
use crate::luasocket::{self, is_luasocket_client, luasocket_fd, Conn, Pattern, Received};
use crate::protocol::{ACCEPTED, ACCEPT_FAILED, PATTERN_ALL, PATTERN_LINE};
use crate::sockets::{Server, Waiter};
use crate::tasks::{guarded, unpack, TaskRef, Wait};
use crate::timers::Target;

/// What a task waiting on a descriptor asked the core to do once it is ready: only resume it
/// (OP_READ/OP_WRITE: it tries again itself), or first finish its receive or send (OP_RECEIVE,
/// OP_SEND). Kept in the descriptor's waiter list (`sockets::Waiter`).
#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Ask {
    Retry,
    Receive(ReceiveAsk),
    Send(SendAsk),
}

/// What a receive or send the core finished came to; the task's next resume returns it.
pub(crate) enum Transfer {
    Received(Received),
    Sent(Sent),
}

/// An ask after one more try: still waiting (with what is left to do), or done.
enum Progress {
    Waiting(Ask),
    Done(Option<Transfer>),
}

/// A receive a waiting task asked the core to finish (OP_RECEIVE): on the LuaSocket object at
/// `skt` (kept alive by the waiting coroutine, whose arguments hold it), by `pattern`, after a
/// prefix of `have` bytes.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) struct ReceiveAsk {
    pub(crate) skt: *const c_void,
    pub(crate) pattern: Pattern,
    pub(crate) have: usize,
}

/// A send a waiting task asked the core to finish (OP_SEND): the bytes `next..=end` of `data`
/// (LuaSocket's indexes, see `luasocket::send`) on the LuaSocket object at `skt`. The waiting
/// coroutine holds the object and the string, so both stay valid while it waits.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) struct SendAsk {
    pub(crate) skt: *const c_void,
    pub(crate) data: *const [u8],
    pub(crate) next: f64,
    pub(crate) end: Option<f64>,
}

/// What a send came to: the index of the last byte sent, and the error that stopped it.
pub(crate) type Sent = (f64, Option<&'static str>);

/// How long an accept that failed (descriptors ran out) waits before it is tried again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

impl Sched {
    /// True while a socket, server or lookup could still wake the loop.
    pub(crate) fn has_sources(&self) -> bool {
        self.io_waiting > 0 || self.sockets.servers() > 0 || self.resolver.pending() > 0
    }

    /// The waiters in `list` still waiting on this fd and direction, made ready to run now. A
    /// waiter whose receive or send the core finishes (OP_RECEIVE, OP_SEND) is claimed only
    /// once that is complete; otherwise it stays in `still_waiting`, without having been resumed.
    pub(crate) fn claim_waiters(
        &mut self,
        list: &mut Vec<Waiter>,
        still_waiting: &mut Vec<Waiter>,
        fd: RawFd,
        write: bool,
    ) {
        list.retain(|&Waiter { task, ask }| {
            let (key, gen) = task;
            let waiting = matches!(self.task(key, gen),
                Some(t) if matches!(t.wait, Wait::Io { fd: f, write: w, .. } if f == fd && w == write));
            if !waiting {
                return false;
            }
            match self.go_on(ask, false) {
                Progress::Waiting(ask) => {
                    still_waiting.push(Waiter { task, ask });
                    false
                }
                Progress::Done(transfer) => {
                    self.keep_transfer(key, transfer);
                    self.end_io_wait(key, true, false);
                    true
                }
            }
        });
    }

    /// The deadline of a waiter passed: a receive or send it asked for gets one last try,
    /// whose result is the transfer's (for a receive, LuaSocket's partial result).
    pub(crate) fn last_try(&mut self, key: usize, ask: Ask) {
        if let Progress::Done(transfer) = self.go_on(ask, true) {
            self.keep_transfer(key, transfer);
        }
    }

    /// One more try of what a waiter asked for, on its descriptor's readiness (or, with
    /// `last_try`, at its deadline: then it is done whatever the try gives).
    fn go_on(&mut self, ask: Ask, last_try: bool) -> Progress {
        match ask {
            Ask::Retry => Progress::Done(None),
            Ask::Receive(r) => match self.receive_on(r.skt, r.pattern, r.have, last_try) {
                Received::WouldBlock(_) if !last_try => Progress::Waiting(ask),
                received => Progress::Done(Some(Transfer::Received(received))),
            },
            Ask::Send(s) => try_send(s, last_try),
        }
    }

    /// Keeps a finished transfer for the task's next resume. (The box is made here, as the
    /// task is about to run: fresh memory is cheaper than a box that waited with the task.)
    fn keep_transfer(&mut self, key: usize, transfer: Option<Transfer>) {
        self.tasks[key].transfer = transfer.map(Box::new);
    }

    /// `receive` on the connection of the LuaSocket object at `skt`, read directly. `have` is
    /// the length of the caller's prefix. See `binding.rs` for the results.
    pub(crate) fn receive_on(
        &mut self,
        skt: *const c_void,
        pattern: Pattern,
        have: usize,
        partial: bool,
    ) -> Received {
        let (owner, fd) = luasocket_fd(skt);
        if fd < 0 {
            return Received::Failed("closed", Vec::new());
        }
        self.sockets.receive(fd, owner, pattern, have, partial)
    }

    /// OP_RECEIVE: the task waits for the core to finish its receive on the connection `skt`
    /// (read directly, `Core::read_directly`): `[fd, deadline, pattern, prefix length]`.
    pub(crate) fn wait_to_receive(
        &mut self,
        key: usize,
        [fd, at, pattern, have]: [Option<f64>; 4],
        skt: *const c_void,
    ) -> bool {
        let (Some(pattern), Some(have)) = (pattern, have) else {
            return false;
        };
        if skt.is_null() {
            return false;
        }
        let pattern = if pattern == PATTERN_LINE {
            Pattern::Line
        } else if pattern == PATTERN_ALL {
            Pattern::All
        } else {
            Pattern::Count(pattern.max(0.0) as usize)
        };
        let have = have.max(0.0) as usize;
        let ask = Ask::Receive(ReceiveAsk { skt, pattern, have });
        self.wait_for_fd(key, false, fd, at, ask)
    }

    /// OP_SEND: the task waits for the core to finish its send on the LuaSocket connection
    /// `skt`: `[fd, deadline, next, end]`, the bytes `data[next..=end]`.
    pub(crate) fn wait_to_send(
        &mut self,
        key: usize,
        [fd, at, next, end]: [Option<f64>; 4],
        skt: *const c_void,
        data: *const [u8],
    ) -> bool {
        let Some(next) = next else {
            return false;
        };
        if skt.is_null() || data.is_null() {
            return false;
        }
        let ask = Ask::Send(SendAsk {
            skt,
            data,
            next,
            end,
        });
        self.wait_for_fd(key, true, fd, at, ask)
    }

    /// The socket of a send the task asked the core to finish is being closed: the send ends
    /// with "closed" and what went out so far. (An asked receive is dropped: the task then
    /// tries once more itself.)
    fn end_send_closed(&mut self, key: usize, ask: Ask) {
        if let Ask::Send(s) = ask {
            self.keep_transfer(key, Some(Transfer::Sent((s.next - 1.0, Some("closed")))));
        }
    }

    pub(crate) fn waits_on(&self, task: &TaskRef) -> bool {
        matches!(self.tasks.get(task.0), Some(t) if t.gen == task.1 && matches!(t.wait, Wait::Io { .. }))
    }

    /// OP_READ/OP_WRITE (`Ask::Retry`): the task waits until `fd` is worth a retry in that
    /// direction, at most until the deadline `at` (seconds of `Core::now`); with another ask,
    /// until the core did what it asks. False for a descriptor that cannot be.
    pub(crate) fn wait_for_fd(
        &mut self,
        key: usize,
        write: bool,
        fd: Option<f64>,
        at: Option<f64>,
        ask: Ask,
    ) -> bool {
        let Some(fd) = fd.filter(|x| *x >= 0.0 && *x < i32::MAX as f64) else {
            return false;
        };
        let fd = fd as RawFd;
        if write {
            // Failing means the fd was closed behind copas's back: the wait then ends by its
            // deadline or never, as a wait on a closed socket in upstream.
            let _ = self.reactor.want_write(fd, true);
        }
        let at = self.deadline_at(at);
        let gen = self.tasks[key].gen;
        let task = (key, gen);
        self.sockets.add_waiter(fd, write, Waiter { task, ask });
        self.tasks[key].wait = Wait::Io { fd, write, at };
        self.io_waiting += 1;
        self.push_deadline(key, at);
        true
    }

    /// OP_LOOKUP: the task waits for lookup `id` to finish, at most until the deadline `at`.
    pub(crate) fn wait_for_lookup(&mut self, key: usize, id: Option<f64>, at: Option<f64>) -> bool {
        let Some(id) = id.map(|x| x as u64) else {
            return false;
        };
        let at = self.deadline_at(at);
        let gen = self.tasks[key].gen;
        self.tasks[key].wait = Wait::Lookup { id, at };
        if self.resolver.pending_id(id) {
            self.lookup_waiters.insert(id, (key, gen));
            self.push_deadline(key, at);
        } else {
            self.end_io_wait(key, true, true); // answered already
        }
        true
    }
}

/// One more try of an asked send: all of it went out or an error stopped it (the result), the
/// kernel's buffer is full again (the rest stays asked), or it is the last try.
fn try_send(mut ask: SendAsk, last_try: bool) -> Progress {
    let (_, fd) = luasocket_fd(ask.skt);
    // SAFETY: the waiting coroutine holds the string (see `SendAsk`).
    let data = unsafe { &*ask.data };
    match luasocket::send(fd, data, Some(ask.next), ask.end) {
        (last, Some("timeout")) if !last_try => {
            ask.next = last + 1.0;
            Progress::Waiting(Ask::Send(ask))
        }
        sent => Progress::Done(Some(Transfer::Sent(sent))),
    }
}

impl Core {
    /// The readable phase for one fd: a TCP server accepts a connection; otherwise every reader
    /// runs (in the order they started waiting; each retries, so none is stranded, upstream
    /// bug #165). A UDP server's datagram that nobody waits for ends its hold on the loop.
    pub(crate) fn on_readable(&self, lua: &Lua, fd: RawFd) -> mlua::Result<()> {
        let server = self.with_sched(|s| s.sockets.server(fd));
        if server == Server::Tcp {
            return self.accept(fd);
        }
        if !self.wake_and_run(lua, fd, false) && server == Server::Udp {
            self.with_sched(|s| s.sockets.set_server(fd, Server::None));
        }
        Ok(())
    }

    /// Runs every task waiting on `fd` in one direction. Returns whether there was any.
    pub(crate) fn wake_and_run(&self, lua: &Lua, fd: RawFd, write: bool) -> bool {
        let (mut claimed, waiting_on) = self.with_sched(|s| {
            let mut list = s.sockets.take_waiters(fd, write);
            let mut still_waiting = Vec::new();
            s.claim_waiters(&mut list, &mut still_waiting, fd, write);
            let waiting_on = !still_waiting.is_empty();
            for task in still_waiting {
                s.sockets.add_waiter(fd, write, task);
            }
            (list, waiting_on)
        });
        for &Waiter {
            task: (key, gen), ..
        } in &claimed
        {
            guarded(|| self.run_task(lua, key, gen));
        }
        let any = !claimed.is_empty();
        claimed.clear();
        self.with_sched(|s| {
            if write && !any && !waiting_on {
                // Nobody waits to write any more: stop the writability edges.
                let _ = s.reactor.want_write(fd, false);
            }
            // The list's allocation goes back for the next wait on this fd.
            s.sockets.give_back(fd, write, claimed);
        });
        any
    }

    /// Accepts one connection on a TCP server through the shim's hook, which starts the
    /// handler. Errors of the hook propagate out of `step`, as upstream's accept errors do.
    pub(crate) fn accept(&self, fd: RawFd) -> mlua::Result<()> {
        let hook = self.hooks.borrow().on_accept.clone();
        let Some(hook) = hook else {
            return Ok(());
        };
        let status: i64 = hook.call(fd)?;
        self.with_sched(|s| {
            if s.sockets.server(fd) != Server::Tcp {
                return; // removed or closed by the handler
            }
            match status {
                ACCEPTED => s.sockets.accept_again.push(fd),
                ACCEPT_FAILED => {
                    let at = s.deadlines.now() + ACCEPT_BACKOFF.as_nanos() as u64;
                    s.sockets.start_backoff(fd, at);
                    s.deadlines.push(at, Target::Server(fd as usize), 0);
                }
                _ => {}
            }
        });
        Ok(())
    }

    /// Seconds on the monotonic clock of the deadlines (the unit of I/O wait deadlines).
    pub fn now(&self) -> f64 {
        self.with_sched(|s| s.deadlines.now() as f64 / 1e9)
    }

    /// Adds `fd` to the epoll set (once per socket object; the shim keeps track).
    pub fn watch(&self, fd: RawFd) -> mlua::Result<bool> {
        if fd < 0 {
            return Ok(false);
        }
        Ok(self.with_sched(|s| s.reactor.register(fd).is_ok()))
    }

    /// `copas.close`: before the descriptor goes away, every task waiting on it is woken (its
    /// retry then reports "closed", upstream bug #104) and it leaves the epoll set.
    pub fn close_fd(&self, fd: RawFd) {
        self.with_sched(|s| {
            for Waiter { task, ask } in s.sockets.forget(fd) {
                if s.waits_on(&task) {
                    let key = task.0;
                    s.end_send_closed(key, ask);
                    s.end_io_wait(key, true, true);
                }
            }
            s.reactor.deregister(fd);
        });
    }

    /// Takes over reading a plain LuaSocket TCP connection (see `luasocket.rs`). `getfd` is what
    /// its `getfd()` said; the descriptor is also read from the object itself on every call (so
    /// a socket closed behind copas's back reads as closed), and the two must agree here.
    pub fn read_directly(&self, lua: &Lua, skt: &AnyUserData, getfd: RawFd) -> bool {
        if !is_luasocket_client(lua, skt) {
            return false;
        }
        let (owner, fd) = luasocket_fd(skt.to_pointer());
        if fd < 0 || fd != getfd {
            return false;
        }
        self.with_sched(|s| {
            if s.reactor.register(fd).is_err() {
                return false;
            }
            *s.sockets.conn(fd, owner) = Conn::new(owner);
            true
        })
    }

    /// `receive` on a connection read directly (see `Sched::receive_on`).
    pub fn recv(
        &self,
        skt: *const c_void,
        pattern: Pattern,
        have: usize,
        partial: bool,
    ) -> Received {
        self.with_sched(|s| s.receive_on(skt, pattern, have, partial))
    }

    /// `send(data, i, j)` on a LuaSocket TCP connection (see `luasocket::send`).
    pub fn send(
        &self,
        skt: *const c_void,
        bytes: &[u8],
        i: Option<f64>,
        j: Option<f64>,
    ) -> (f64, Option<&'static str>) {
        let (_, fd) = luasocket_fd(skt);
        luasocket::send(fd, bytes, i, j)
    }

    /// Registers a server socket. A descriptor epoll refuses (not open, not a socket) is
    /// accepted without effect, as upstream accepts any object with a `getfd`: such a server
    /// never accepts anything.
    pub fn add_server(&self, fd: RawFd, udp: bool) {
        self.with_sched(|s| {
            if fd < 0 || s.reactor.register(fd).is_err() {
                return;
            }
            let kind = if udp { Server::Udp } else { Server::Tcp };
            // Connections queued already are reported at once: epoll checks readiness on add.
            s.sockets.set_server(fd, kind);
        });
    }

    pub fn remove_server(&self, fd: RawFd) {
        self.with_sched(|s| s.sockets.set_server(fd, Server::None));
    }

    /// True while the task waits on a socket or a name lookup.
    pub fn io_waiting(&self, id: i64) -> bool {
        let (key, gen) = unpack(id);
        self.with_sched(|s| {
            matches!(s.task(key, gen), Some(t) if matches!(t.wait, Wait::Io { .. } | Wait::Lookup { .. }))
        })
    }

    /// (read, write): descriptors with a waiter, servers counting as read, for `copas.status()`.
    pub fn io_counts(&self) -> (usize, usize) {
        self.with_sched(|s| s.sockets.counts(|t| s.waits_on(t)))
    }

    /// Starts looking up `host` off the loop thread; the caller waits with OP_LOOKUP.
    pub fn resolve(&self, host: String) -> mlua::Result<i64> {
        self.with_sched(|s| {
            let waker = s.reactor.waker()?;
            s.resolver.start(host, waker)
        })
        .map(|id| id as i64)
        .map_err(mlua::Error::external)
    }

    /// The answer of lookup `id` (once); None when it has not arrived (the lookup is then
    /// abandoned).
    pub fn lookup_result(&self, id: i64) -> Option<Answer> {
        self.with_sched(|s| s.resolver.take(id as u64))
    }

    /// Lookups that finished: their waiters become ready. (A thread yields for its lookup in the
    /// same turn it starts it, so an answer without a waiter was abandoned.)
    pub(crate) fn collect_lookups(&self) {
        self.with_sched(|s| {
            for id in s.resolver.collect() {
                let waiter = s.lookup_waiters.remove(&id).filter(|&(key, gen)| {
                    matches!(s.task(key, gen), Some(t) if matches!(t.wait, Wait::Lookup { id: i, .. } if i == id))
                });
                match waiter {
                    Some((key, _)) => s.end_io_wait(key, true, true),
                    // Its thread was removed while the lookup ran: nobody will take the answer.
                    None => drop(s.resolver.take(id)),
                }
            }
        });
    }
}
