//! Reads and writes for plain LuaSocket TCP connections, on the fd, with copas's own buffer.
//!
//! Going through LuaSocket costs a failed `recv` (EAGAIN) before every wait, a clock read per
//! call and Lua-level loops around it; here a short read tells that the kernel buffer is
//! drained, so the next receive waits without a syscall (the edge-triggered event says when
//! to read again). The patterns follow LuaSocket's: `"*l"` (a line, `\r` dropped, `\n` not
//! returned), `"*a"` (until the peer closes), a byte count (which includes the prefix), and the
//! prefix prepended. Partial lines and counts stay buffered while the caller waits instead of
//! being handed back and re-sent as a prefix, so long receives cost linear time.
//!
//! One reader per socket: once copas reads a connection this way, data it buffered is not in
//! LuaSocket's buffer (the shim only takes over a socket whose LuaSocket buffer is empty).

use std::io::{self, Read, Write};
use std::mem::ManuallyDrop;
use std::net::TcpStream;
use std::os::fd::{FromRawFd, RawFd};
use std::os::raw::c_void;

/// What to read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Pattern {
    Line,
    All,
    Count(usize),
}

/// How a receive ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// The pattern was satisfied: the data (prefix not included).
    Done(Vec<u8>),
    /// Nothing more to read now. With `partial` asked for, the buffered bytes are handed over
    /// (and taken out of the buffer); otherwise they stay for the next call.
    WouldBlock(Vec<u8>),
    /// The peer closed (`"closed"`) or the read failed: the error and the bytes received.
    Failed(&'static str, Vec<u8>),
}

/// Reads go to one scratch buffer shared by all connections; a connection keeps only what it
/// has not handed out yet, so ten thousand idle connections hold no buffers.
pub const READ_SIZE: usize = 64 * 1024;

/// One connection's receive buffer.
pub struct Conn {
    /// The LuaSocket object this buffer belongs to (a descriptor number is reused at once).
    pub owner: usize,
    buf: Vec<u8>,
    start: usize,
    eof: bool,
    /// False after a short read: the kernel had no more, and an edge will say when it has.
    readable: bool,
    /// The peer's end of stream was reported: read until it shows, whatever the read sizes.
    peer_closed: bool,
    /// A read error, reported once the data buffered before it is taken.
    error: Option<&'static str>,
}

impl Conn {
    pub fn new(owner: usize) -> Self {
        Conn {
            owner,
            buf: Vec::new(),
            start: 0,
            eof: false,
            readable: true,
            peer_closed: false,
            error: None,
        }
    }

    /// Readiness was reported for the fd; `closed` when the peer's end of stream (or an error)
    /// is among it. A short read does not prove the kernel buffer drained then: the end of
    /// stream may sit behind the data, and its edge has been reported already.
    pub fn mark_readable(&mut self, closed: bool) {
        self.readable = true;
        self.peer_closed |= closed;
    }

    fn buffered(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        if self.start == 0 && n == self.buf.len() {
            return std::mem::take(&mut self.buf);
        }
        let out = self.buf[self.start..self.start + n].to_vec();
        self.start += n;
        if self.start == self.buf.len() {
            self.buf = Vec::new();
            self.start = 0;
        }
        out
    }

    fn take_all(&mut self) -> Vec<u8> {
        let n = self.buffered().len();
        self.take(n)
    }

