//! Who waits on which descriptor, and which descriptors are servers.
//!
//! Indexed by fd (descriptors are small integers, reused at once by the kernel). Waiter lists
//! hold task references that may have gone stale (the task timed out, was removed or woken by
//! other means); the scheduler checks each against the task's current wait when it wakes them.

use std::os::fd::RawFd;

use crate::luasocket::{BorrowedStream, Conn, Pattern, Received, READ_SIZE};
use crate::tasks::TaskRef;

#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Server {
    #[default]
    None,
    /// A listening TCP socket: readiness means a connection to accept.
    Tcp,
    /// A UDP server socket: it keeps the loop alive until a datagram arrives that nobody waits
    /// for (upstream's read set keeps it until then).
    Udp,
}

#[derive(Default)]
struct Fd {
    readers: Vec<TaskRef>,
    writers: Vec<TaskRef>,
    server: Server,
    /// The receive buffer, for a connection copas reads itself (see `luasocket.rs`).
    conn: Option<Conn>,
    /// A server whose accept failed is tried again at this time (a deadline-heap entry).
    backoff_until: Option<u64>,
}

#[derive(Default)]
pub struct Sockets {
    fds: Vec<Fd>,
    /// Where connections read into (see `luasocket.rs`); made on the first read.
    scratch: Vec<u8>,
    servers: usize,
    /// Servers that accepted a connection last step: one accept per server per step (upstream),
    /// and with edge-triggered readiness the rest of the backlog gives no new event.
    pub accept_again: Vec<RawFd>,
}

impl Sockets {
    fn slot(&mut self, fd: RawFd) -> &mut Fd {
        let i = fd as usize;
        if self.fds.len() <= i {
            self.fds.resize_with(i + 1, Fd::default);
        }
        &mut self.fds[i]
    }

    fn list(&mut self, fd: RawFd, write: bool) -> &mut Vec<TaskRef> {
        let slot = self.slot(fd);
        if write {
            &mut slot.writers
        } else {
            &mut slot.readers
        }
    }

    pub fn add_waiter(&mut self, fd: RawFd, write: bool, task: TaskRef) {
        self.list(fd, write).push(task);
    }

    pub fn remove_waiter(&mut self, fd: RawFd, write: bool, task: TaskRef) {
        self.list(fd, write).retain(|t| *t != task);
    }

    /// Every waiter of one direction, in the order they started waiting.
    pub fn take_waiters(&mut self, fd: RawFd, write: bool) -> Vec<TaskRef> {
        std::mem::take(self.list(fd, write))
    }

    /// Returns an emptied waiter list so its allocation serves the next waits, unless new
    /// waiters arrived meanwhile.
    pub fn give_back(&mut self, fd: RawFd, write: bool, list: Vec<TaskRef>) {
        let slot = self.list(fd, write);
        if slot.is_empty() {
            *slot = list;
        }
    }

    pub fn server(&self, fd: RawFd) -> Server {
        self.fds.get(fd as usize).map_or(Server::None, |f| f.server)
    }

    pub fn set_server(&mut self, fd: RawFd, server: Server) {
        if server == Server::None && self.server(fd) == Server::None {
            return; // nothing to undo (and no slot to make for a descriptor never seen)
        }
        let slot = self.slot(fd);
        let was = std::mem::replace(&mut slot.server, server);
        match (was == Server::None, server == Server::None) {
            (true, false) => self.servers += 1,
            (false, true) => self.servers -= 1,
            _ => {}
        }
        if server != Server::Tcp {
            self.accept_again.retain(|s| *s != fd);
            self.slot(fd).backoff_until = None;
        }
    }

    /// A failed accept: server `fd` is tried again at `at`.
    pub fn start_backoff(&mut self, fd: RawFd, at: u64) {
        self.slot(fd).backoff_until = Some(at);
    }

    /// When server `fd` is tried again, if it backs off.
    pub fn backoff_until(&self, fd: RawFd) -> Option<u64> {
        self.fds.get(fd as usize).and_then(|f| f.backoff_until)
    }

    /// The back-off of server `fd` is over: it accepts again in this step.
    pub fn end_backoff(&mut self, fd: RawFd) {
        self.slot(fd).backoff_until = None;
        self.accept_again.push(fd);
    }

    /// Servers registered (they keep the loop alive).
    pub fn servers(&self) -> usize {
        self.servers
    }

    /// The connection state of `fd` for the LuaSocket object `owner`; fresh when the descriptor
    /// was somebody else's (closed behind copas's back and reused).
    pub fn conn(&mut self, fd: RawFd, owner: usize) -> &mut Conn {
        let slot = self.slot(fd);
        if slot.conn.as_ref().is_none_or(|c| c.owner != owner) {
            slot.conn = Some(Conn::new(owner));
        }
        slot.conn.get_or_insert_with(|| Conn::new(owner))
    }

    /// Receives on the connection of `fd` owned by `owner` (see `Conn::receive`).
    pub fn receive(
        &mut self,
        fd: RawFd,
        owner: usize,
        pattern: Pattern,
        have: usize,
        partial: bool,
    ) -> Received {
        if self.scratch.is_empty() {
            self.scratch = vec![0; READ_SIZE];
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        // SAFETY: the fd is the open socket of the LuaSocket object `owner`, read for this call.
        let mut stream = unsafe { BorrowedStream::new(fd) };
        let received =
            self.conn(fd, owner)
                .receive(&mut stream, pattern, have, partial, &mut scratch);
        self.scratch = scratch;
        received
    }

    /// Readiness was reported: a buffered connection may read again.
    pub fn mark_readable(&mut self, fd: RawFd, closed: bool) {
        if let Some(conn) = self.fds.get_mut(fd as usize).and_then(|f| f.conn.as_mut()) {
            conn.mark_readable(closed);
        }
    }

    /// The descriptor is about to be closed: it stops being a server, its buffer goes, and its
    /// waiters (both directions) are returned to be woken.
    pub fn forget(&mut self, fd: RawFd) -> Vec<TaskRef> {
        if fd < 0 || fd as usize >= self.fds.len() {
            return Vec::new();
        }
        self.set_server(fd, Server::None);
        let slot = &mut self.fds[fd as usize];
        slot.conn = None;
        slot.backoff_until = None;
        let mut waiters = std::mem::take(&mut slot.readers);
        waiters.append(&mut slot.writers);
        waiters
    }

    /// The descriptors somebody waits on (servers excepted), and the servers.
    pub fn waited_on_and_servers(&self) -> (Vec<RawFd>, Vec<RawFd>) {
        let mut waited_on = Vec::new();
        let mut servers = Vec::new();
        for (fd, f) in self.fds.iter().enumerate() {
            if f.server != Server::None {
                servers.push(fd as RawFd);
            } else if !f.readers.is_empty() || !f.writers.is_empty() {
                waited_on.push(fd as RawFd);
            }
        }
        (waited_on, servers)
    }

    /// Per direction, the descriptors with a waiter that `live` accepts (servers count as read).
    pub fn counts(&self, live: impl Fn(&TaskRef) -> bool) -> (usize, usize) {
        let mut read = 0;
        let mut write = 0;
        for f in &self.fds {
            if f.server != Server::None || f.readers.iter().any(&live) {
                read += 1;
            }
            if f.writers.iter().any(&live) {
                write += 1;
            }
        }
        (read, write)
    }

    pub fn clear(&mut self) {
        let scratch = std::mem::take(&mut self.scratch);
        *self = Sockets {
            scratch,
            ..Sockets::default()
        };
    }
}
