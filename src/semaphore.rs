//! The waiting lines of `copas.semaphore` (and of the queue and future built on it).
//!
//! While threads wait, the line and the count live here, so that `give` hands resources to
//! waiters and makes them ready without a Lua-level `copas.wakeup` per waiter, and a waiting
//! `take` is one yield. While nobody waits, the Lua side keeps the count (its take and give then
//! call nothing, and LuaJIT compiles them): a waiter hands it over with its OP_SEMAPHORE yield,
//! and every operation here gives it back once no waiter is left (`released`).
//!
//! The line is FIFO with head-of-line blocking (behaviour contract §9.2). Waiters that left it
//! (timed out, removed, died) are skipped when they reach the head: the scheduler tells which
//! waiters still wait, so a task is never handed resources it does not wait for.

use std::collections::VecDeque;

use slab::Slab;

use crate::tasks::TaskRef;

struct Waiter {
    task: TaskRef,
    requested: f64,
}

pub struct Semaphore {
    gen: u32,
    count: f64,
    max: f64,
    line: VecDeque<Waiter>,
}

/// What `take` decided without waiting.
#[derive(Debug, PartialEq)]
pub enum Take {
    Granted,
    TooMany,
    /// The line is not empty or the count too low: the caller queues (`enqueue`) and waits.
    Wait,
}

#[derive(Default)]
pub struct Semaphores {
    slab: Slab<Semaphore>,
}

impl Semaphores {
    /// A new semaphore; returns its slab key (the caller pairs it with `gen`).
    pub fn insert(&mut self, gen: u32, max: f64, start: f64) -> usize {
        self.slab.insert(Semaphore {
            gen,
            count: start,
            max,
            line: VecDeque::new(),
        })
    }

    pub fn get(&mut self, key: usize, gen: u32) -> Option<&mut Semaphore> {
        self.slab.get_mut(key).filter(|s| s.gen == gen)
    }

    /// Forgets a semaphore (destroyed, or its Lua object collected). Returns its line.
    pub fn remove(&mut self, key: usize, gen: u32) -> Vec<TaskRef> {
        if self.get(key, gen).is_none() {
            return Vec::new();
        }
        let sema = self.slab.remove(key);
        sema.line.into_iter().map(|w| w.task).collect()
    }
}

impl Semaphore {
    pub fn count(&self) -> f64 {
        self.count
    }

    /// Takes over the count the Lua side kept while the line was empty.
    pub fn set_count(&mut self, count: f64) {
        self.count = count;
    }

    /// The count, when no waiter is left in line: the Lua side keeps it from then on.
    pub fn released(&self, waiting: impl Fn(TaskRef) -> bool) -> Option<f64> {
        (!self.line.iter().any(|w| waiting(w.task))).then_some(self.count)
    }

    /// `take(requested)` where `waiting` tells which tasks in line still wait for this
    /// semaphore; grants to the line first (`granted`), so that waiters that left never hold up
    /// a request that can be satisfied.
    pub fn take(
        &mut self,
        requested: f64,
        waiting: impl Fn(TaskRef) -> bool,
        granted: &mut Vec<TaskRef>,
    ) -> Take {
        self.serve(waiting, granted);
        if self.line.is_empty() && self.count >= requested {
            self.count -= requested;
            Take::Granted
        } else if requested > self.max {
            Take::TooMany
        } else {
            Take::Wait
        }
    }

    pub fn enqueue(&mut self, task: TaskRef, requested: f64) {
        self.line.push_back(Waiter { task, requested });
    }

    /// Takes `task`'s entry out of the line (it stopped waiting without a grant).
    pub fn leave(&mut self, task: TaskRef) {
        self.line.retain(|w| w.task != task);
    }

    /// `give(amount)`: adds resources, capped at `max` (then false: "too many"), and grants to
    /// the line (`granted`).
    pub fn give(
        &mut self,
        amount: f64,
        waiting: impl Fn(TaskRef) -> bool,
        granted: &mut Vec<TaskRef>,
    ) -> bool {
        let count = self.count + amount;
        let fits = count <= self.max;
        self.count = if fits { count } else { self.max };
        self.serve(waiting, granted);
        fits
    }

    /// Grants to the head of the line, strictly in order, until a head that still waits asks
    /// for more than there is; drops those that left on the way.
    pub fn serve(&mut self, waiting: impl Fn(TaskRef) -> bool, granted: &mut Vec<TaskRef>) {
        while let Some(head) = self.line.front() {
            if waiting(head.task) {
                if head.requested > self.count {
                    break;
                }
                self.count -= head.requested;
                granted.push(head.task);
            }
            self.line.pop_front();
        }
    }

