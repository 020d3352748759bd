//! Who waits on which descriptor, and which descriptors are servers.
//!
//! Indexed by fd (descriptors are small integers, reused at once by the kernel). Waiter lists
//! hold task references that may have gone stale (the task timed out, was removed or woken by
//! other means); the scheduler checks each against the task's current wait when it wakes them.
//! Each waiter carries what it asked the core to do once the descriptor is ready (`Ask`): the
//! list is read at every readiness anyway, so the ask costs no further memory access there.

use std::os::fd::RawFd;

use crate::luasocket::{BorrowedStream, Conn, Pattern, Received, READ_SIZE};
use crate::readiness::Ask;
use crate::tasks::TaskRef;

/// A task waiting on a descriptor in one direction, and what it asked for.
#[derive(Clone, Copy, PartialEq, Debug)]
pub struct Waiter {
    pub task: TaskRef,
    pub ask: Ask,
}

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
    readers: Vec<Waiter>,
    writers: Vec<Waiter>,
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

    fn list(&mut self, fd: RawFd, write: bool) -> &mut Vec<Waiter> {
        let slot = self.slot(fd);
        if write {
            &mut slot.writers
        } else {
            &mut slot.readers
        }
    }

    pub fn add_waiter(&mut self, fd: RawFd, write: bool, waiter: Waiter) {
        self.list(fd, write).push(waiter);
    }

    /// Takes `task` off the list (every entry of it); returns its (last) entry.
    pub fn remove_waiter(&mut self, fd: RawFd, write: bool, task: TaskRef) -> Option<Waiter> {
        let mut removed = None;
        self.list(fd, write).retain(|w| {
            let other = w.task != task;
            if !other {
                removed = Some(*w);
            }
            other
        });
        removed
    }

    /// Every waiter of one direction, in the order they started waiting.
    pub fn take_waiters(&mut self, fd: RawFd, write: bool) -> Vec<Waiter> {
        std::mem::take(self.list(fd, write))
    }

    /// Returns an emptied waiter list so its allocation serves the next waits, unless new
    /// waiters arrived meanwhile.
    pub fn give_back(&mut self, fd: RawFd, write: bool, list: Vec<Waiter>) {
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
    pub fn forget(&mut self, fd: RawFd) -> Vec<Waiter> {
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
            if f.server != Server::None || f.readers.iter().any(|w| live(&w.task)) {
                read += 1;
            }
            if f.writers.iter().any(|w| live(&w.task)) {
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

#[cfg(test)]
mod tests {
    use super::*;

    const A: TaskRef = (1, 0);
    const B: TaskRef = (2, 0);
    const C: TaskRef = (3, 7);
    const READ: bool = false;
    const WRITE: bool = true;

    /// Adds a waiter that only asked to be resumed.
    fn add(s: &mut Sockets, fd: RawFd, write: bool, task: TaskRef) {
        s.add_waiter(
            fd,
            write,
            Waiter {
                task,
                ask: Ask::Retry,
            },
        );
    }

    fn tasks(list: Vec<Waiter>) -> Vec<TaskRef> {
        list.into_iter().map(|w| w.task).collect()
    }

    #[test]
    fn waiters_come_back_in_the_order_they_started_waiting_per_direction() {
        let mut s = Sockets::default();
        add(&mut s, 5, READ, B);
        add(&mut s, 5, WRITE, C);
        add(&mut s, 5, READ, A);
        assert_eq!(tasks(s.take_waiters(5, READ)), vec![B, A]);
        assert_eq!(tasks(s.take_waiters(5, READ)), vec![], "taken once");
        assert_eq!(tasks(s.take_waiters(5, WRITE)), vec![C]);
        assert_eq!(
            tasks(s.take_waiters(6, WRITE)),
            vec![],
            "another descriptor has none"
        );
    }

    #[test]
    fn removing_a_waiter_leaves_the_others_and_the_other_direction() {
        let mut s = Sockets::default();
        for task in [A, B, A] {
            add(&mut s, 3, READ, task);
        }
        add(&mut s, 3, WRITE, A);
        s.remove_waiter(3, READ, A);
        assert_eq!(tasks(s.take_waiters(3, READ)), vec![B]);
        assert_eq!(tasks(s.take_waiters(3, WRITE)), vec![A]);
        // The same slot with another generation is another task.
        add(&mut s, 3, READ, (1, 1));
        s.remove_waiter(3, READ, A);
        assert_eq!(tasks(s.take_waiters(3, READ)), vec![(1, 1)]);
    }

    #[test]
    fn give_back_keeps_the_allocation_unless_new_waiters_arrived() {
        let mut s = Sockets::default();
        for task in 0..64 {
            add(&mut s, 4, READ, (task, 0));
        }
        let mut list = s.take_waiters(4, READ);
        let capacity = list.capacity();
        list.clear();
        s.give_back(4, READ, list);
        add(&mut s, 4, READ, A);
        let list = s.take_waiters(4, READ);
        assert_eq!(list.capacity(), capacity, "the allocation was reused");
        assert_eq!(tasks(list), vec![A]);
        // A waiter that arrived while the list was out must not be overwritten.
        add(&mut s, 4, READ, B);
        s.give_back(4, READ, Vec::with_capacity(128));
        assert_eq!(tasks(s.take_waiters(4, READ)), vec![B]);
    }

    #[test]
    fn each_server_counts_once_whatever_it_becomes() {
        let mut s = Sockets::default();
        s.set_server(7, Server::Tcp);
        s.set_server(7, Server::Tcp);
        s.set_server(9, Server::Udp);
        assert_eq!(s.servers(), 2);
        s.set_server(7, Server::Udp);
        assert_eq!((s.servers(), s.server(7)), (2, Server::Udp));
        s.set_server(7, Server::None);
        s.set_server(7, Server::None);
        assert_eq!((s.servers(), s.server(7)), (1, Server::None));
        // Undoing a descriptor never seen changes nothing (and must not underflow).
        s.set_server(100, Server::None);
        assert_eq!(s.servers(), 1);
        assert_eq!(s.server(100), Server::None);
        assert_eq!(s.server(-1), Server::None);
    }

    #[test]
    fn a_server_that_stops_being_tcp_is_no_longer_retried() {
        let mut s = Sockets::default();
        s.set_server(3, Server::Tcp);
        s.set_server(4, Server::Tcp);
        s.accept_again = vec![3, 4];
        s.start_backoff(3, 10);
        s.start_backoff(4, 20);
        s.set_server(3, Server::Tcp); // still a TCP server: keeps its retries
        assert_eq!(s.accept_again, vec![3, 4]);
        assert_eq!(s.backoff_until(3), Some(10));
        s.set_server(3, Server::Udp);
        assert_eq!(s.accept_again, vec![4]);
        assert_eq!(s.backoff_until(3), None);
        assert_eq!(s.backoff_until(4), Some(20));
        s.set_server(4, Server::None);
        assert!(s.accept_again.is_empty() && s.backoff_until(4).is_none());
    }

    #[test]
    fn forget_returns_both_directions_waiters_and_unregisters_the_server() {
        let mut s = Sockets::default();
        s.set_server(6, Server::Tcp);
        s.accept_again.push(6);
        add(&mut s, 6, READ, A);
        add(&mut s, 6, WRITE, B);
        add(&mut s, 6, READ, C);
        s.start_backoff(6, 5);
        let mut woken = tasks(s.forget(6));
        woken.sort();
        assert_eq!(woken, vec![A, B, C]);
        assert_eq!(s.servers(), 0);
        assert_eq!(s.server(6), Server::None);
        assert!(s.accept_again.is_empty());
        assert_eq!(
            s.backoff_until(6),
            None,
            "a reused descriptor starts without a back-off"
        );
        assert_eq!(s.forget(6), vec![], "nothing is left to wake");
    }

    #[test]
    fn forgetting_an_unknown_or_negative_descriptor_is_harmless() {
        let mut s = Sockets::default();
        assert_eq!(s.forget(-1), vec![]);
        assert_eq!(s.forget(1_000_000), vec![]);
        assert_eq!(s.waited_on_and_servers(), (vec![], vec![]));
    }

    #[test]
    fn a_backoff_ends_with_the_server_due_for_an_accept() {
        let mut s = Sockets::default();
        s.set_server(7, Server::Tcp);
        s.start_backoff(7, 42);
        assert_eq!(s.backoff_until(7), Some(42));
        s.end_backoff(7);
        assert_eq!(s.backoff_until(7), None);
        assert_eq!(s.accept_again, vec![7]);
    }

    #[test]
    fn counts_see_descriptors_with_a_live_waiter_and_servers_as_read() {
        let mut s = Sockets::default();
        add(&mut s, 1, READ, A); // live
        add(&mut s, 1, READ, B); // same descriptor: counted once
        add(&mut s, 2, READ, C); // stale only
        add(&mut s, 2, WRITE, A); // live
        add(&mut s, 3, WRITE, C); // stale only
        s.set_server(4, Server::Udp); // no waiter, still a reader
        let live = |t: &TaskRef| *t != C;
        assert_eq!(s.counts(live), (2, 1));
        assert_eq!(s.counts(|_| false), (1, 0));
        assert_eq!(s.counts(|_| true), (3, 2));
    }

    #[test]
    fn waited_on_descriptors_and_servers_are_listed_apart() {
        let mut s = Sockets::default();
        add(&mut s, 2, WRITE, A);
        add(&mut s, 5, READ, B);
        s.set_server(5, Server::Tcp); // a server with a waiter is listed as a server only
        s.set_server(9, Server::Udp);
        add(&mut s, 11, READ, C);
        let _ = s.take_waiters(11, READ); // nobody waits there any more
        assert_eq!(s.waited_on_and_servers(), (vec![2], vec![5, 9]));
    }

    #[test]
    fn clear_forgets_waiters_servers_and_retries() {
        let mut s = Sockets::default();
        add(&mut s, 2, READ, A);
        s.set_server(3, Server::Tcp);
        s.accept_again.push(3);
        s.start_backoff(3, 1);
        s.clear();
        assert_eq!(s.servers(), 0);
        assert_eq!(s.counts(|_| true), (0, 0));
        assert!(s.accept_again.is_empty() && s.backoff_until(3).is_none());
        assert_eq!(tasks(s.take_waiters(2, READ)), vec![]);
    }
}
