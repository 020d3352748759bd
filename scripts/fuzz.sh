#!/usr/bin/env bash
# `make fuzz`: runs the seeded fuzzer (fuzz/gen.lua writes programs, fuzz/env.lua runs them)
# against the trees in build/ (it does not build: `make build` first).
#
#   scripts/fuzz.sh [-s SEED] [-n CALLS] [5.1 5.2 5.3 5.4 jit]...
#
# CALLS per runtime (default 10000) are cut into chunks of FUZZ_CHUNK calls (default 500), each
# in its own interpreter process under `timeout` (FUZZ_TIMEOUT seconds, default 20), so that a
# crash or a hang is pinned on one chunk and, through its progress lines, on one call.
# Findings: crashes (a signal or an abnormal exit), Rust panics on stderr, hangs (the process
# outlived its limit) and messages in Rust or mlua wording. Each distinct one is printed once
# with a reproducer, cut down to the shortest program that still shows it. Exits 1 if any.
# Work files are in build/fuzz/<interpreter>/.
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)

SEED=1
CALLS=10000
while getopts "s:n:" opt; do
  case $opt in
    s) SEED=$OPTARG ;;
    n) CALLS=$OPTARG ;;
    *) echo "usage: $0 [-s SEED] [-n CALLS] [runtime]..." >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
RUNTIMES=("$@")
[ ${#RUNTIMES[@]} -gt 0 ] || RUNTIMES=(5.1 5.2 5.3 5.4 jit)
CHUNK=${FUZZ_CHUNK:-500}
LIMIT=${FUZZ_TIMEOUT:-20}
JOBS=${FUZZ_JOBS:-2}
MAX_REPORTS=${FUZZ_MAX_REPORTS:-20}   # distinct findings reproduced and printed per runtime

# The fuzzer passes only "localhost", numeric addresses and strings C sees as "" where a host
# name goes. As a second fence, when we may, the programs run in a network namespace of their
# own with only a loopback device, where no query can leave the machine.
SANDBOX=()
if unshare -n true 2>/dev/null && command -v ip >/dev/null; then
  SANDBOX=(unshare -n sh -c 'ip link set lo up && exec "$@"' sandbox)
fi

interp_of() { case "$1" in jit) echo luajit ;; *) echo "lua$1" ;; esac; }

# run_lua <interpreter> <out> <err> <program> [FUZZ_OUT file]: one program, bounded in time.
run_lua() {
  local lua=$1 tree="$ROOT/build/$1" out=$2 err=$3 prog=$4 fout=${5:-/dev/null}
  # LUA_PATH_5_x (even empty) takes precedence over LUA_PATH on 5.2+: unset them.
  # (timeout re-raises a crash's signal; the subshell keeps bash's notice of it off the terminal)
  (env -u LUA_PATH_5_2 -u LUA_PATH_5_3 -u LUA_PATH_5_4 -u LUA_CPATH_5_2 -u LUA_CPATH_5_3 \
    -u LUA_CPATH_5_4 LUA_PATH="$tree/?.lua;$tree/?/init.lua;;" LUA_CPATH="$tree/?.so;;" \
    FUZZ_OUT="$fout" FUZZ_STUCK_AFTER=$((LIMIT * 3 / 4)) "${SANDBOX[@]}" timeout -k 5 "$LIMIT" "$lua" "$prog" </dev/null >"$out" 2>"$err"; exit $?) 2>/dev/null
}

gen() { # gen <interpreter> <chunk> [mode args...]: the program on stdout
  local lua=$1 tree="$ROOT/build/$1" chunk=$2; shift 2
  env -u LUA_PATH_5_2 -u LUA_PATH_5_3 -u LUA_PATH_5_4 -u LUA_CPATH_5_2 -u LUA_CPATH_5_3 \
    -u LUA_CPATH_5_4 LUA_PATH="$tree/?.lua;$tree/?/init.lua;;" LUA_CPATH="$tree/?.so;;" \
    "$lua" "$ROOT/fuzz/gen.lua" "$SEED" "$chunk" "$CHUNK" "$@"
}