    /// The resources requested by the tasks still waiting, minus those available.
    pub fn wait(&self, waiting: impl Fn(TaskRef) -> bool) -> f64 {
        let requested: f64 = self
            .line
            .iter()
            .filter(|w| waiting(w.task))
            .map(|w| w.requested)
            .sum();
        requested - self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const A: TaskRef = (1, 0);
    const B: TaskRef = (2, 0);
    const C: TaskRef = (3, 0);

    fn all(_: TaskRef) -> bool {
        true
    }

    /// A semaphore with `max` and `count` and these waiters in line.
    fn sema(max: f64, count: f64, line: &[(TaskRef, f64)]) -> Semaphore {
        let mut s = Semaphore {
            gen: 0,
            count,
            max,
            line: VecDeque::new(),
        };
        for &(task, requested) in line {
            s.enqueue(task, requested);
        }
        s
    }

    fn give(s: &mut Semaphore, amount: f64, waiting: impl Fn(TaskRef) -> bool) -> Vec<TaskRef> {
        let mut granted = Vec::new();
        s.give(amount, waiting, &mut granted);
        granted
    }

    #[test]
    fn a_take_that_fits_an_empty_line_is_granted_at_once() {
        let mut s = sema(10.0, 3.0, &[]);
        let mut granted = Vec::new();
        assert_eq!(s.take(3.0, all, &mut granted), Take::Granted);
        assert_eq!(s.count(), 0.0);
        assert_eq!(s.take(1.0, all, &mut granted), Take::Wait);
        assert_eq!(
            s.take(0.0, all, &mut granted),
            Take::Granted,
            "0 always fits"
        );
        assert!(granted.is_empty());
    }

    #[test]
    fn too_many_is_only_said_of_a_request_that_cannot_be_granted() {
        // Upstream's fast path comes before the max check, and `start` may exceed `max`.
        let mut s = sema(5.0, 8.0, &[]);
        let mut granted = Vec::new();
        assert_eq!(s.take(7.0, all, &mut granted), Take::Granted);
        assert_eq!(s.take(6.0, all, &mut granted), Take::TooMany);
        assert_eq!(s.count(), 1.0, "a refused request takes nothing");
        // With a line, a request over max is refused rather than queued behind it.
        s.enqueue(A, 5.0);
        assert_eq!(s.take(6.0, all, &mut granted), Take::TooMany);
        assert_eq!(s.take(5.0, all, &mut granted), Take::Wait);
    }

    #[test]
    fn waiters_are_served_in_the_order_they_queued() {
        let mut s = sema(10.0, 0.0, &[(C, 1.0), (A, 1.0), (B, 1.0)]);
        assert_eq!(give(&mut s, 2.0, all), vec![C, A]);
        assert_eq!(give(&mut s, 1.0, all), vec![B]);
        assert_eq!(s.count(), 0.0);
    }

    #[test]
    fn a_big_request_at_the_head_holds_up_smaller_ones_behind_it() {
        // Head-of-line blocking (§9.2): B and C could be served with 4, but A came first.
        let mut s = sema(10.0, 0.0, &[(A, 5.0), (B, 1.0), (C, 1.0)]);
        assert_eq!(give(&mut s, 4.0, all), vec![]);
        assert_eq!(s.count(), 4.0, "nothing is handed out past the head");
        // A newcomer that the count would cover queues behind them too.
        let mut granted = Vec::new();
        assert_eq!(s.take(1.0, all, &mut granted), Take::Wait);
        assert_eq!(give(&mut s, 1.0, all), vec![A]);
        assert_eq!(give(&mut s, 2.0, all), vec![B, C]);
        assert_eq!(s.count(), 0.0);
    }

    #[test]
    fn waiters_that_left_the_line_are_skipped_and_never_granted() {
        // B timed out (or was removed): its place in line must not hold up C, nor take
        // resources away from it.
        let mut s = sema(10.0, 0.0, &[(A, 2.0), (B, 5.0), (C, 3.0)]);
        let waiting = |t: TaskRef| t != B;
        assert_eq!(give(&mut s, 5.0, waiting), vec![A, C]);
        assert_eq!(s.count(), 0.0);
        assert_eq!(s.released(waiting), Some(0.0), "nobody is left waiting");
    }

    #[test]
    fn a_take_that_can_be_satisfied_never_waits_behind_timed_out_waiters() {
        // Upstream bug fixed in copas-rs: holes left by timed-out waiters defeated the fast
        // path, so take(1) with 5 available timed out.
        let mut s = sema(10.0, 5.0, &[(A, 8.0), (B, 9.0)]);
        let mut granted = Vec::new();
        assert_eq!(s.take(1.0, |_| false, &mut granted), Take::Granted);
        assert_eq!(s.count(), 4.0);
        assert!(granted.is_empty());
    }

    #[test]
    fn a_take_first_serves_waiters_that_fit() {
        // The line may hold a waiter that now fits (the count was handed over after it
        // queued): it is served before the newcomer is considered.
        let mut s = sema(10.0, 0.0, &[(A, 3.0)]);
        s.set_count(4.0);
        let mut granted = Vec::new();
        assert_eq!(s.take(1.0, all, &mut granted), Take::Granted);
        assert_eq!(granted, vec![A]);
        assert_eq!(s.count(), 0.0);
    }

    #[test]
    fn give_caps_at_max_says_too_many_and_still_serves() {
        let mut s = sema(10.0, 8.0, &[]);
        assert!(s.give(2.0, all, &mut Vec::new()), "exactly max fits");
        assert!(!s.give(1.0, all, &mut Vec::new()));
        assert_eq!(s.count(), 10.0);
        // Capped resources are still handed out, strictly in order (upstream's destroy:
        // give(math.huge) with three waiters of 5 and max 10 releases two of them).
        let mut s = sema(10.0, 0.0, &[(A, 5.0), (B, 5.0), (C, 5.0)]);
        let mut granted = Vec::new();
        assert!(!s.give(f64::INFINITY, all, &mut granted));
        assert_eq!(granted, vec![A, B]);
        assert_eq!(s.count(), 0.0);
    }

    #[test]
    fn a_negative_give_takes_resources_away() {
        let mut s = sema(10.0, 3.0, &[(A, 2.0)]);
        // A queued while the count was handed over later; a negative give serves nobody.
        let granted = give(&mut s, -2.0, all);
        assert!(granted.is_empty());
        assert_eq!(s.count(), 1.0);
        assert!(
            s.give(-5.0, all, &mut Vec::new()),
            "below zero is not too many"
        );
        assert_eq!(s.count(), -4.0);
    }

    #[test]
    fn giving_the_wait_releases_everyone_whose_requests_fit() {
        // get_wait() is requested minus available; give(get_wait()) is the documented idiom.
        let mut s = sema(10.0, 1.0, &[(A, 2.0), (B, 3.0), (C, 4.0)]);
        let waiting = |t: TaskRef| t != C;
        assert_eq!(s.wait(waiting), 4.0, "C left: 2 + 3 - 1");
        assert_eq!(give(&mut s, 4.0, waiting), vec![A, B]);
        assert_eq!(s.count(), 0.0);
        assert_eq!(s.wait(waiting), 0.0);
        s.set_count(6.0);
        assert_eq!(s.wait(waiting), -6.0, "more available than requested");
    }

    #[test]
    fn the_count_goes_back_to_lua_only_when_nobody_waits() {
        let s = sema(10.0, 2.0, &[(A, 5.0), (B, 5.0)]);
        assert_eq!(s.released(all), None);
        assert_eq!(s.released(|t| t == B), None);
        assert_eq!(s.released(|_| false), Some(2.0));
        assert_eq!(sema(10.0, 7.0, &[]).released(all), Some(7.0));
    }

    #[test]
    fn a_stale_semaphore_id_never_hits_a_reused_slot() {
        let mut sems = Semaphores::default();
        let key = sems.insert(1, 10.0, 0.0);
        sems.get(key, 1).unwrap().enqueue(A, 1.0);
        assert!(sems.get(key, 2).is_none());
        assert!(
            sems.remove(key, 2).is_empty(),
            "a wrong generation removes nothing"
        );
        assert_eq!(sems.remove(key, 1), vec![A]);
        // The slot is reused with a new generation: the old id finds nothing there.
        let again = sems.insert(2, 5.0, 3.0);
        assert_eq!(again, key);
        assert!(sems.get(key, 1).is_none());
        assert!(sems.remove(key, 1).is_empty());
        assert_eq!(sems.get(key, 2).map(|s| s.count()), Some(3.0));
    }

    #[test]
    fn removing_a_semaphore_returns_its_whole_line_in_order() {
        // Including waiters that left: the caller checks which still wait ("destroyed").
        let mut sems = Semaphores::default();
        let key = sems.insert(4, 10.0, 0.0);
        let s = sems.get(key, 4).unwrap();
        s.enqueue(B, 1.0);
        s.enqueue(A, 20.0);
        s.enqueue(C, 1.0);
        assert_eq!(sems.remove(key, 4), vec![B, A, C]);
        assert!(sems.get(key, 4).is_none());
    }

    #[test]
    fn a_task_that_left_and_queues_again_is_granted_once_for_its_latest_request() {
        // A waits for 5; B's take(3) timed out behind A, and the scheduler took its entry out
        // (`leave`); B takes 2 and queues again. Once in line, B must be granted once, for 2.
        let mut s = sema(10.0, 0.0, &[(A, 5.0), (B, 3.0)]);
        s.leave(B);
        s.enqueue(B, 2.0);
        assert_eq!(s.wait(all), 7.0, "5 for A and 2 for B are waited for");
        assert_eq!(give(&mut s, 10.0, all), vec![A, B]);
        assert_eq!(s.count(), 3.0);
    }

    #[test]
    fn leaving_the_line_keeps_the_others_in_order() {
        let mut s = sema(10.0, 0.0, &[(A, 1.0), (B, 1.0), (C, 1.0)]);
        s.leave(B);
        s.leave(B); // a second time: nothing left to take out
        assert_eq!(give(&mut s, 2.0, all), vec![A, C]);
    }

    use crate::test_rng::Rng;

    #[test]
    fn random_takes_gives_and_departures_keep_the_line_honest() {
        // Invariants after every operation, whatever the sequence:
        // - no resource is created or lost: handed out + available = start + given (after cap);
        // - a waiter is granted at most once, only while it waits, and in queue order;
        // - no waiting head is left that the count would cover (nobody waits needlessly);
        // - the count never exceeds max after a give.
        for seed in 1..=200u64 {
            let mut rng = Rng(seed * 0x9E37_79B9_7F4A_7C15);
            let max = (1 + rng.below(10)) as f64;
            let mut s = sema(max, 0.0, &[]);
            let mut left: HashSet<TaskRef> = HashSet::new();
            let mut granted_ever: HashSet<TaskRef> = HashSet::new();
            let mut queued: Vec<(TaskRef, f64)> = Vec::new();
            let mut handed_out = 0.0;
            let mut supplied = 0.0;
            for step in 0..300 {
                let task = (step, seed as u32);
                let waiting = |t: TaskRef| !left.contains(&t) && !granted_ever.contains(&t);
                let mut granted = Vec::new();
                let before = s.count();
                match rng.below(4) {
                    0 => {
                        let requested = rng.below(max as u64 + 2) as f64;
                        match s.take(requested, waiting, &mut granted) {
                            Take::Granted => handed_out += requested,
                            Take::Wait => {
                                s.enqueue(task, requested);
                                queued.push((task, requested));
                            }
                            Take::TooMany => assert!(requested > max, "seed {seed}"),
                        }
                    }
                    1 | 2 => {
                        let amount = rng.below(4) as f64;
                        s.give(amount, waiting, &mut granted);
                        supplied += (before + amount).min(max) - before;
                        assert!(s.count() <= max, "seed {seed}");
                    }
                    _ => {
                        // Somebody in line times out; the scheduler then serves the line,
                        // which this waiter alone may have held up.
                        if !queued.is_empty() {
                            let i = rng.below(queued.len() as u64) as usize;
                            left.insert(queued[i].0);
                            let waiting =
                                |t: TaskRef| !left.contains(&t) && !granted_ever.contains(&t);
                            s.serve(waiting, &mut granted);
                        }
                    }
                }
                let mut order = Vec::new();
                for t in &granted {
                    assert!(!left.contains(t), "seed {seed}: granted after leaving");
                    assert!(granted_ever.insert(*t), "seed {seed}: granted twice");
                    let (i, &(_, requested)) =
                        queued.iter().enumerate().find(|(_, q)| q.0 == *t).unwrap();
                    order.push(i);
                    handed_out += requested;
                }
                assert!(order.windows(2).all(|w| w[0] < w[1]), "seed {seed}: order");
                assert_eq!(handed_out + s.count(), supplied, "seed {seed}: accounting");
                let waiting = |t: TaskRef| !left.contains(&t) && !granted_ever.contains(&t);
                if let Some(&(_, requested)) = queued.iter().find(|q| waiting(q.0)) {
                    assert!(requested > s.count(), "seed {seed}: a head that fits waits");
                }
            }
        }
    }
}
