//! The hooks through which the core calls back into the shim (a task's error, a task's end,
//! accepting on a server), and `copas.debug` tracing. A hook runs with nothing borrowed.

use mlua::{Function, Thread};

use crate::core::Core;

/// The Lua functions the shim hands the core.
#[derive(Default)]
pub(crate) struct Hooks {
    /// `f(err, co)`: a task raised, or yielded outside copas.
    pub(crate) on_error: Option<Function>,
    /// `f(co)`: a task that asked for it (`watch_exit`) ended.
    pub(crate) on_exit: Option<Function>,
    /// `f(fd)`: accept one connection on server `fd` (returns a `protocol::ACCEPTED`... code).
    pub(crate) on_accept: Option<Function>,
    /// `f(event, co, op, arg)`: `copas.debug` tracing of resumes and yields.
    pub(crate) tracer: Option<Function>,
    /// Makes the coroutine that runs `copas.timeout` callbacks (see `timeouts.rs`).
    pub(crate) core_timer_factory: Option<Function>,
    pub(crate) core_timer: Option<Thread>,
}

impl Core {
    pub fn set_error_hook(&self, f: Option<Function>) {
        self.hooks.borrow_mut().on_error = f;
    }

    pub fn set_exit_hook(&self, f: Option<Function>) {
        self.hooks.borrow_mut().on_exit = f;
    }

    pub fn set_tracer(&self, f: Option<Function>) {
        self.hooks.borrow_mut().tracer = f;
    }

    pub fn set_accept_hook(&self, f: Option<Function>) {
        self.hooks.borrow_mut().on_accept = f;
    }

    /// Calls a shim hook. A failing hook (an error handler whose own reporting fails) must
    /// not stop the loop, so its error only goes to stderr.
    pub(crate) fn call_hook(
        &self,
        pick: impl Fn(&Hooks) -> Option<Function>,
        args: impl mlua::IntoLuaMulti,
    ) {
        let hook = pick(&self.hooks.borrow());
        if let Some(hook) = hook {
            if let Err(e) = hook.call::<()>(args) {
                let text = e.to_string();
                let first = text.lines().next().unwrap_or_default();
                eprintln!("copas: error while reporting a thread's error: {first}");
            }
        }
    }

    pub(crate) fn tracing(&self) -> bool {
        self.hooks.borrow().tracer.is_some()
    }

    pub(crate) fn trace_task(&self, event: &str, key: usize, wait: Option<(i64, Option<f64>)>) {
        if let Ok(co) = self.store.threads.raw_get::<Thread>(key) {
            self.trace(event, &co, wait);
        }
    }

    pub(crate) fn trace(&self, event: &str, co: &Thread, wait: Option<(i64, Option<f64>)>) {
        let tracer = self.hooks.borrow().tracer.clone();
        if let Some(tracer) = tracer {
            let (op, arg) = wait.map_or((None, None), |(op, arg)| (Some(op), arg));
            let _ = tracer.call::<()>((event, co.clone(), op, arg));
        }
    }
}
