-- Child program of spec/dns_spec.lua, run under spec/support/with_dns.sh (which points name
-- resolution at spec/support/dnsd.lua) with the interpreter and LUA_PATH/LUA_CPATH under test:
--
--   with_dns.sh <lua> dns_child.lua <host> [timeout]
--
-- Starts an echo server on 127.0.0.1 (port 0), a copas thread that ticks every 0.1 s and
-- records how late each tick is, and a thread that (after a short warm-up) does
--   local c = copas.wrap(socket.tcp()); c:settimeout(timeout); c:connect(host, port)
-- and, when that succeeds, sends one line and reads the echo. A short cool-down of ticks
-- follows, then everything stops. Prints its results as key=value lines:
--   port=<n>            the echo server's port
--   connect_ok=<bool>   whether connect returned a true value
--   connect_err=<s>     connect's second result (when it failed)
--   elapsed=<s>         seconds connect took
--   ticks_pending=<n>   ticks that completed while connect was pending
--   ticks_total=<n>     all ticks
--   max_late=<s>        the most any tick woke after its due time, over the whole run
--   echo=<s>            the line echoed back (when connected)
--   done=1              last line
-- A DNS lookup that blocks the process stops the ticks: ticks_pending ~0, max_late ~ the stall.
local copas = require("copas")
local socket = require("socket")
local now = socket.gettime -- the clock of the test, independent of the copas under test

local host = assert(arg[1], "usage: dns_child.lua <host> [timeout]")
local timeout = tonumber(arg[2]) or 10
local TICK, WARMUP, COOLDOWN = 0.1, 0.3, 0.3

local function out(k, v)
  io.stdout:write(k, "=", tostring(v):gsub("\n", " "), "\n")
  io.stdout:flush()
end

local server = assert(socket.bind("127.0.0.1", 0))
local _, port = server:getsockname()
out("port", port)
copas.addserver(server, function(skt)
  local c = copas.wrap(skt) -- the handler gets the raw client socket
  c:settimeout(10)
  local line = c:receive("*l")
  if line then c:send(line .. "\n") end
  c:close()
end)

local done = false
local pending_since, pending_until -- the connect call's start and end (now())
local ticks = {} -- { t0, t1 } per tick

copas.addthread(function()
  while not done do
    local t0 = now()
    copas.pause(TICK)
    ticks[#ticks + 1] = { t0, now() }
  end
end)

copas.addthread(function()
  copas.pause(WARMUP)
  local c = copas.wrap(socket.tcp())
  c:settimeout(timeout)
  pending_since = now()
  local ok, err = c:connect(host, port)
  pending_until = now()
  out("connect_ok", not not ok)
  if not ok then out("connect_err", err) end
  out("elapsed", string.format("%.3f", pending_until - pending_since))
  if ok then
    c:send("hello copas\n")
    local line, rerr = c:receive("*l")
    out("echo", line or ("<" .. tostring(rerr) .. ">"))
  end
  c:close()
  copas.pause(COOLDOWN)
  done = true
  copas.removeserver(server)

  local pending_ticks, max_late = 0, 0
  for _, t in ipairs(ticks) do
    if t[2] > pending_since and t[2] <= pending_until then pending_ticks = pending_ticks + 1 end
    local late = t[2] - t[1] - TICK
    if late > max_late then max_late = late end
  end
  out("ticks_pending", pending_ticks)
  out("ticks_total", #ticks)
  out("max_late", string.format("%.3f", max_late))
  out("done", 1)
end)

copas.loop()
