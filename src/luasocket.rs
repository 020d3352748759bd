//! LuaSocket's semantics, for the TCP connections the core reads and writes itself on the fd,
//! with copas's own buffer: the receive patterns, the send index rules, how a LuaSocket object
//! is recognised and where its descriptor is, and LuaSocket's words for errors.
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
use std::os::raw::{c_int, c_void};

use mlua::{ffi, AnyUserData, Lua};

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
    /// What was buffered when the last receive had to wait: bytes the caller has seen as
    /// "not yet" (upstream would have passed them back in as the prefix).
    parked: usize,
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
            parked: 0,
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

    /// Reads what the source has (once), through `scratch`. False when nothing could be read.
    fn fill(&mut self, source: &mut impl Read, scratch: &mut [u8]) -> bool {
        if self.eof || self.error.is_some() || !self.readable {
            return false;
        }
        let got = loop {
            match source.read(scratch) {
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

    /// Receives by `pattern` from `source`. `have` is the prefix length (a count includes it,
    /// as LuaSocket's). With `partial`, a receive that must wait hands over what it buffered
    /// (the partial result of a receive that gives up).
    pub fn receive(
        &mut self,
        source: &mut impl Read,
        pattern: Pattern,
        have: usize,
        partial: bool,
        scratch: &mut [u8],
    ) -> Received {
        let received = loop {
            // `"*a"` reads until the source says "no more" or ends, as LuaSocket does: a short
            // read may hide the end of stream right behind it, and `"*a"` reports it at once.
            if pattern == Pattern::All {
                self.readable = true;
            }
            if let Some(done) = self.complete(pattern, have) {
                break done;
            }
            if let Some(err) = self.error.or(self.eof.then_some("closed")) {
                break self.end_of_stream(pattern, err);
            }
            if !self.fill(source, scratch) {
                if !partial {
                    self.parked = self.buffered().len();
                    return Received::WouldBlock(Vec::new());
                }
                break Received::WouldBlock(self.take_partial(pattern));
            }
        };
        self.parked = 0;
        received
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

    /// What a receive that stops short hands back: all it buffered, without the `\r`s of a line
    /// (LuaSocket drops them as it reads a line, so its partial line has none either).
    fn take_partial(&mut self, pattern: Pattern) -> Vec<u8> {
        let mut part = self.take_all();
        if pattern == Pattern::Line {
            part.retain(|&b| b != b'\r');
        }
        part
    }

    /// The stream ended (or failed) before the pattern was satisfied. `"*a"` succeeds when it
    /// got any bytes since the caller last waited, LuaSocket's rule (its count starts after the
    /// prefix, and upstream passes what came before the wait as the prefix); with nothing
    /// new it is `nil, "closed", <everything>`.
    fn end_of_stream(&mut self, pattern: Pattern, err: &'static str) -> Received {
        let fresh = self.buffered().len() > self.parked;
        let rest = self.take_partial(pattern);
        if pattern == Pattern::All && err == "closed" && fresh {
            return Received::Done(rest);
        }
        Received::Failed(err, rest)
    }
}

/// A descriptor borrowed as a stream, for one call: it is never closed here.
pub struct BorrowedStream(ManuallyDrop<TcpStream>);

impl BorrowedStream {
    /// # Safety
    /// `fd` must be an open socket for as long as the value lives.
    pub unsafe fn new(fd: RawFd) -> Self {
        // SAFETY: the caller's promise; ManuallyDrop keeps the stream from closing it.
        BorrowedStream(ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(fd) }))
    }
}

impl Read for BorrowedStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for BorrowedStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The registry name under which LuaSocket keeps the metatable of connected TCP sockets.
const LUASOCKET_CLIENT_CLASS: &std::ffi::CStr = c"tcp{client}";

/// LuaSocket's `t_tcp` holds its read buffer (`BUF_SIZE`, 8192 bytes) inline, so a real
/// connection's userdata is at least this large.
const LUASOCKET_TCP_MIN_SIZE: usize = 8192;

/// Whether `skt` is a LuaSocket TCP connection: its metatable (the raw one, whatever a
/// `__metatable` field says) is the one LuaSocket registered for `tcp{client}`, and its block
/// is large enough to be LuaSocket's struct. Never judged by `tostring`: any userdata can
/// claim to be `tcp{client}`, and the core reads a descriptor out of the block.
pub fn is_luasocket_client(lua: &Lua, skt: &AnyUserData) -> bool {
    // SAFETY: the closure gets the userdata on top of the stack mlua prepared (with room for
    // three more values), pushes two and pops them, then replaces it with the result; it runs
    // protected, so an error (memory for the class name) cannot unwind through it.
    let is_client = unsafe {
        lua.exec_raw::<bool>(skt, |l| {
            let mut same_class = false;
            if ffi::lua_getmetatable(l, -1) != 0 {
                ffi::lua_getfield(l, ffi::LUA_REGISTRYINDEX, LUASOCKET_CLIENT_CLASS.as_ptr());
                same_class = ffi::lua_rawequal(l, -1, -2) != 0;
                ffi::lua_settop(l, -3);
            }
            let big_enough = ffi::lua_rawlen(l, -1) >= LUASOCKET_TCP_MIN_SIZE;
            ffi::lua_settop(l, -2); // the result replaces the argument
            ffi::lua_pushboolean(l, c_int::from(same_class && big_enough));
        })
    };
    is_client.unwrap_or(false)
}

/// The descriptor a LuaSocket TCP object holds, read from the object itself: LuaSocket's
/// `t_tcp` struct starts with its `t_socket` (an int; -1 once closed). Also the object's
/// address, which identifies it. Only called for objects `adopt` accepted: the core checked
/// their class with `is_luasocket_client` and the read against `getfd()`.
pub fn luasocket_fd(skt: *const c_void) -> (usize, RawFd) {
    let p = skt as *const RawFd;
    if p.is_null() {
        return (0, -1);
    }
    // SAFETY: `p` points to the userdata block of a live LuaSocket tcp object (the shim checks
    // its class; `adopt` verified the layout against getfd()), whose first member is the fd.
    (p as usize, unsafe { p.read_unaligned() })
}

/// `send(data, i, j)` on the connection with descriptor `fd`, as LuaSocket's: the bytes from
/// `i` to `j` (see `send_range`); returns the index of the last byte sent and the error that
/// stopped it (`"timeout"` when the kernel buffer is full).
pub fn send(fd: RawFd, data: &[u8], i: Option<f64>, j: Option<f64>) -> (f64, Option<&'static str>) {
    let (start, end) = send_range(data.len(), i, j);
    if fd < 0 {
        return ((start - 1) as f64, Some("closed"));
    }
    let (sent, err) = if start <= end {
        write_now(fd, &data[start - 1..end])
    } else {
        (0, None)
    };
    ((start - 1 + sent) as f64, err)
}

/// LuaSocket's index rules for `send(data, i, j)` (buffer.c): `i` defaults to 1 and `j` to -1,
/// negative indices count from the end, and the range is clipped to the data. Returns 1-based
/// `(start, end)`; empty when `start > end`.
fn send_range(size: usize, i: Option<f64>, j: Option<f64>) -> (usize, usize) {
    let size = size as i64;
    // `as` saturates: NaN is 0, the infinities the extremes, as LuaSocket's (long) cast intends.
    let mut start = i.unwrap_or(1.0) as i64;
    let mut end = j.unwrap_or(-1.0) as i64;
    if start < 0 {
        start = start.saturating_add(size + 1);
    }
    if end < 0 {
        end = end.saturating_add(size + 1);
    }
    (start.max(1) as usize, end.clamp(0, size) as usize)
}

/// Writes `data` now, as much as the kernel takes: how many bytes went out, and the error that
/// stopped it.
fn write_now(fd: RawFd, data: &[u8]) -> (usize, Option<&'static str>) {
    // SAFETY: the fd is an open socket owned by the LuaSocket object, borrowed for this call.
    let mut stream = unsafe { BorrowedStream::new(fd) };
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

/// The receive engine against a plain model of LuaSocket's rules, as upstream Copas drives them
/// (try, and on "timeout" wait and try again with the partial result as the prefix), over random
/// streams cut into random arrivals, ending in a close, an error or a stall at any point.
#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    use crate::test_rng::Rng;

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum End {
        Close,
        Fail,
        Stall,
    }

    /// The kernel side of one connection: arrivals are delivered one at a time.
    struct Kernel {
        arrivals: VecDeque<Vec<u8>>,
        end: End,
        ready: VecDeque<u8>,
        ended: bool,
        /// An arrival happened since the last wait: epoll has an edge to report.
        edge: bool,
    }

    impl Kernel {
        fn deliver(&mut self) -> bool {
            match self.arrivals.pop_front() {
                Some(bytes) => {
                    self.ready.extend(bytes);
                    self.ended = self.arrivals.is_empty() && self.end != End::Stall;
                    self.edge = true;
                    true
                }
                None => false,
            }
        }
    }

    impl Read for Kernel {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if !self.ready.is_empty() {
                let n = buf.len().min(self.ready.len());
                for (dst, src) in buf.iter_mut().zip(self.ready.drain(..n)) {
                    *dst = src;
                }
                return Ok(n);
            }
            match (self.ended, self.end) {
                (true, End::Close) => Ok(0),
                (true, End::Fail) => Err(io::Error::other("boom")),
                _ => Err(io::ErrorKind::WouldBlock.into()),
            }
        }
    }

    /// A result as a Lua caller sees it: data, or nil + error + partial.
    type LuaResult = Result<Vec<u8>, (&'static str, Vec<u8>)>;

    /// copas-rs: the shim's receive over `Conn` (first try; waits on edges; the last try after
    /// the deadline hands over the partial result).
    fn ours(
        conn: &mut Conn,
        k: &mut Kernel,
        p: Pattern,
        prefix: &[u8],
        scratch: &mut [u8],
    ) -> LuaResult {
        let have = prefix.len();
        let with_prefix = |d: Vec<u8>| [prefix, &d].concat();
        let mut partial = false;
        loop {
            match conn.receive(k, p, have, partial, scratch) {
                Received::Done(d) => return Ok(with_prefix(d)),
                Received::Failed(e, d) => return Err((e, with_prefix(d))),
                Received::WouldBlock(d) if partial => return Err(("timeout", with_prefix(d))),
                Received::WouldBlock(_) => {}
            }
            if !k.edge && !k.deliver() {
                partial = true; // the deadline passes
                continue;
            }
            k.edge = false;
            conn.mark_readable(k.ended);
        }
    }

    /// LuaSocket's buffer.c rules for one `receive(pattern, prefix)`: the new bytes it takes and
    /// how it ended ("done", "timeout", "closed" or the error).
    fn luasocket(k: &mut Kernel, p: Pattern, prefix: &[u8]) -> (Vec<u8>, &'static str) {
        let mut got = Vec::new();
        let mut byte = [0u8];
        let status = |k: &mut Kernel| match k.read(&mut [0u8; 0]) {
            Ok(_) if k.ended && k.end == End::Close => "closed",
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => "timeout",
            _ => "socket error",
        };
        match p {
            Pattern::Line => loop {
                if k.ready.is_empty() {
                    return (got, status(k));
                }
                let _ = k.read(&mut byte);
                match byte[0] {
                    b'\n' => return (got, "done"),
                    b'\r' => {}
                    b => got.push(b),
                }
            },
            Pattern::Count(n) => {
                if !prefix.is_empty() && n <= prefix.len() {
                    return (got, "done");
                }
                while got.len() < n - prefix.len() {
                    if k.ready.is_empty() {
                        return (got, status(k));
                    }
                    let _ = k.read(&mut byte);
                    got.push(byte[0]);
                }
                (got, "done")
            }
            Pattern::All => {
                got.extend(k.ready.drain(..));
                match status(k) {
                    "closed" if !got.is_empty() => (got, "done"),
                    s => (got, s),
                }
            }
        }
    }

    /// Upstream Copas: LuaSocket's receive, and on "timeout" a wait and a retry with the partial
    /// result as the prefix.
    fn upstream(k: &mut Kernel, p: Pattern, prefix: &[u8]) -> LuaResult {
        let mut part = prefix.to_vec();
        loop {
            let (new, status) = luasocket(k, p, &part);
            part.extend(new);
            match status {
                "done" => return Ok(part),
                "timeout" if k.deliver() => {}
                err => return Err((err, part)),
            }
        }
    }

    fn stream(rng: &mut Rng) -> (Vec<Vec<u8>>, End) {
        let alphabet = b"ab\r\n";
        let arrivals = (0..1 + rng.below(6))
            .map(|_| {
                let len = rng.below(12) as usize;
                (0..len).map(|_| alphabet[rng.below(4) as usize]).collect()
            })
            .collect();
        let end = [End::Close, End::Fail, End::Stall][rng.below(3) as usize];
        (arrivals, end)
    }

    fn kernel(arrivals: &[Vec<u8>], end: End) -> Kernel {
        let mut k = Kernel {
            arrivals: arrivals.iter().cloned().collect(),
            end,
            ready: VecDeque::new(),
            ended: false,
            edge: false,
        };
        k.deliver();
        k
    }

    #[test]
    fn send_range_defaults_to_the_whole_string() {
        assert_eq!(send_range(5, None, None), (1, 5));
    }

    #[test]
    fn send_range_counts_negative_indices_from_the_end() {
        assert_eq!(send_range(5, Some(-2.0), None), (4, 5));
        assert_eq!(send_range(5, Some(2.0), Some(-2.0)), (2, 4));
        assert_eq!(send_range(5, Some(-10.0), Some(-10.0)), (1, 0));
    }

    #[test]
    fn send_range_clips_to_the_data_and_may_be_empty() {
        assert_eq!(send_range(5, Some(0.0), Some(99.0)), (1, 5));
        assert_eq!(send_range(5, Some(4.0), Some(2.0)), (4, 2));
        assert_eq!(send_range(0, None, None), (1, 0));
    }

    #[test]
    fn send_range_survives_nan_and_infinities() {
        assert_eq!(send_range(5, Some(f64::NAN), Some(f64::INFINITY)), (1, 5));
        assert_eq!(
            send_range(5, Some(f64::NEG_INFINITY), Some(f64::NEG_INFINITY)),
            (1, 0)
        );
    }

    #[test]
    fn receives_as_luasocket_under_upstream_copas() {
        for seed in 1..=20_000u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let (arrivals, end) = stream(&mut rng);
            let (mut k1, mut k2) = (kernel(&arrivals, end), kernel(&arrivals, end));
            let mut conn = Conn::new(0);
            // a small scratch buffer, so reads come both full and short
            let mut scratch = vec![0u8; 1 + rng.below(8) as usize];
            for call in 0..8 {
                let pattern = match rng.below(3) {
                    0 => Pattern::Line,
                    1 => Pattern::All,
                    _ => Pattern::Count(rng.below(10) as usize),
                };
                let prefix: &[u8] = [&b""[..], b"p", b"pre\r"][rng.below(3) as usize];
                let want = upstream(&mut k2, pattern, prefix);
                let got = ours(&mut conn, &mut k1, pattern, prefix, &mut scratch);
                assert_eq!(
                    got, want,
                    "seed {seed}, call {call}: receive({pattern:?}, {prefix:?}) over {arrivals:?} then {end:?}"
                );
                if want.is_err() {
                    break;
                }
            }
        }
    }
}
