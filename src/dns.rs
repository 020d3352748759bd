//! Name resolution off the loop thread.
//!
//! `getaddrinfo` blocks for as long as the resolver takes (seconds, when a server stalls), and
//! upstream Copas runs it inside `connect` on the loop thread. Here each lookup runs on a thread
//! of its own; the result is queued and the poll is woken through a `mio::Waker`, so the loop
//! keeps running coroutines and timers meanwhile.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, ToSocketAddrs};
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
    match (host, 0u16).to_socket_addrs() {
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
