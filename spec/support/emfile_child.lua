-- Child program of spec/server_spec.lua, run as
--
--   sh -c 'ulimit -n 64 && exec <lua> emfile_child.lua'
--
-- with the interpreter and LUA_PATH/LUA_CPATH under test. Starts a copas TCP server on
-- 127.0.0.1 (port 0), connects 3 clients to it (each sends one line), then opens /dev/null until
-- no descriptor is left, so the server's accept fails (EMFILE) while the connections wait.
-- For ~1 s a thread ticks every 0.1 s; the process CPU time (os.clock) over that second shows
-- whether the loop spins. Then the held descriptors are closed and the 3 clients must be served
-- (the server echoes "echo <line>"). Prints key=value lines:
--   held=<n>                descriptors opened to exhaust the limit
--   accepted_exhausted=<n>  accepts that succeeded while exhausted (0 expected)
--   cpu=<s>                 CPU seconds used during the exhaustion second
--   ticks=<n>, max_late=<s> ticks in that second, and the most one woke late
--   served=<n>              clients that got their echo after the descriptors were freed
--   serve_time=<s>          seconds from freeing to the last client served
--   done=1                  last line
-- Exits 1 (with error=...) if something does not finish within 10 s.
local copas = require("copas")
local socket = require("socket")
local now = socket.gettime

local N = 3

local function out(k, v)
  io.stdout:write(k, "=", tostring(v):gsub("\n", " "), "\n")
  io.stdout:flush()
end

local server = assert(socket.bind("127.0.0.1", 0, 16))
local ip, port = server:getsockname()

local phase = "setup"
local accepted_exhausted = 0
copas.addserver(server, function(skt)
  if phase == "exhausted" then accepted_exhausted = accepted_exhausted + 1 end
  local line = copas.receive(skt, "*l")
  if line then copas.send(skt, "echo " .. line .. "\n") end
end)
copas.step(0) -- the loop's own descriptors exist before the limit is reached
-- modules copas may load lazily (upstream's loop loads copas.semaphore): no files open later
for _, m in ipairs({ "copas.semaphore", "copas.lock", "copas.queue", "copas.timer" }) do
  pcall(require, m)
end

local clients = {}
for i = 1, N do
  local c = socket.tcp()
  assert(c:connect(ip, port)) -- completes in the backlog; not accepted yet
  assert(c:send("hello " .. i .. "\n"))
  clients[i] = copas.wrap(c)
  clients[i]:settimeout(8)
end

local hold = {}
while true do
  local f = io.open("/dev/null", "r")
  if not f then break end
  hold[#hold + 1] = f
end
out("held", #hold)

local freed_at
local served, serve_time = 0, 0

copas.addthread(function()
  copas.pause(10)
  out("error", "deadline: served " .. served .. " of " .. N)
  os.exit(1)
end)

copas.addthread(function()
  phase = "exhausted"
  local c0, t0 = os.clock(), now()
  local ticks, max_late = 0, 0
  while now() - t0 < 1.0 do
    local t = now()
    copas.pause(0.1)
    local late = now() - t - 0.1
    if late > max_late then max_late = late end
    ticks = ticks + 1
  end
  out("cpu", os.clock() - c0)
  out("ticks", ticks)
  out("max_late", max_late)
  out("accepted_exhausted", accepted_exhausted)
  phase = "freed"
  for i = 1, #hold do hold[i]:close() end
  hold = nil
  freed_at = now()
end)

for i = 1, N do
  copas.addthread(function()
    local line, err = clients[i]:receive("*l")
    if line == "echo hello " .. i and freed_at then
      served = served + 1
      serve_time = math.max(serve_time, now() - freed_at)
    else
      out("client_" .. i, tostring(line) .. " " .. tostring(err))
    end
    clients[i]:close()
    if served == N then
      out("served", served)
      out("serve_time", serve_time)
      out("done", 1)
      os.exit(0)
    end
  end)
end

copas.loop()
out("error", "loop ended: served " .. served .. " of " .. N)
os.exit(1)
