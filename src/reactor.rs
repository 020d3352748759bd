//! Waiting for readiness or for the next deadline.
//!
//! Readiness comes from `mio::Poll` (epoll, edge-triggered). The poll instance is made on the
//! first socket registration or name lookup, so a program that only uses threads and timers
//! never opens an epoll descriptor, and a step with nothing registered waits with a plain sleep.
//!
//! Sockets are LuaSocket's (or LuaSec's): the fd is borrowed through `SourceFd`, never owned.
//! Each fd is registered once for reading; writability is asked for only while somebody waits
//! to write (otherwise every ACK of a response would report an edge). The copas shim always
//! tries an operation before it waits, so an edge that arrives while nobody waits is not needed.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

/// The token of the waker that name lookups finishing on other threads use.
const WAKER: Token = Token(usize::MAX);

/// One readiness report: which fd, and which directions are worth retrying.
#[derive(Clone, Copy, Debug)]
pub struct Ready {
    pub fd: RawFd,
    pub read: bool,
    pub write: bool,
    /// The peer closed its side (or the socket failed): reads will not block any more.
    pub read_closed: bool,
}

pub struct Reactor {
    poll: Option<Poll>,
    waker: Option<Arc<Waker>>,
    events: Events,
    /// Per fd: writability is in its epoll interest.
    writing: Vec<bool>,
}

impl Reactor {
    pub fn new() -> Self {
        Reactor {
            poll: None,
            waker: None,
            events: Events::with_capacity(1024),
            writing: Vec::new(),
        }
    }

    fn poll(&mut self) -> io::Result<&mut Poll> {
        if self.poll.is_none() {
            self.poll = Some(Poll::new()?);
        }
        Ok(self.poll.as_mut().expect("poll was just made"))
    }

    /// Registers `fd` for reading (and writing, while somebody waits to write on it). A
    /// descriptor already in this epoll set (the same file under a new object, e.g. after a TLS
    /// wrap) is modified instead; epoll then reports the current readiness again, so nothing is
    /// missed by the change.
    pub fn register(&mut self, fd: RawFd) -> io::Result<()> {
        let write = self.writing.get(fd as usize).copied().unwrap_or(false);
        let interest = if write {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let registry = self.poll()?.registry();
        let token = Token(fd as usize);
        match registry.register(&mut SourceFd(&fd), token, interest) {
            Err(e) if e.raw_os_error() == Some(17) => {
                // EEXIST
                registry.reregister(&mut SourceFd(&fd), token, interest)
            }
            other => other,
        }
    }

    /// Asks for writability edges of `fd` (`on`) or stops them; changes the registration only
    /// when the interest changes.
    pub fn want_write(&mut self, fd: RawFd, on: bool) -> io::Result<()> {
        let i = fd as usize;
        if self.writing.get(i).copied().unwrap_or(false) == on {
            return Ok(());
        }
        if self.writing.len() <= i {
            self.writing.resize(i + 1, false);
        }
        self.writing[i] = on;
        self.register(fd)
    }

    /// Takes `fd` out of the epoll set before it is closed. Errors are ignored: a descriptor
    /// closed behind our back has already left the set.
    pub fn deregister(&mut self, fd: RawFd) {
        if let Some(w) = self.writing.get_mut(fd as usize) {
            *w = false;
        }
        if let Some(poll) = &self.poll {
            let _ = poll.registry().deregister(&mut SourceFd(&fd));
        }
    }

    /// A handle that wakes the poll from another thread.
    pub fn waker(&mut self) -> io::Result<Arc<Waker>> {
        if self.waker.is_none() {
            let waker = Waker::new(self.poll()?.registry(), WAKER)?;
            self.waker = Some(Arc::new(waker));
        }
        Ok(Arc::clone(
            self.waker.as_ref().expect("waker was just made"),
        ))
    }

    /// Waits up to `timeout` (`None`: until an event) and appends what became ready to `out`.
    /// Returns whether the waker fired. Without a poll instance it only sleeps, never unbounded.
    pub fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Ready>) -> io::Result<bool> {
        let Some(poll) = self.poll.as_mut() else {
            if let Some(d) = timeout.filter(|d| !d.is_zero()) {
                std::thread::sleep(d);
            }
            return Ok(false);
        };
        match poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(false),
            Err(e) => return Err(e),
        }
        let mut woke = false;
        for ev in self.events.iter() {
            if ev.token() == WAKER {
                woke = true;
                continue;
            }
            // A hang-up or an error is worth a retry too: the retry reports it.
            out.push(Ready {
                fd: ev.token().0 as RawFd,
                read: ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                write: ev.is_writable() || ev.is_write_closed() || ev.is_error(),
                read_closed: ev.is_read_closed() || ev.is_error(),
            });
        }
        Ok(woke)
    }
}
