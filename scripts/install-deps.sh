#!/usr/bin/env bash
# Installs the Debian packages copas-rs needs to build and test, only those that are missing.
# Usage: scripts/install-deps.sh [--lint]
# Non-interactive; works as root (CI) and through sudo otherwise. On a system without apt-get
# it only reports what is missing.
set -u

PACKAGES=(
  lua5.1 lua5.2 lua5.3 lua5.4 luajit       # the five runtimes
  lua-socket lua-sec lua-coxpcall           # what copas programs and upstream's tests use
  lua-system lua-term lua-busted            # busted and its C modules (for every version)
  lua-check lua-ldoc                        # make lint (luacheck), make docs (ldoc)
  luarocks                                  # the rock install test; luarocks insists on
  liblua5.1-0-dev liblua5.2-dev liblua5.3-dev liblua5.4-dev libluajit-5.1-dev  # lua.h to build
  libssl-dev pkg-config gcc make            # TLS in the core, linking the cdylib
  coreutils                                 # timeout
  iproute2 util-linux openssl               # the DNS spec's namespaces; test certificates
)

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "deps: not a Debian system; install the equivalents of these yourself: ${PACKAGES[*]}"
  exec "$(dirname "$0")/check-rust.sh" "$@"
fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all ${#PACKAGES[@]} Debian packages present"
else
  echo "deps: installing ${missing[*]}"
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "deps: apt-get not found; install these yourself: ${missing[*]}" >&2
    exit 1
  fi
  if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
  elif command -v sudo >/dev/null 2>&1; then
    if [ -t 0 ]; then SUDO=(sudo); else SUDO=(sudo -n); fi   # never prompt without a terminal
  else
    echo "deps: not root and no sudo; install these yourself: ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -q </dev/null || { echo "deps: apt-get update failed" >&2; exit 1; }
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${missing[@]}" </dev/null || { echo "deps: apt-get install failed" >&2; exit 1; }
fi

# Rust is not a Debian package here (Debian 12's is too old): check, and explain if absent.
# `--lint` (make test) also requires rustfmt and clippy.
exec "$(dirname "$0")/check-rust.sh" "$@"
