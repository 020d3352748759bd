-- Specs for copas.connect (through copas.wrap(skt):connect) with a host name: the DNS lookup
-- must not block the copas loop (README issue #3, non-blocking DNS). Upstream Copas resolves
-- inside LuaSocket's blocking connect, so its loop stops for the whole lookup: these specs fail
-- there (no ticks while the lookup is pending, a tick ~2 s late, the 0.5 s timeout not kept).
--
-- How: each case runs spec/support/dns_child.lua in a child process of the same interpreter,
-- under spec/support/with_dns.sh, which gives it private mount and network namespaces
-- (`unshare -m -n`, needs root) where /etc/resolv.conf points at spec/support/dnsd.lua on
-- 127.0.0.1:53. Nothing leaves the loopback, and the machine's resolver is never asked.
-- dnsd answers stall.copas.test after 2 s, fast.copas.test at once, stall-nx.copas.test with
-- NXDOMAIN after 2 s, anything else with NXDOMAIN at once. The child ticks every 0.1 s in a
-- copas thread while a second thread connects to its own echo server by name, and prints how
-- the ticks fared (see dns_child.lua).
--
-- The child runs with the interpreter named by COPAS_TEST_LUA (e.g. lua5.4, luajit), or else
-- the one matching this process (_VERSION / jit), and inherits LUA_PATH/LUA_CPATH, so it loads
-- the same copas. The specs are pending (skipped) only when `unshare` is not permitted (not
-- root); any other harness failure fails them.
local helper = require("spec.helper")
local STALL = 2 -- dnsd's delay for stall.copas.test and stall-nx.copas.test

local here = (debug.getinfo(1, "S").source:match("^@(.*)[/\\]") or ".")
local support = here .. "/support"

local interpreter, q = helper.interpreter, helper.shell_quote

-- Runs the child for `host` with the copas timeout `timeout` under the harness. Returns the
-- parsed key=value results, the harness's exit status and the whole output.
local function run_child(host, timeout)
  local cmd = table.concat({
    "timeout -k 5 40", q(support .. "/with_dns.sh"), q(interpreter()),
    q(support .. "/dns_child.lua"), q(host), q(timeout),
  }, " ") .. " </dev/null 2>&1; echo \"__rc=$?\""
  local p = assert(io.popen(cmd, "r"))
  local output = p:read("*a")
  p:close()
  local rc = tonumber(output:match("__rc=(%d+)%s*$"))
  local res = {}
  for k, v in output:gmatch("([%w_]+)=([^\n]*)") do res[k] = v end
  return res, rc, output
end

-- Runs the child; marks the spec pending if namespaces are not permitted here, fails it if
-- the harness or the child did not run to the end.
local function child(host, timeout)
  local res, rc, output = run_child(host, timeout)
  if rc == 77 then
    pending("needs `unshare -m -n` (root) to run its own DNS server: " .. output:gsub("%s*__rc=%d+%s*$", ""))
  end
  assert(rc == 0 and res.done == "1",
    "child did not finish (exit status " .. tostring(rc) .. "); output:\n" .. output)
  res.elapsed = tonumber(res.elapsed)
  res.ticks_pending = tonumber(res.ticks_pending)
  res.max_late = tonumber(res.max_late)
  res.output = output
  return res
end

-- The loop kept running during the lookup: at least `min_ticks` ticks of 0.1 s completed while
-- connect was pending, and no tick of the whole run woke 0.1 s or more late.
local function assert_not_blocked(res, min_ticks)
  assert.is_true(res.ticks_pending >= min_ticks,
    res.ticks_pending .. " ticks while the lookup was pending (want >= " .. min_ticks .. ")\n" .. res.output)
  assert.is_true(res.max_late < 0.1, "a tick woke " .. res.max_late .. " s late\n" .. res.output)
end

describe("copas.connect with a host name", function()
  it("keeps the loop running while a slow DNS lookup is pending, then connects", function()
    local res = child("stall.copas.test", 10)
    assert_not_blocked(res, 15)
    assert.equal("true", res.connect_ok, res.output)
    assert.is_true(res.elapsed >= STALL - 0.2, "connected after " .. res.elapsed .. " s\n" .. res.output)
    assert.is_true(res.elapsed < STALL + 1.5, "connected after " .. res.elapsed .. " s\n" .. res.output)
    assert.equal("hello copas", res.echo, res.output)
  end)

  it("connects at once to a name that resolves at once", function()
    local res = child("fast.copas.test", 10)
    assert.equal("true", res.connect_ok, res.output)
    assert.is_true(res.elapsed < 0.5, "connected after " .. res.elapsed .. " s\n" .. res.output)
    assert_not_blocked(res, 0)
    assert.equal("hello copas", res.echo, res.output)
  end)

  it("returns nil and an error message for an unknown name", function()
    local res = child("nonexist.copas.test", 10)
    assert.equal("false", res.connect_ok, res.output)
    assert.is_string(res.connect_err, res.output)
    assert.is_true(#res.connect_err > 0, res.output)
    assert.is_true(res.elapsed < 0.5, "failed after " .. res.elapsed .. " s\n" .. res.output)
    assert_not_blocked(res, 0)
  end)

  it("keeps the loop running while a slow lookup fails, then returns nil and an error message", function()
    local res = child("stall-nx.copas.test", 10)
    assert_not_blocked(res, 15)
    assert.equal("false", res.connect_ok, res.output)
    assert.is_string(res.connect_err, res.output)
    assert.is_true(#res.connect_err > 0, res.output)
    assert.is_true(res.elapsed >= STALL - 0.2, "failed after " .. res.elapsed .. " s\n" .. res.output)
  end)

  it("returns nil, 'timeout' at its timeout when the lookup takes longer", function()
    local res = child("stall.copas.test", 0.5)
    assert_not_blocked(res, 3)
    assert.equal("false", res.connect_ok, res.output)
    assert.equal("timeout", res.connect_err, res.output)
    assert.is_true(res.elapsed >= 0.5 - 0.01, "timed out after " .. res.elapsed .. " s\n" .. res.output)
    assert.is_true(res.elapsed < 1.0, "timed out after " .. res.elapsed .. " s\n" .. res.output)
  end)
end)
