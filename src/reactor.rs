//! Waiting for readiness or for the next deadline.
//!
//! Readiness comes from `mio::Poll` (epoll). The poll instance is made on the first socket
//! registration, so a program that only uses threads and timers never opens an epoll descriptor,
//! and a step with nothing registered waits with a plain sleep instead of a syscall into epoll.

use std::io;
use std::time::Duration;

pub struct Reactor {
    poll: Option<mio::Poll>,
    events: mio::Events,
    registered: usize,
}

impl Reactor {
    pub fn new() -> Self {
        Reactor {
            poll: None,
            events: mio::Events::with_capacity(1024),
            registered: 0,
        }
    }

    /// True when some socket registration could still wake the loop.
    pub fn has_sources(&self) -> bool {
        self.registered > 0
    }

    /// Waits up to `timeout` (`None`: until an event) and returns the number of readiness
    /// events. With nothing registered it only sleeps, and never without a bound.
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        match (&mut self.poll, self.registered) {
            (Some(poll), n) if n > 0 => {
                match poll.poll(&mut self.events, timeout) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(0),
                    Err(e) => return Err(e),
                }
                Ok(self.events.iter().count())
            }
            _ => {
                if let Some(d) = timeout.filter(|d| !d.is_zero()) {
                    std::thread::sleep(d);
                }
                Ok(0)
            }
        }
    }
}
