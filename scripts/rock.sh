#!/bin/sh
# Build and install steps of rockspecs/copas-rs-scm-1.rockspec (luarocks "command" backend).
#
#   scripts/rock.sh build   <lua interpreter>
#   scripts/rock.sh install <lua interpreter> <LUADIR> <LIBDIR>
#
# The runtime is read off the interpreter luarocks targets (its $(LUA) variable): LuaJIT when
# luarocks is configured for luajit, otherwise the interpreter's _VERSION. The build is
# `make build LUA=<v>`, so a rock install reuses target/<feature> of earlier builds.
set -eu
cd "$(dirname "$0")/.."
PATH="$PATH:${HOME:-/root}/.cargo/bin"; export PATH

step=$1; lua=${2:-}
if [ -z "$lua" ] || ! command -v "$lua" >/dev/null 2>&1; then
  echo "copas-rs rock: luarocks did not name a usable Lua interpreter (got '$lua')" >&2
  exit 1
fi
v=$("$lua" -e 'io.write(jit and "jit" or (_VERSION:match("%d+%.%d+")))')
case "$v" in
  5.1|5.2|5.3|5.4) tree="build/lua$v" ;;
  jit) tree="build/luajit" ;;
  *) echo "copas-rs rock: unsupported Lua runtime '$v' ($lua)" >&2; exit 1 ;;
esac

case "$step" in
  build)
    echo "copas-rs rock: building the core for $v ($lua)"
    make --no-print-directory build LUA="$v"
    ;;
  install)
    luadir=$3; libdir=$4
    test -f "$tree/copas/core.so" || { echo "copas-rs rock: $tree is not built" >&2; exit 1; }
    mkdir -p "$luadir/copas" "$libdir/copas"
    cp "$tree/copas.lua" "$luadir/"
    for f in "$tree"/copas/*.lua; do
      [ -e "$f" ] && cp "$f" "$luadir/copas/"
    done
    cp "$tree/copas/core.so" "$libdir/copas/core.so"
    ;;
  *) echo "usage: $0 build|install <lua> [LUADIR LIBDIR]" >&2; exit 2 ;;
esac
