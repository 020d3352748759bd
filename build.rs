//! Build script for copas-core.
//!
//! mlua links against exactly one Lua runtime, chosen by a cargo feature. Building with none
//! (a plain `cargo build`) or with several fails deep inside mlua-sys with a message that does
//! not say what to do, so this script checks the choice first and explains it. It also tells
//! the crate which runtime it was built for (`COPAS_LUA_RUNTIME`, e.g. "lua54"), so that the
//! module can report it.

use std::env;
use std::process;

/// The runtime features of Cargo.toml, with the interpreter each one is for.
const RUNTIMES: &[(&str, &str)] = &[
    ("lua51", "Lua 5.1"),
    ("lua52", "Lua 5.2"),
    ("lua53", "Lua 5.3"),
    ("lua54", "Lua 5.4"),
    ("luajit", "LuaJIT"),
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=Cargo.toml");

    let enabled: Vec<&str> = RUNTIMES
        .iter()
        .map(|(feature, _)| *feature)
        .filter(|feature| {
            env::var_os(format!("CARGO_FEATURE_{}", feature.to_uppercase())).is_some()
        })
        .collect();

    match enabled.as_slice() {
        [feature] => {
            println!("cargo:rustc-env=COPAS_LUA_RUNTIME={feature}");
        }
        [] => fail("no Lua runtime feature is enabled."),
        several => fail(&format!(
            "{} Lua runtime features are enabled ({}); copas-core links against exactly one.",
            several.len(),
            several.join(", ")
        )),
    }
}

fn fail(problem: &str) -> ! {
    let choices: Vec<String> = RUNTIMES
        .iter()
        .map(|(feature, name)| format!("    {feature:<7} {name}"))
        .collect();
    eprintln!();
    eprintln!("error: copas-core: {problem}");
    eprintln!();
    eprintln!(
        "Build once per Lua runtime, choosing exactly one feature, each in its own target dir:"
    );
    eprintln!("    cargo build --release --features lua54 --target-dir target/lua54");
    eprintln!("or let the Makefile do it and assemble a ready tree under build/:");
    eprintln!(
        "    make build LUA=5.4      (LUA = 5.1, 5.2, 5.3, 5.4 or jit; no LUA builds all five)"
    );
    eprintln!();
    eprintln!("Features:");
    for line in choices {
        eprintln!("{line}");
    }
    eprintln!();
    process::exit(1);
}