    /// Reads what the kernel has (once), through `scratch`. False when nothing could be read.
    fn fill(&mut self, fd: RawFd, scratch: &mut [u8]) -> bool {
        if self.eof || self.error.is_some() || !self.readable {
            return false;
        }
        // SAFETY: the fd is an open socket owned by the LuaSocket object, borrowed for this one
        // call; ManuallyDrop keeps the stream from closing it.
        let mut stream = ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(fd) });
        let got = loop {
            match stream.read(scratch) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match got {
            Ok(0) => {
                self.eof = true;
                true
            }
            Ok(n) => {
                if self.start > 0 && self.start * 2 >= self.buf.len() {
                    self.buf.drain(..self.start);
                    self.start = 0;
                }
                self.buf.extend_from_slice(&scratch[..n]);
                self.readable = n == scratch.len() || self.peer_closed;
                true
            }
            Err(e) => {
                if e.kind() == io::ErrorKind::WouldBlock {
                    self.readable = false;
                    false
                } else {
                    self.error = Some(error_message(&e));
                    true
                }
            }
        }
    }

    /// Receives by `pattern`. `have` is the prefix length (a count includes it, as LuaSocket's).
    pub fn receive(
        &mut self,
        fd: RawFd,
        pattern: Pattern,
        have: usize,
        partial: bool,
        scratch: &mut [u8],
    ) -> Received {
        let len_before = self.buffered().len();
        loop {
            if let Some(done) = self.complete(pattern, have) {
                return done;
            }
            if let Some(err) = self.error.or(self.eof.then_some("closed")) {
                let fresh = self.buffered().len() > len_before;
                return self.end_of_stream(pattern, err, fresh);
            }
            if !self.fill(fd, scratch) {
                let part = if partial { self.take_all() } else { Vec::new() };
                return Received::WouldBlock(part);
            }
        }
    }

    fn complete(&mut self, pattern: Pattern, have: usize) -> Option<Received> {
        match pattern {
            Pattern::Line => {
                let nl = self.buffered().iter().position(|&b| b == b'\n')?;
                let mut line = self.take(nl + 1);
                line.pop();
                line.retain(|&b| b != b'\r');
                Some(Received::Done(line))
            }
            Pattern::Count(n) => {
                let want = n.saturating_sub(have);
                (self.buffered().len() >= want).then(|| Received::Done(self.take(want)))
            }
            Pattern::All => None,
        }
    }

    /// The stream ended (or failed) before the pattern was satisfied. `"*a"` succeeds when
    /// this call read bytes before the end of stream (LuaSocket's rule); when the end came on
    /// a later wake-up than the data, it is `nil, "closed", <all data>`, as upstream's usual
    /// result.
    fn end_of_stream(&mut self, pattern: Pattern, err: &'static str, fresh: bool) -> Received {
        let rest = self.take_all();
        if pattern == Pattern::All && err == "closed" && fresh {
            return Received::Done(rest);
        }
        Received::Failed(err, rest)
    }
}

/// The descriptor a LuaSocket TCP object holds, read from the object itself: LuaSocket's
/// `t_tcp` struct starts with its `t_socket` (an int; -1 once closed). Also the object's
/// address, which identifies it. The shim only passes objects whose metatable is LuaSocket's
/// `tcp{client}` class, and `adopt` checks the read against `getfd()` first.
pub fn luasocket_fd(skt: *const c_void) -> (usize, RawFd) {
    let p = skt as *const RawFd;
    if p.is_null() {
        return (0, -1);
    }
    // SAFETY: `p` points to the userdata block of a live LuaSocket tcp object (the shim checks
    // its class; `adopt` verified the layout against getfd()), whose first member is the fd.
    (p as usize, unsafe { p.read_unaligned() })
}

/// Sends `data` (already cut to the range asked for) and returns how many bytes went out, and
/// the error that stopped it: `"timeout"` when the kernel buffer is full.
pub fn send(fd: RawFd, data: &[u8]) -> (usize, Option<&'static str>) {
    // SAFETY: as in `Conn::fill`: a borrowed open socket, never closed here.
    let mut stream = ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(fd) });
    let mut sent = 0;
    while sent < data.len() {
        match stream.write(&data[sent..]) {
            Ok(0) => return (sent, Some("closed")),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (sent, Some("timeout")),
            Err(e) => return (sent, Some(error_message(&e))),
        }
    }
    (sent, None)
}

/// LuaSocket's words for socket errors (a reset or broken pipe is "closed").
fn error_message(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::NotConnected => "closed",
        io::ErrorKind::ConnectionRefused => "connection refused",
        io::ErrorKind::TimedOut => "connection timed out",
        _ => "socket error",
    }
}
