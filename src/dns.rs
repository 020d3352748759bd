//! Name resolution off the loop thread.
//!
//! `getaddrinfo` blocks for as long as the resolver takes (seconds, when a server stalls), and
//! upstream Copas runs it inside `connect` on the loop thread. Here each lookup runs on a thread
//! of its own; the result is queued and the poll is woken through a `mio::Waker`, so the loop
//! keeps running coroutines and timers meanwhile.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};

use mio::Waker;

/// The addresses of a name in resolver order (IPv6 and IPv4 as the system ranks them), or
/// LuaSocket's message for the failure.
pub type Answer = Result<Vec<String>, String>;

pub struct Resolver {
    next_id: u64,
    finished: Arc<Mutex<Vec<(u64, Answer)>>>,
    /// Answers that arrived and were not taken yet.
    answers: HashMap<u64, Answer>,
    /// Lookups still running whose answer is wanted.
    running: HashSet<u64>,
}

impl Resolver {
    pub fn new() -> Self {
        Resolver {
            next_id: 0,
            finished: Arc::new(Mutex::new(Vec::new())),
            answers: HashMap::new(),
            running: HashSet::new(),
        }
    }

    /// Lookups still running whose answer somebody waits for: they keep the loop alive.
    pub fn pending(&self) -> usize {
        self.running.len()
    }

    /// True while lookup `id` runs and its answer is wanted.
    pub fn pending_id(&self, id: u64) -> bool {
        self.running.contains(&id)
    }

    /// Starts looking up `host` and returns the lookup's id.
    pub fn start(&mut self, host: String, waker: Arc<Waker>) -> std::io::Result<u64> {
        self.next_id += 1;
        let id = self.next_id;
        let finished = Arc::clone(&self.finished);
        std::thread::Builder::new()
            .name("copas-dns".into())
            .spawn(move || {
                let answer = lookup(&host);
                if let Ok(mut list) = finished.lock() {
                    list.push((id, answer));
                }
                let _ = waker.wake();
            })?;
        self.running.insert(id);
        Ok(id)
    }

    /// Moves the answers that arrived into `answers` and returns their ids.
    pub fn collect(&mut self) -> Vec<u64> {
        let arrived: Vec<(u64, Answer)> = match self.finished.lock() {
            Ok(mut list) => std::mem::take(&mut *list),
            Err(_) => Vec::new(),
        };
        let mut ids = Vec::with_capacity(arrived.len());
        for (id, answer) in arrived {
            if self.running.remove(&id) {
                self.answers.insert(id, answer);
                ids.push(id);
            }
        }
        ids
    }

    /// The answer for `id`, once, if it arrived. A lookup taken before its answer came (its
    /// waiter timed out) is forgotten: the answer is dropped when it arrives.
    pub fn take(&mut self, id: u64) -> Option<Answer> {
        let answer = self.answers.remove(&id);
        if answer.is_none() {
            self.running.remove(&id);
        }
        answer
    }
}

fn lookup(host: &str) -> Answer {
    answer((host, 0u16).to_socket_addrs())
}

/// The answer for what the resolver returned: each address once, in the resolver's order, or
/// LuaSocket's message for the failure.
fn answer(resolved: std::io::Result<impl Iterator<Item = SocketAddr>>) -> Answer {
    match resolved {
        Ok(addrs) => {
            let mut ips: Vec<IpAddr> = Vec::new();
            for a in addrs {
                if !ips.contains(&a.ip()) {
                    ips.push(a.ip());
                }
            }
            Ok(ips.iter().map(IpAddr::to_string).collect())
        }
        Err(e) => Err(luasocket_message(&e.to_string())),
    }
}

