//! Threads that sleep until woken (`pauseforever`, a lock or semaphore wait without timeout),
//! and the idle garbage collection.
//!
//! Upstream keeps forever-sleepers in a weak set, so an abandoned one can be collected; programs
//! and upstream's tests rely on that. Here a sleeper's coroutine stays in the strong table while
//! short waits come and go (no table traffic), and moves to the weak one once it has slept for a
//! second (checked at most once a second) or when the loop finishes. A wake-up moves it back
//! (`Core::revive_woken`). Slept-through coroutines that were collected are swept from the task
//! table when the set has doubled since the last sweep.

use std::time::Duration;

use mlua::Lua;

use crate::core::Core;

/// A wait at least this long (with nothing happening) counts as idle.
pub(crate) const IDLE_WAIT: Duration = Duration::from_millis(100);

/// Idle collections are at least this far apart.
const IDLE_GC_INTERVAL: Duration = Duration::from_secs(1);

impl Core {
    /// Frees tasks whose forever-sleeping coroutine was garbage collected. Runs when the set has
    /// doubled since the last sweep (or when asked), so its cost stays linear overall.
    pub(crate) fn sweep_collected_forever(&self, always: bool) {
        let mut s = self.sched.borrow_mut();
        if s.forever == 0 || (!always && s.forever < 2 * s.forever_at_sweep + 64) {
            return;
        }
        let asleep: Vec<usize> = s
            .tasks
            .iter()
            .filter(|(_, t)| t.weak)
            .map(|(k, _)| k)
            .collect();
        for key in asleep {
            if self.slots.collected(key) {
                s.remove_task(key);
            }
        }
        s.forever_at_sweep = s.forever;
    }

    /// Moves forever-sleepers from the strong to the weak table: all of them, or those asleep
    /// for more than a second (checked at most once a second).
    pub(crate) fn demote(&self, all: bool) {
        const SECOND: u64 = 1_000_000_000;
        let keys: Vec<usize> = {
            let mut s = self.sched.borrow_mut();
            let now = s.step_now;
            if !all && now.saturating_sub(s.last_demotion) < SECOND {
                return;
            }
            s.last_demotion = now;
            s.tasks
                .iter()
                .filter(|(_, t)| {
                    t.wait.is_forever() && !t.weak && (all || now.saturating_sub(t.since) >= SECOND)
                })
                .map(|(k, _)| k)
                .collect()
        };
        for key in keys {
            // Each move is checked again: a finalizer run by an earlier one may have woken,
            // removed or replaced any of these tasks.
            if self.is_strong_forever_sleeper(key) {
                self.slots.demote(key);
                self.with_sched(|s| {
                    if let Some(t) = s.tasks.get_mut(key) {
                        t.weak = true;
                    }
                });
            }
        }
    }

    pub(crate) fn is_strong_forever_sleeper(&self, key: usize) -> bool {
        self.with_sched(|s| matches!(s.tasks.get(key), Some(t) if t.wait.is_forever() && !t.weak))
    }

    /// A full collection when the loop idles, at most once a second. Upstream collects on 10% of
    /// its idle steps; programs rely on it to close sockets they dropped without closing (whose
    /// peers wait for "closed"), and it empties weak tables.
    pub(crate) fn collect_garbage_when_idle(&self, lua: &Lua) {
        let due = self.with_sched(|s| {
            let now = s.deadlines.now();
            let due = now.saturating_sub(s.last_idle_gc) >= IDLE_GC_INTERVAL.as_nanos() as u64;
            if due {
                s.last_idle_gc = now;
            }
            due
        });
        if due {
            let _ = lua.gc_collect();
        }
    }
}
