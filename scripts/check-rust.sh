#!/usr/bin/env bash
# Checks that a Rust toolchain is reachable, and says how to get one when it is not.
# Usage: scripts/check-rust.sh [--lint]   (--lint also requires rustfmt and clippy)
set -u
PATH="$PATH:${HOME:-/root}/.cargo/bin"

if ! command -v cargo >/dev/null 2>&1; then
  cat >&2 <<'MSG'
error: cargo (the Rust toolchain) was not found on PATH or in ~/.cargo/bin.
copas-rs builds its core with cargo (a recent stable Rust). Install it with rustup:
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
    . "$HOME/.cargo/env"
then run the command again. (Debian 12's own `cargo` package (Rust 1.63) is too old for mlua 0.12.)
MSG
  exit 1
fi

if [ "${1:-}" = "--lint" ]; then
  missing=""
  cargo fmt --version >/dev/null 2>&1 || missing="$missing rustfmt"
  cargo clippy --version >/dev/null 2>&1 || missing="$missing clippy"
  if [ -n "$missing" ]; then
    echo "error: the Rust toolchain lacks:$missing. Add with: rustup component add$missing" >&2
    exit 1
  fi
fi
exit 0