run_chunk() { # run_chunk <interpreter> <dir> <chunk>: leaves c<chunk>.{lua,out,err,rc}
  local lua=$1 dir=$2 c=$3
  gen "$lua" "$c" >"$dir/c$c.lua" || { echo 255 >"$dir/c$c.rc"; return; }
  run_lua "$lua" /dev/null "$dir/c$c.err" "$dir/c$c.lua" "$dir/c$c.out"
  echo $? >"$dir/c$c.rc"
}

# findings <stem>: one line per finding of the run that left <stem>.{lua,out,err,rc}:
# "kind<TAB>call<TAB>target<TAB>message".
# The call of a crash, hang or panic is the last one that started.
findings() {
  local stem=$1 rc last target where="" stuck
  rc=$(cat "$stem.rc")
  last=$(grep -E '^B [0-9]+$' "$stem.out" 2>/dev/null | tail -n 1 | cut -d' ' -f2)
  # A finalizer that started and did not end is where the program stopped.
  if tail -n 1 "$stem.out" 2>/dev/null | grep -qE '^G [0-9]+$'; then
    last=$(tail -n 1 "$stem.out" | cut -d' ' -f2); where=" in a __gc finalizer"
  fi
  target_of() { grep -m1 "^C($1, " "$stem.lua" 2>/dev/null | sed -E 's/^C\([0-9]+, "[a-z]+", "([^"]*)".*/\1/'; }
  awk '/^F /{ k=$2; ctx=$3; t=$4; $1=$2=$3=$4=""; sub(/^ +/, ""); printf "nonlua\t%s\t%s\t%s (%s)\n", k, t, $0, ctx }' \
    "$stem.out" 2>/dev/null
  if grep -qE 'panicked at|internal error' "$stem.err"; then
    awk '/^B [0-9]+$/{ k=$2 } /panicked at|internal error/{ print k "\t" $0; exit }' "$stem.err" |
      while IFS=$'\t' read -r k msg; do printf 'panic\t%s\t%s\t%s\n' "${k:-0}" "$(target_of "${k:-0}")" "$msg"; done
  fi
  target=$(target_of "${last:-0}")
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    stuck=$(grep -m1 '^STUCK ' "$stem.err" | cut -c7-600)
    printf 'hang\t%s\t%s\tno end within %ss%s%s\n' "${last:-0}" "$target" "$LIMIT" "$where" \
      "${stuck:+; Lua stack: $stuck}"
  elif [ "$rc" -ge 128 ]; then
    printf 'crash\t%s\t%s\tkilled by signal %d%s%s\n' "${last:-0}" "$target" $((rc - 128)) \
      "$where" "$(grep -qx D "$stem.out" && echo ' after the last call (at exit)')"
  elif [ "$rc" -ne 0 ] || ! grep -qx D "$stem.out"; then
    printf 'crash\t%s\t%s\texit status %d before the end: %s\n' "${last:-0}" "$target" "$rc" \
      "$(grep -v '^B ' "$stem.err" | head -n 1)"
  fi
}

# The same finding, whatever the call number, address or count in its message.
key_of() { printf '%s\t%s\t%s' "$1" "$3" "$(printf '%s' "$4" | sed -E 's/0x[0-9a-f]+/0x#/g; s/[0-9]+/#/g' | cut -c1-160)"; }

# reproduces <interpreter> <dir> <program> <kind> <target> <message key>: does it show again?
reproduces() {
  local lua=$1 dir=$2 prog=$3 kind=$4 target=$5 key=$6 line k t m
  cp "$prog" "$dir/try.lua"
  run_lua "$lua" /dev/null "$dir/try.err" "$dir/try.lua" "$dir/try.out"
  echo $? >"$dir/try.rc"
  while IFS=$'\t' read -r line k t m; do
    [ "$line" = "$kind" ] || continue
    case $kind in
      nonlua|panic) [ "$(key_of "$line" "$k" "$t" "$m")" = "$key" ] && return 0 ;;
      *) return 0 ;;
    esac
  done < <(findings "$dir/try")
  return 1
}

