#!/usr/bin/env bash
# Installs the rock with `luarocks make` into a temporary tree, for each runtime, and runs a
# small Copas loop (and the installed `copas` command) from that tree alone.
#
#   scripts/test-rock.sh [5.1 5.2 5.3 5.4 jit]     (default: all five)
#
# Debian's luarocks targets Lua 5.1 by default; `--lua-version=X` picks another PUC version, and
# for LuaJIT a config file naming the luajit interpreter is used. `--deps-mode=none` is needed
# because Debian's lua-socket and lua-coxpcall are apt packages that luarocks does not know.
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export PATH="$PATH:${HOME:-/root}/.cargo/bin"
ROCKSPEC=rockspecs/copas-rs-scm-1.rockspec

RUNTIMES=("$@")
[ ${#RUNTIMES[@]} -gt 0 ] || RUNTIMES=(5.1 5.2 5.3 5.4 jit)

if ! command -v luarocks >/dev/null 2>&1; then
  echo "luarocks is not installed (apt-get install luarocks)" >&2
  exit 1
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/copas-rock.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cat >"$WORK/luajit-config.lua" <<'EOF'
lua_interpreter = "luajit"
variables = { LUA_BINDIR = "/usr/bin", LUA_INCDIR = "/usr/include/luajit-2.1" }
EOF

# A loop with 20 threads, sleeps of different lengths, a timer and a line echoed by a server
# (the socket modules); prints what it saw.
PROGRAM='
local copas = require("copas")
local socket = require("socket")
local woke, fired, echoed = 0, false, nil
for i = 1, 20 do
  copas.addthread(function() copas.pause(0.005 * (i % 5)) woke = woke + 1 end)
end
copas.timer.new({ delay = 0.02, callback = function() fired = true end })
local server = assert(socket.bind("127.0.0.1", 0))
local _, port = server:getsockname()
copas.addserver(server, copas.handler(function(skt) skt:send(skt:receive() .. "\n") end))
copas.addthread(function()
  local client = copas.wrap(socket.tcp())
  assert(client:connect("127.0.0.1", port))
  client:send("hello\n")
  echoed = client:receive()
  client:close()
  copas.removeserver(server)
end)
copas.loop()
assert(woke == 20, "only " .. woke .. " of 20 threads finished")
assert(fired, "the timer did not fire")
assert(echoed == "hello", "the server echoed " .. tostring(echoed))
print("loop ok: " .. woke .. " threads, timer fired, line echoed, " .. (jit and jit.version or _VERSION))
'

failed=0
for v in "${RUNTIMES[@]}"; do
  tree="$WORK/tree-$v"
  case "$v" in
    jit) lv=5.1; lua=luajit; lr=(env LUAROCKS_CONFIG="$WORK/luajit-config.lua" luarocks --lua-version=5.1) ;;
    *) lv=$v; lua=lua$v; lr=(luarocks --lua-version="$v") ;;
  esac
  echo "--- $lua: ${lr[*]} make --deps-mode=none --tree <tmp> $ROCKSPEC"
  if ! "${lr[@]}" make --deps-mode=none --tree "$tree" "$ROCKSPEC" </dev/null; then
    echo "FAILED: luarocks make for $lua"
    failed=$((failed + 1))
    continue
  fi
  ok=1
  for f in "share/lua/$lv/copas.lua" "lib/lua/$lv/copas/core.so" "bin/copas"; do
    if [ -e "$tree/$f" ]; then echo "installed: $f"; else echo "MISSING: $f"; ok=0; fi
  done
  n=$(ls "$tree/share/lua/$lv/copas/"*.lua 2>/dev/null | wc -l)
  echo "installed: share/lua/$lv/copas/*.lua ($n files)"
  for f in lua/copas/*.lua; do
    [ -e "$tree/share/lua/$lv/copas/${f##*/}" ] || { echo "MISSING: share/lua/$lv/copas/${f##*/}"; ok=0; }
  done

  # Only the temporary tree is on the paths (plus the system defaults for LuaSocket).
  paths=(env -u LUA_PATH_5_2 -u LUA_PATH_5_3 -u LUA_PATH_5_4 -u LUA_CPATH_5_2 -u LUA_CPATH_5_3 -u LUA_CPATH_5_4
    LUA_PATH="$tree/share/lua/$lv/?.lua;$tree/share/lua/$lv/?/init.lua;;"
    LUA_CPATH="$tree/lib/lua/$lv/?.so;;")
  if (cd "$WORK" && "${paths[@]}" timeout 60 "$lua" -e "$PROGRAM" </dev/null); then :; else
    echo "FAILED: the loop from the installed rock ($lua)"; ok=0
  fi
  out=$(cd "$WORK" && "${paths[@]}" timeout 60 "$tree/bin/copas" -e 'copas.pause(0.01) print("copas command ok: " .. (jit and jit.version or _VERSION))' </dev/null 2>&1)
  echo "$out"
  case "$out" in *"copas command ok"*) ;; *) echo "FAILED: the installed copas command ($lua)"; ok=0 ;; esac
  [ $ok -eq 1 ] || failed=$((failed + 1))
done

if [ $failed -gt 0 ]; then
  echo "rock test: $failed of ${#RUNTIMES[@]} runtimes failed"
  exit 1
fi
echo "rock test: ok on ${RUNTIMES[*]}"
