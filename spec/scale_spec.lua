-- Specs for many concurrent connections (behaviour contract §16.1 "select() and FD_SETSIZE";
-- hazard "socket.select" in copas-issues.md §2e).
-- Lead decision: epoll readiness, no 1024-descriptor limit. FAILS on upstream 4.11 (verified):
-- once a descriptor >= 1024 is in its select set, copas.step raises "descriptor too large for
-- set size" out of copas.loop.
--
-- How: spec/support/scale_child.lua runs in a child process (same interpreter, same
-- LUA_PATH/LUA_CPATH) whose soft descriptor limit is raised to the hard limit; both ends of
-- the 5,000 connections live in it (10,000 descriptors and a few more).
local helper = require("spec.helper")
local N = 5000
local NEED = 2 * N + 100 -- descriptors

local here = (debug.getinfo(1, "S").source:match("^@(.*)[/\\]") or ".")
local support = here .. "/support"

local interpreter, q = helper.interpreter, helper.shell_quote

local function sh(cmd)
  local p = assert(io.popen(cmd, "r"))
  local output = p:read("*a")
  p:close()
  return output
end

describe("copas with 5,000 concurrent connections", function()
  it("serves them all, all open at the same time, past descriptor 1024", function()
    local hard = sh("ulimit -Hn 2>&1"):match("^%s*(%S+)")
    assert(hard == "unlimited" or (tonumber(hard) or 0) >= NEED,
      "this spec needs a hard descriptor limit (ulimit -Hn) of at least " .. NEED
      .. ", but it is " .. tostring(hard) .. " here; raise it (e.g. docker --ulimit nofile="
      .. NEED .. ") to run the spec")

    local cmd = "timeout -k 5 60 sh -c " .. q("ulimit -Sn $(ulimit -Hn) && exec " .. q(interpreter())
      .. " " .. q(support .. "/scale_child.lua") .. " " .. N) .. " </dev/null 2>&1; echo \"__rc=$?\""
    local output = sh(cmd)
    local res = {}
    for k, v in output:gmatch("([%w_]+)=([^\n]*)") do res[k] = v end
    assert.is_nil(res.error, output)
    assert.equal("0", res.__rc, output)
    assert.equal("1", res.done, output)
    assert.equal(tostring(N), res.connected, output)
    assert.equal(tostring(N), res.max_open, output) -- every connection open at once
    assert.equal(tostring(N), res.ok, output)       -- each got its own response
    assert.equal("0", res.bad, output)
    assert.is_true(tonumber(res.elapsed) < 30, output)
  end)
end)