TOTAL_FAIL=0
for v in "${RUNTIMES[@]}"; do
  lua=$(interp_of "$v")
  if [ ! -f "build/$lua/copas/core.so" ]; then
    echo "fuzz: $lua: build/$lua is missing (make build LUA=$v)"; TOTAL_FAIL=1; continue
  fi
  dir="$ROOT/build/fuzz/$lua"
  rm -rf "$dir"; mkdir -p "$dir"
  start=$(date +%s)
  chunks=$(( (CALLS + CHUNK - 1) / CHUNK ))
  for ((c = 0; c < chunks; c++)); do
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
    run_chunk "$lua" "$dir" "$c" &
  done
  wait

  declare -A seen=() count=()
  declare -a order=()
  crashes=0 panics=0 hangs=0 nonlua=0 extra=0
  for ((c = 0; c < chunks; c++)); do
    while IFS=$'\t' read -r kind k target msg; do
      case $kind in crash) crashes=$((crashes + 1)) ;; panic) panics=$((panics + 1)) ;;
        hang) hangs=$((hangs + 1)) ;; nonlua) nonlua=$((nonlua + 1)) ;; esac
      key=$(key_of "$kind" "$k" "$target" "$msg")
      if [ -z "${seen[$key]:-}" ]; then seen[$key]="$c"$'\t'"$k"$'\t'"$msg"; order+=("$key"); fi
      count[$key]=$(( ${count[$key]:-0} + 1 ))
    done < <(findings "$dir/c$c")
  done
  elapsed=$(( $(date +%s) - start ))

  n=0
  for key in "${order[@]}"; do
    n=$((n + 1))
    IFS=$'\t' read -r kind target _ <<<"$key"
    IFS=$'\t' read -r c k msg <<<"${seen[$key]}"
    echo
    echo "fuzz: $lua: finding $n: $kind in $target (${count[$key]}x; first: seed $SEED, chunk $c, call $k)"
    echo "  $msg" | cut -c1-400
    if [ "$n" -gt "$MAX_REPORTS" ]; then echo "  (no reproducer: over FUZZ_MAX_REPORTS=$MAX_REPORTS)"; continue; fi
    # Cut down: the call alone, the last 10 calls, everything up to the call.
    repro="$dir/repro-$n.lua"
    found=""
    for cut in "only $k" "last 10 $k" "upto $k"; do
      # shellcheck disable=SC2086
      gen "$lua" "$c" $cut >"$repro"
      if reproduces "$lua" "$dir" "$repro" "$kind" "$target" "$key"; then found=$cut; break; fi
      # A cut program that fails otherwise is a finding of its own: kept, reported, counted.
      other=$(findings "$dir/try" | grep -vE '^nonlua' | head -n 1)
      if [ -n "$other" ]; then
        extra=$((extra + 1)); cp "$repro" "$dir/repro-$n-other.lua"
        echo "  the cut program ($cut) showed instead: $(printf '%s' "$other" | tr '\t' ' ' | cut -c1-300)"
        echo "    (kept as $dir/repro-$n-other.lua)"
      fi
    done
    if [ -z "$found" ]; then
      cp "$dir/c$c.lua" "$repro"
      echo "  did not show again when re-run; the whole chunk is $repro"
    fi
    echo "  reproducer ($repro; run: LUA_PATH=\"build/$lua/?.lua;;\" LUA_CPATH=\"build/$lua/?.so;;\" $lua $repro):"
    if [ "$(wc -l <"$repro")" -le 40 ]; then sed 's/^/    /' "$repro"; else
      echo "    ($(wc -l <"$repro") lines; the call:)"; grep "^C($k, " "$repro" | sed 's/^/    /'
    fi
  done
  echo "fuzz: $lua: $CALLS calls, $crashes crashes, $panics panics, $hangs hangs," \
    "$nonlua non-Lua-style messages (${#order[@]} distinct findings, $extra more while cutting down;" \
    "seed $SEED, ${elapsed}s)"
  unset seen count order
  [ $((crashes + panics + hangs + nonlua + extra)) -eq 0 ] || TOTAL_FAIL=1
done
exit "$TOTAL_FAIL"
