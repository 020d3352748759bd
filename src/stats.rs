//! `copas.status(true)`: step duration statistics, collected around every wait of the loop.
//!
//! Field names, the reset-on-read behaviour and the rounding follow Copas 4.11 (§7 of the
//! behaviour document): durations in milliseconds rounded to 1 µs, times in seconds rounded to
//! 1 ms, all from the wall clock.

use std::time::{SystemTime, UNIX_EPOCH};

use mlua::Value;

pub fn epoch_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

struct Record {
    steps: u64,
    duration_min: f64,
    duration_max: f64,
    duration_tot: f64,
    time_start: Option<f64>,
    step_start: f64,
}

#[derive(Default)]
pub struct Stats {
    enabled: bool,
    record: Option<Record>,
    min_ever: Option<f64>,
    max_ever: Option<f64>,
}

impl Stats {
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Switches collection on (resetting everything) or off.
    pub fn set_enabled(&mut self, on: bool) {
        if on && !self.enabled {
            *self = Stats {
                enabled: true,
                ..Stats::default()
            };
        } else if !on {
            self.enabled = false;
        }
    }

    /// Called before the loop waits: the time since the previous wait ended was spent running tasks.
    pub fn before_wait(&mut self) {
        let now = epoch_seconds();
        match &mut self.record {
            Some(r) => {
                let d = now - r.step_start;
                r.duration_max = r.duration_max.max(d);
                r.duration_min = r.duration_min.min(d);
                r.duration_tot += d;
                r.steps += 1;
            }
            None => {
                self.record = Some(Record {
                    steps: 0,
                    duration_min: 999999.0,
                    duration_max: -1.0,
                    duration_tot: 0.0,
                    time_start: None,
                    step_start: now,
                })
            }
        }
    }

    pub fn after_wait(&mut self) {
        if let Some(r) = &mut self.record {
            let now = epoch_seconds();
            r.time_start.get_or_insert(now);
            r.step_start = now;
        }
    }

    /// The finished record's fields, for `copas.status(true)` (None when stats were not
    /// recorded). The caller writes them into Lua, which allocates: a finalizer may then call
    /// into the core, so nothing may be borrowed meanwhile.
    pub fn take_fields(&mut self) -> Option<Vec<(&'static str, Value)>> {
        let r = self.record.take()?;
        let min_ever = self.min_ever.unwrap_or(9999999.0).min(r.duration_min);
        let max_ever = self.max_ever.unwrap_or(0.0).max(r.duration_max);
        self.min_ever = Some(min_ever);
        self.max_ever = Some(max_ever);
        let time_start = r.time_start.unwrap_or(r.step_start);
        let time_end = epoch_seconds();
        let time_tot = time_end - time_start;
        let steps = r.steps as f64;
        let number = Value::Number;
        Some(vec![
            ("steps", Value::Integer(r.steps as _)),
            ("duration_min", number(millis(r.duration_min))),
            ("duration_max", number(millis(r.duration_max))),
            ("duration_tot", number(millis(r.duration_tot))),
            ("duration_avg", number(millis(r.duration_tot / steps))),
            ("duration_min_ever", number(millis(min_ever))),
            ("duration_max_ever", number(millis(max_ever))),
            ("time_start", number(seconds(time_start))),
            ("time_end", number(seconds(time_end))),
            ("time_tot", number(seconds(time_tot))),
            ("time_avg", number(millis(time_tot / steps))),
        ])
    }
}

/// Seconds to milliseconds, rounded to the microsecond.
fn millis(t: f64) -> f64 {
    (t * 1_000_000.0 + 0.5).floor() / 1000.0
}

/// Seconds rounded to the millisecond.
fn seconds(t: f64) -> f64 {
    (t * 1000.0 + 0.5).floor() / 1000.0
}
