#!/bin/sh
# with_dns.sh <command> [args...]
#
# Runs <command> with name resolution pointed at the test DNS server spec/support/dnsd.lua,
# without touching the machine's own resolver or configuration. Used by spec/dns_spec.lua.
#
# How: the script re-runs itself under `unshare -m -n` (needs root, or CAP_SYS_ADMIN), so the
# command gets
#   * a private network namespace: only its own loopback (brought up with `ip link set lo up`),
#     127.0.0.1 and ::1, plus 127.0.0.2 on lo (without an IPv4 address other than 127.0.0.1,
#     getaddrinfo with AI_ADDRCONFIG would not look up IPv4 at all). Nothing else is reachable
#     from it, so even a misconfiguration cannot send a query to the machine's resolver, and
#     port 53 is free whatever runs outside;
#   * a private mount namespace (propagation private) in which these are bind-mounted over
#     (the real files are never written):
#       /etc/resolv.conf    "nameserver 127.0.0.1" + "options timeout:5 attempts:1"
#       /etc/nsswitch.conf  the machine's, with the hosts line set to "hosts: files dns"
#     and /run/nscd (if present) is hidden under an empty tmpfs, so glibc asks no nscd.
# Inside, dnsd.lua is started in the background on 127.0.0.1:53 (same namespaces as the
# command), the script waits for its "ready" line, runs the command (not exec: it stays to
# clean up), then kills dnsd by its PID (trap on exit) and removes its temporary directory.
# dnsd also exits by itself after COPAS_DNSD_LIFETIME seconds (default 30).
# /etc/hosts stays the machine's; names not in it go to dnsd, which answers (see dnsd.lua)
#   stall.copas.test -> 127.0.0.1 after 2 s     fast.copas.test -> 127.0.0.1 at once
#   stall-nx.copas.test -> NXDOMAIN after 2 s   anything else   -> NXDOMAIN at once
#
# Exit status: the command's; 77 if `unshare -m -n` is not permitted here (callers treat that
# as "cannot run", e.g. not root); 70 if the harness itself could not be set up (no `ip`, a
# mount failed, dnsd did not start).
#
# Environment: COPAS_DNSD_LUA, the interpreter for dnsd (default: $COPAS_TEST_LUA, else the
# first of lua5.4 lua5.3 lua5.2 lua5.1 luajit lua that has LuaSocket; dnsd runs with
# LUA_PATH/LUA_CPATH unset, i.e. on the system's LuaSocket); COPAS_DNSD_LIFETIME (seconds);
# DNSD_LOG=1 makes dnsd log each query to stderr.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
me="$here/$(basename "$0")"

die() { echo "with_dns: $*" >&2; exit 70; }

if [ $# -eq 0 ]; then
  echo "usage: $0 <command> [args...]" >&2
  exit 2
fi

if [ "${COPAS_WITH_DNS_INSIDE:-}" != 1 ]; then
  # --- outside: enter the namespaces ------------------------------------------------------
  command -v unshare >/dev/null 2>&1 || { echo "with_dns: no unshare command" >&2; exit 77; }
  if ! err=$(unshare -m -n true 2>&1); then
    echo "with_dns: unshare -m -n is not permitted here (needs root): $err" >&2
    exit 77
  fi
  COPAS_WITH_DNS_INSIDE=1 exec unshare --mount --net --propagation private -- /bin/sh "$me" "$@"
fi

# --- inside the new mount + network namespaces ----------------------------------------------
unset COPAS_WITH_DNS_INSIDE
command -v ip >/dev/null 2>&1 || die "needs the ip command (Debian package iproute2) to bring up lo"
ip link set lo up || die "cannot bring up lo"
# A second loopback address, so that getaddrinfo's AI_ADDRCONFIG (which ignores 127.0.0.1 and
# ::1) still sees an IPv4 address configured and does look names up over IPv4.
ip addr add 127.0.0.2/8 dev lo || die "cannot add 127.0.0.2 to lo"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/copas-dns.XXXXXX") || die "mktemp failed"
dnsd_pid=
cleanup() {
  if [ -n "$dnsd_pid" ]; then
    kill "$dnsd_pid" 2>/dev/null || true
    wait "$dnsd_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

printf 'nameserver 127.0.0.1\noptions timeout:5 attempts:1\n' >"$tmp/resolv.conf"
if [ -f /etc/nsswitch.conf ] && grep -q '^[[:space:]]*hosts:' /etc/nsswitch.conf; then
  sed 's/^[[:space:]]*hosts:.*/hosts: files dns/' /etc/nsswitch.conf >"$tmp/nsswitch.conf"
else
  { [ -f /etc/nsswitch.conf ] && cat /etc/nsswitch.conf; echo "hosts: files dns"; } >"$tmp/nsswitch.conf"
fi
[ -e /etc/resolv.conf ] || die "/etc/resolv.conf does not exist (or is a dangling link): nothing to bind-mount over"
mount --bind "$tmp/resolv.conf" /etc/resolv.conf || die "cannot bind-mount over /etc/resolv.conf"
if [ -e /etc/nsswitch.conf ]; then
  mount --bind "$tmp/nsswitch.conf" /etc/nsswitch.conf || die "cannot bind-mount over /etc/nsswitch.conf"
fi
if [ -d /run/nscd ]; then
  mount -t tmpfs none /run/nscd || die "cannot hide /run/nscd"
fi

# the interpreter for dnsd
has_socket() { env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_2 -u LUA_PATH_5_3 -u LUA_PATH_5_4 \
  -u LUA_CPATH_5_2 -u LUA_CPATH_5_3 -u LUA_CPATH_5_4 "$1" -e 'require("socket")' >/dev/null 2>&1; }
dnsd_lua=${COPAS_DNSD_LUA:-}
if [ -z "$dnsd_lua" ]; then
  for l in ${COPAS_TEST_LUA:-} lua5.4 lua5.3 lua5.2 lua5.1 luajit lua; do
    if command -v "$l" >/dev/null 2>&1 && has_socket "$l"; then dnsd_lua=$l; break; fi
  done
fi
[ -n "$dnsd_lua" ] || die "no Lua interpreter with LuaSocket found for dnsd (install lua-socket)"

env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_2 -u LUA_PATH_5_3 -u LUA_PATH_5_4 \
  -u LUA_CPATH_5_2 -u LUA_CPATH_5_3 -u LUA_CPATH_5_4 \
  "$dnsd_lua" "$here/dnsd.lua" 53 "${COPAS_DNSD_LIFETIME:-30}" >"$tmp/dnsd.out" </dev/null &
dnsd_pid=$!

# wait (at most ~5 s) for "ready"
i=0
until grep -q '^ready$' "$tmp/dnsd.out" 2>/dev/null; do
  kill -0 "$dnsd_pid" 2>/dev/null || { dnsd_pid=; die "dnsd exited before it was ready"; }
  i=$((i + 1))
  [ "$i" -le 100 ] || die "dnsd not ready after 5 s"
  sleep 0.05
done

set +e
"$@"
status=$?
exit "$status"
