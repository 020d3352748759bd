//! What `copas.status()` reports: the task counts and the step statistics (the socket counts
//! are in `readiness.rs`, the timer count in `timeouts.rs`).

use mlua::Table;

use crate::core::Core;

impl Core {
    /// (ready, sleeping, forever): the task counts behind `copas.status()`.
    pub fn counts(&self) -> (usize, usize, usize) {
        self.sweep_collected_forever(true);
        self.with_sched(|s| (s.ready.len(), s.sleeping, s.forever))
    }

    pub fn set_stats(&self, on: bool) {
        self.with_sched(|s| s.stats.set_enabled(on));
    }

    pub fn stats_enabled(&self) -> bool {
        self.with_sched(|s| s.stats.enabled())
    }

    pub fn take_stats(&self, out: &Table) -> mlua::Result<()> {
        let fields = self.with_sched(|s| s.stats.take_fields());
        for (name, value) in fields.into_iter().flatten() {
            out.raw_set(name, value)?;
        }
        Ok(())
    }
}
