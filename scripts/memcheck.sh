#!/usr/bin/env bash
# `make memcheck`: the socket specs under valgrind's memcheck, one busted process per spec file,
# on one runtime (default 5.4) with its tree from build/ (it does not build).
#
#   scripts/memcheck.sh [5.4] [spec/file_spec.lua ...]
#
# Fails on any memcheck error (invalid read or write, uninitialised value, bad free, ...) and on
# "definitely lost" blocks allocated under copas/core.so; other leaks (the interpreter, LuaSocket,
# busted) are reported, not failed on. Logs are in build/memcheck/. Not part of `make test`: it
# takes minutes.
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)

v=${1:-5.4}; shift || true
case $v in jit) lua=luajit ;; *) lua="lua$v" ;; esac
SPECS=("$@")
[ ${#SPECS[@]} -gt 0 ] || SPECS=(spec/receive_spec.lua spec/send_spec.lua spec/close_spec.lua
  spec/server_spec.lua spec/udp_spec.lua spec/wrap_spec.lua)
tree="$ROOT/build/$lua"
[ -f "$tree/copas/core.so" ] || { echo "memcheck: $tree is missing (make build LUA=$v)" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "memcheck: valgrind is not installed" >&2; exit 2; }
# busted's --lua would exec a fresh interpreter outside valgrind: run its script with ours.
BUSTED=$(command -v busted) || { echo "memcheck: busted is not installed" >&2; exit 2; }
LOGDIR="$ROOT/build/memcheck"
rm -rf "$LOGDIR"; mkdir -p "$LOGDIR"

total_errors=0 core_lost=0 all_lost=0 failed=0
for spec in "${SPECS[@]}"; do
  name=$(basename "$spec" .lua)
  log="$LOGDIR/$name.valgrind"
  start=$(date +%s)
  # Leaks are judged below per block, by where they were allocated, not by the exit code.
  env -u LUA_PATH_5_2 -u LUA_PATH_5_3 -u LUA_PATH_5_4 -u LUA_CPATH_5_2 -u LUA_CPATH_5_3 \
    -u LUA_CPATH_5_4 LUA_PATH="$tree/?.lua;$tree/?/init.lua;;" LUA_CPATH="$tree/?.so;;" \
    timeout -k 10 1800 valgrind --tool=memcheck --error-exitcode=99 --leak-check=full \
      --show-leak-kinds=definite --errors-for-leak-kinds=none --num-callers=30 \
      --log-file="$log" "$lua" "$BUSTED" -o TAP "$spec" </dev/null >"$LOGDIR/$name.tap" 2>&1
  rc=$?
  errors=$(sed -nE 's/.*ERROR SUMMARY: ([0-9,]+) errors.*/\1/p' "$log" | tr -d , | tail -n 1)
  lost=$(sed -nE 's/.*definitely lost: ([0-9,]+) bytes.*/\1/p' "$log" | tr -d , | tail -n 1)
  # The bytes of each "definitely lost" record whose allocation stack passes through core.so.
  ours=$(awk '
    /definitely lost in/ { rec = 1; bytes = $2; gsub(/,/, "", bytes); n = 0; ours = 0; next }
    rec && /core\.so|copas_core/ { ours = 1 }
    rec && /^==[0-9]+== *$/ { if (ours) sum += bytes; rec = 0 }
    END { print sum + 0 }' "$log")
  tests=$(grep -cE '^ok [0-9]+' "$LOGDIR/$name.tap"); notok=$(grep -cE '^not ok [0-9]+' "$LOGDIR/$name.tap")
  printf 'memcheck: %-26s %3d errors, %7d bytes definitely lost (%d under core.so); busted %d ok, %d not ok, rc %d, %ds\n' \
    "$name" "${errors:-0}" "${lost:-0}" "$ours" "$tests" "$notok" "$rc" $(( $(date +%s) - start ))
  total_errors=$((total_errors + ${errors:-0})); all_lost=$((all_lost + ${lost:-0}))
  core_lost=$((core_lost + ours))
  # No summary at all means valgrind or the interpreter died: a failure too.
  if [ -z "$errors" ] || [ "${errors:-0}" -gt 0 ] || [ "$ours" -gt 0 ]; then failed=1; fi
done
echo "memcheck: $lua, ${#SPECS[@]} spec files: $total_errors errors, $all_lost bytes definitely lost," \
  "$core_lost of them under copas/core.so; logs in build/memcheck/"
exit "$failed"
