//! Tasks waiting on semaphores: the scheduler's side of the waiting lines of `semaphore.rs`.
//! A grant, a timeout or a destroy ends the wait, and the task's yield returns GRANTED,
//! TIMED_OUT or DESTROYED. A waiter made ready by a grant is revived from the weak table before
//! anything else can happen (`Core::revive_woken`).

use mlua::Thread;
use slab::Slab;

use crate::core::{Core, Sched};
use crate::protocol::{DESTROYED, GRANTED};
use crate::semaphore::{Semaphore, Take};
use crate::tasks::{pack, unpack, Task, TaskRef, Wait};

/// Whether `task` (still) waits in the line of semaphore `id`.
pub(crate) fn waits_for_semaphore(tasks: &Slab<Task>, (key, gen): TaskRef, id: i64) -> bool {
    matches!(tasks.get(key), Some(t) if t.gen == gen
        && matches!(t.wait, Wait::Semaphore { id: i, .. } if i == id))
}

impl Sched {
    /// Runs `op` on semaphore `id` (None when it is gone); the waiters it grants end their wait.
    pub(crate) fn on_semaphore<R>(
        &mut self,
        id: i64,
        op: impl FnOnce(&mut Semaphore, &dyn Fn(TaskRef) -> bool, &mut Vec<TaskRef>) -> R,
    ) -> Option<R> {
        let (key, gen) = unpack(id);
        let Sched {
            tasks,
            semaphores,
            granted,
            ..
        } = self;
        let sema = semaphores.get(key, gen)?;
        let waiting = |task| waits_for_semaphore(tasks, task, id);
        let r = op(sema, &waiting, granted);
        let mut granted = std::mem::take(&mut self.granted);
        for &(key, _) in &granted {
            self.end_wait(key, GRANTED);
        }
        granted.clear();
        self.granted = granted; // kept for its capacity
        Some(r)
    }

    /// A waiter left the line of semaphore `id` without a grant (timed out, removed): its
    /// entry goes (a task that queues again must not stand in line twice), and the line is
    /// served, since this waiter may have held up those behind it.
    pub(crate) fn left_line(&mut self, id: i64, task: TaskRef) {
        self.on_semaphore(id, |sema, waiting, granted| {
            sema.leave(task);
            sema.serve(waiting, granted);
        });
    }

    /// OP_SEMAPHORE: the task waits in the line of semaphore `id` for `requested` resources, at
    /// most `timeout` seconds; `count` is what the Lua side kept while nobody waited. A gone
    /// semaphore ends the wait at once with DESTROYED.
    pub(crate) fn wait_in_line(
        &mut self,
        key: usize,
        id: Option<f64>,
        requested: Option<f64>,
        timeout: Option<f64>,
        count: Option<f64>,
    ) -> bool {
        let (Some(id), Some(requested)) = (id, requested) else {
            return false;
        };
        let id = id as i64;
        let at = timeout.and_then(|t| self.deadlines.deadline_after(t));
        let gen = self.tasks[key].gen;
        let queued = self.on_semaphore(id, |sema, _, _| {
            if let Some(count) = count {
                sema.set_count(count);
            }
            sema.enqueue((key, gen), requested)
        });
        if queued.is_none() {
            self.end_wait(key, DESTROYED);
            return true;
        }
        self.tasks[key].wait = Wait::Semaphore { id, at };
        self.forever += 1;
        self.timed_waits += usize::from(at.is_some());
        self.push_deadline(key, at);
        true
    }
}

impl Core {
    /// `copas.semaphore.new`: a semaphore of `max` resources holding `start`; returns its id.
    pub fn semaphore_new(&self, max: f64, start: f64) -> mlua::Result<i64> {
        self.with_sched(|s| {
            let gen = s.next_gen();
            let key = s.semaphores.insert(gen, max, start);
            let id = pack(key, gen);
            if id.is_err() {
                s.semaphores.remove(key, gen);
            }
            id
        })
    }

    /// `take(requested)` without waiting: granted, too many, or the caller waits in line
    /// (OP_SEMAPHORE); and the count if no waiter is left (`Semaphore::released`). None when
    /// the semaphore is gone.
    pub fn semaphore_take(&self, id: i64, requested: f64) -> Option<(Take, Option<f64>)> {
        let take = self.with_sched(|s| {
            s.on_semaphore(id, |sema, waiting, granted| {
                (
                    sema.take(requested, waiting, granted),
                    sema.released(waiting),
                )
            })
        });
        self.revive_woken();
        take
    }

    /// `give(amount)`: false when capped at the maximum ("too many"); and the count if no
    /// waiter is left. None when the semaphore is gone.
    pub fn semaphore_give(&self, id: i64, amount: f64) -> Option<(bool, Option<f64>)> {
        let give = self.with_sched(|s| {
            s.on_semaphore(id, |sema, waiting, granted| {
                (sema.give(amount, waiting, granted), sema.released(waiting))
            })
        });
        self.revive_woken();
        give
    }

    /// Gives one resource to the first thread still waiting in the line of semaphore `id`, and
    /// returns its coroutine; gives nothing and returns None when nobody waits. (A lock hands
    /// itself over this way: its new owner is known before it runs.)
    pub fn semaphore_hand_over(&self, id: i64) -> Option<Thread> {
        let granted = self.with_sched(|s| {
            s.on_semaphore(id, |sema, waiting, granted| {
                sema.give(1.0, waiting, granted);
                let first = granted.first().copied();
                if first.is_none() {
                    sema.set_count(0.0);
                }
                first
            })
        });
        self.revive_woken();
        let (key, _) = granted.flatten()?;
        self.store.threads.raw_get::<Thread>(key).ok()
    }

    /// (count, resources waited for minus count, whether no waiter is left) of a semaphore;
    /// None when it is gone.
    pub fn semaphore_counts(&self, id: i64) -> Option<(f64, f64, bool)> {
        self.with_sched(|s| {
            s.on_semaphore(id, |sema, waiting, _| {
                (
                    sema.count(),
                    sema.wait(waiting),
                    sema.released(waiting).is_some(),
                )
            })
        })
    }

    /// Forgets a semaphore. `destroyed`: its waiters' takes return "destroyed" (otherwise its
    /// Lua object was collected, and so were they, or they wait for their timeout).
    pub fn semaphore_remove(&self, id: i64, destroyed: bool) {
        let (key, gen) = unpack(id);
        self.with_sched(|s| {
            let line = s.semaphores.remove(key, gen);
            if destroyed {
                for task in line {
                    if waits_for_semaphore(&s.tasks, task, id) {
                        s.end_wait(task.0, DESTROYED);
                    }
                }
            }
        });
        self.revive_woken();
    }
}