/// LuaSocket's wording of `getaddrinfo` failures (its `socket_gaistrerror`), so that programs
/// matching on the message keep working.
fn luasocket_message(std_message: &str) -> String {
    let text = std_message
        .strip_prefix("failed to lookup address information: ")
        .unwrap_or(std_message)
        .to_lowercase();
    if text.contains("name or service not known") || text.contains("no address associated") {
        "host or service not provided, or not known".into()
    } else if text.contains("temporary failure") {
        "temporary failure in name resolution".into()
    } else if text.contains("non-recoverable") {
        "non-recoverable failure in name resolution".into()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::{Duration, Instant};

    use mio::{Events, Poll, Token};

    // Tests resolve only numeric addresses and "localhost" (the network rule of the project).

    fn v4(a: u8, b: u8, c: u8, d: u8) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::new(a, b, c, d), 0))
    }

    fn v6(ip: &str) -> SocketAddr {
        SocketAddr::from((ip.parse::<Ipv6Addr>().unwrap(), 0))
    }

    fn failure(gai_message: &str) -> Answer {
        // std's wording of a getaddrinfo error, gai_strerror's text after the prefix.
        let e = std::io::Error::other(format!(
            "failed to lookup address information: {gai_message}"
        ));
        answer(Err::<std::vec::IntoIter<SocketAddr>, _>(e))
    }

    #[test]
    fn each_address_is_listed_once_in_the_resolvers_order() {
        // getaddrinfo lists an address once per socket type and port; copas tries each address
        // once, in the order the system ranks them (RFC 6724: IPv6 usually first).
        let mut port_80 = v4(127, 0, 0, 1);
        port_80.set_port(80);
        let got = answer(Ok(vec![
            v6("::1"),
            v4(127, 0, 0, 1),
            v6("::1"),
            port_80,
            v4(127, 0, 0, 2),
        ]
        .into_iter()));
        assert_eq!(
            got,
            Ok(vec!["::1".into(), "127.0.0.1".into(), "127.0.0.2".into()])
        );
    }

    #[test]
    fn ipv4_first_stays_ipv4_first() {
        // The ranking is the system's (gai.conf may prefer IPv4): never re-sorted here.
        let got = answer(Ok(vec![v4(10, 0, 0, 1), v6("2001:db8::1")].into_iter()));
        assert_eq!(got, Ok(vec!["10.0.0.1".into(), "2001:db8::1".into()]));
    }

    #[test]
    fn addresses_read_as_luasocket_writes_them() {
        // Compressed IPv6, and an IPv4-mapped address in its dotted form (inet_ntop's).
        let got = answer(Ok(vec![
            v6("2001:0db8:0000:0000:0000:0000:0000:0001"),
            v6("::ffff:192.0.2.1"),
        ]
        .into_iter()));
        assert_eq!(
            got,
            Ok(vec!["2001:db8::1".into(), "::ffff:192.0.2.1".into()])
        );
    }

    #[test]
    fn an_unknown_name_reads_as_luasocket_says() {
        let expected = Err("host or service not provided, or not known".to_string());
        assert_eq!(failure("Name or service not known"), expected);
        assert_eq!(failure("No address associated with hostname"), expected);
    }

    #[test]
    fn resolver_trouble_reads_as_luasocket_says() {
        assert_eq!(
            failure("Temporary failure in name resolution"),
            Err("temporary failure in name resolution".into())
        );
        assert_eq!(
            failure("Non-recoverable failure in name resolution"),
            Err("non-recoverable failure in name resolution".into())
        );
    }

    #[test]
    fn another_failure_keeps_the_systems_text_without_stds_prefix() {
        assert_eq!(
            failure("ai_family not supported"),
            Err("ai_family not supported".into())
        );
        // An error that is not getaddrinfo's (EAI_SYSTEM comes as an OS error) keeps its text.
        let e = std::io::Error::from_raw_os_error(24);
        let got = answer(Err::<std::vec::IntoIter<SocketAddr>, _>(e));
        assert!(
            got.as_ref()
                .is_err_and(|m| m.to_lowercase().contains("too many open files")),
            "{got:?}"
        );
    }

    #[test]
    fn a_numeric_address_is_its_own_answer() {
        assert_eq!(lookup("127.0.0.1"), Ok(vec!["127.0.0.1".into()]));
        assert_eq!(lookup("::1"), Ok(vec!["::1".into()]));
    }

    #[test]
    fn a_name_with_a_nul_byte_fails_without_a_panic() {
        // Such a name never reaches the resolver; the message still comes as an error answer.
        assert!(lookup("local\0host").is_err());
    }

    /// Waits (up to 10 s) until the lookups' thread wakes the poll and `id` has arrived.
    fn wait_for(resolver: &mut Resolver, poll: &mut Poll, id: u64) -> bool {
        let mut events = Events::with_capacity(4);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
            if resolver.collect().contains(&id) {
                return true;
            }
        }
        false
    }

    fn poll_and_waker() -> (Poll, Arc<Waker>) {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), Token(0)).unwrap());
        (poll, waker)
    }

    #[test]
    fn a_lookup_answers_once_through_the_waker() {
        let (mut poll, waker) = poll_and_waker();
        let mut r = Resolver::new();
        let id = r.start("localhost".into(), Arc::clone(&waker)).unwrap();
        assert!(r.pending_id(id));
        assert_eq!(r.pending(), 1, "a running lookup keeps the loop alive");
        assert!(wait_for(&mut r, &mut poll, id));
        assert_eq!(r.pending(), 0);
        let answer = r.take(id).expect("the answer arrived");
        let addrs = answer.expect("localhost resolves");
        assert!(
            addrs.iter().all(|a| a == "::1" || a.starts_with("127.")),
            "{addrs:?}"
        );
        assert_eq!(r.take(id), None, "an answer is taken once");
    }

    #[test]
    fn a_lookup_given_up_before_its_answer_drops_the_answer() {
        // The waiter timed out: the lookup stops keeping the loop alive, and its late answer is
        // neither reported nor kept.
        let (mut poll, waker) = poll_and_waker();
        let mut r = Resolver::new();
        let dropped = r.start("127.0.0.1".into(), Arc::clone(&waker)).unwrap();
        assert_eq!(r.take(dropped), None);
        assert_eq!(r.pending(), 0);
        assert!(!r.pending_id(dropped));
        let kept = r.start("::1".into(), waker).unwrap();
        assert_ne!(kept, dropped, "every lookup has an id of its own");
        assert!(wait_for(&mut r, &mut poll, kept));
        assert_eq!(r.take(dropped), None);
        assert_eq!(r.take(kept), Some(Ok(vec!["::1".into()])));
    }
}
