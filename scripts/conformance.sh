#!/usr/bin/env bash
# `make conformance UPSTREAM=<copas checkout>`: upstream Copas's own tests, run unchanged against
# OUR build on every runtime: the socket-free ones, the socket ones (servers on localhost only)
# and TLS (certificates made here with openssl from upstream's tests/certs scripts). Left out:
# connecttwice, request and httpredirect (they contact the internet), http-timeout (copas.http).
#
#   scripts/conformance.sh <upstream checkout> [5.1 5.2 5.3 5.4 jit]
#
# Each test file is copied alone into a fresh temporary directory, nested so that the
# `../src/?.lua` the tests put first on package.path does not exist: upstream's copas can never
# be picked up. Our build/<runtime> tree comes first on LUA_PATH/LUA_CPATH. Debian's lua-coxpcall
# is installed for 5.1-5.3 only, so /usr/share/lua/5.1/?.lua is a late fallback for the others.
# A test passes when it exits 0 within TEST_TIMEOUT seconds (default 60).
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)

UPSTREAM=${1:?usage: scripts/conformance.sh <upstream copas checkout> [runtimes...]}
shift
UPSTREAM=$(cd "$UPSTREAM" && pwd) || exit 2
RUNTIMES=("$@")
[ ${#RUNTIMES[@]} -gt 0 ] || RUNTIMES=(5.1 5.2 5.3 5.4 jit)
TESTS=(errhandlers exittest future lock loop_starter no_luasocket pause queue removethread
  semaphore timeout_errors timer
  cancelall close exit largetransfer removeserver starve tcptimeout udptimeout tls-sni)
TEST_TIMEOUT=${TEST_TIMEOUT:-90}
LOGDIR="$ROOT/build/conformance"

for t in "${TESTS[@]}"; do
  [ -f "$UPSTREAM/tests/$t.lua" ] || { echo "no $UPSTREAM/tests/$t.lua: not a copas checkout?" >&2; exit 2; }
done

interp_of() { case "$1" in jit) echo luajit ;; *) echo "lua$1" ;; esac; }

rm -rf "$LOGDIR"; mkdir -p "$LOGDIR"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/copas-conformance.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# The TLS tests read tests/certs/*.pem relative to their working directory; upstream ships the
# scripts that make them.
CERTS="$WORK/certs"
cp -r "$UPSTREAM/tests/certs" "$CERTS"
( cd "$CERTS" && for s in rootA rootB serverA serverB clientA clientB; do sh "./$s.sh"; done ) \
  >"$LOGDIR/certs.log" 2>&1 || { echo "making the test certificates failed: $LOGDIR/certs.log" >&2; exit 2; }

passed=0
failed=0
declare -A RESULT=()
for v in "${RUNTIMES[@]}"; do
  lua=$(interp_of "$v")
  tree="$ROOT/build/$lua"
  if [ ! -f "$tree/copas/core.so" ]; then
    echo "build/$lua is not built (make build LUA=$v)" >&2
  fi
  for t in "${TESTS[@]}"; do
    dir="$WORK/$lua/$t/run"   # ../src would be $WORK/$lua/$t/src: never created
    mkdir -p "$dir"
    cp "$UPSTREAM/tests/$t.lua" "$dir/"
    mkdir -p "$dir/tests" && cp -r "$CERTS" "$dir/tests/certs"
    log="$LOGDIR/$lua-$t.log"
    start=$(date +%s%N)
    (
      cd "$dir" &&
      env -u LUA_PATH_5_2 -u LUA_PATH_5_3 -u LUA_PATH_5_4 -u LUA_CPATH_5_2 -u LUA_CPATH_5_3 -u LUA_CPATH_5_4 \
        LUA_PATH="$tree/?.lua;$tree/?/init.lua;;/usr/share/lua/5.1/?.lua" \
        LUA_CPATH="$tree/?.so;;" \
        timeout -k 5 "$TEST_TIMEOUT" "$lua" "$t.lua" </dev/null
    ) >"$log" 2>&1
    rc=$?
    ms=$(( ($(date +%s%N) - start) / 1000000 ))
    if [ $rc -eq 0 ]; then
      RESULT[$v/$t]="ok"
      passed=$((passed + 1))
    else
      if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then RESULT[$v/$t]="TIMEOUT"; else RESULT[$v/$t]="FAIL($rc)"; fi
      failed=$((failed + 1))
    fi
    printf '%-8s %-15s %-9s %3d.%03ds  %s\n' "$lua" "$t" "${RESULT[$v/$t]}" $((ms / 1000)) $((ms % 1000)) "${log#"$ROOT"/}"
  done
done

echo
printf '%-15s' "test"
for v in "${RUNTIMES[@]}"; do printf ' %-9s' "$(interp_of "$v")"; done
echo
for t in "${TESTS[@]}"; do
  printf '%-15s' "$t"
  for v in "${RUNTIMES[@]}"; do printf ' %-9s' "${RESULT[$v/$t]}"; done
  echo
done
if [ $failed -gt 0 ]; then
  echo
  echo "last lines of each failure (full logs in build/conformance/):"
  for v in "${RUNTIMES[@]}"; do
    for t in "${TESTS[@]}"; do
      if [ "${RESULT[$v/$t]}" != ok ]; then
        echo "--- $(interp_of "$v") $t: ${RESULT[$v/$t]}"
        tail -n 8 "$LOGDIR/$(interp_of "$v")-$t.log" | sed 's/^/    /'
      fi
    done
  done
fi
echo
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
