-- Child program of spec/scale_spec.lua, run with a raised descriptor limit:
--
--   sh -c 'ulimit -Sn $(ulimit -Hn) && exec <lua> scale_child.lua <n>'
--
-- with the interpreter and LUA_PATH/LUA_CPATH under test. Both ends live in this process:
--   * a server on 127.0.0.1 (port 0, listen backlog 8192) whose handler counts the open
--     connections, waits until all <n> are open at once, then reads "req <i>", answers
--     "resp <i>" and waits for the client to close;
--   * <n> client threads that each connect, wait until all have connected, then send their
--     request, read their own response and close.
-- Prints key=value lines:
--   connected=<n>   clients whose connect succeeded
--   max_open=<n>    the most connections open at the server at the same time
--   ok=<n>          clients that got their own, correct response
--   bad=<n>         clients that failed; first_error=<s> the first failure
--   elapsed=<s>     seconds for the whole run
--   done=1          last line
-- After 40 s it prints what it has (with error=deadline) and exits 1. An error raised out of
-- copas.loop is printed as error=<message> (exit 1).
local copas = require("copas")
local socket = require("socket")
local now = socket.gettime

local N = assert(tonumber(arg[1]), "usage: scale_child.lua <n>")

local function out(k, v)
  io.stdout:write(k, "=", tostring(v):gsub("\n", " "), "\n")
  io.stdout:flush()
end

local t_start = now()
local server = assert(socket.bind("127.0.0.1", 0, 8192))
local ip, port = server:getsockname()

local open, max_open, all_open = 0, 0, false
local server_waiting = {}
local connected, ok, bad, first_error = 0, 0, 0, nil
local client_waiting, all_connected = {}, false
local finished = 0

local function fail(msg)
  bad = bad + 1
  first_error = first_error or msg
end

local function report()
  out("connected", connected)
  out("max_open", max_open)
  out("ok", ok)
  out("bad", bad)
  out("first_error", first_error)
  out("elapsed", now() - t_start)
end

local function wake_all(list)
  for i = 1, #list do copas.wakeup(list[i]) end
end

copas.addserver(server, function(skt)
  open = open + 1
  if open > max_open then max_open = open end
  if open == N then
    all_open = true
    wake_all(server_waiting)
  end
  while not all_open do
    server_waiting[#server_waiting + 1] = coroutine.running()
    copas.pauseforever()
  end
  local line = copas.receive(skt, "*l")
  local i = line and line:match("^req (%d+)$")
  if i then copas.send(skt, "resp " .. i .. "\n") end
  copas.receive(skt, "*l") -- until the client closes
  open = open - 1
end)

local function client(i)
  local c = copas.wrap(socket.tcp())
  c:settimeout(30)
  local r, err = c:connect(ip, port)
  if not r then
    fail("connect " .. i .. ": " .. tostring(err))
  else
    connected = connected + 1
    if connected == N then
      all_connected = true
      wake_all(client_waiting)
    end
    while not all_connected do
      client_waiting[#client_waiting + 1] = coroutine.running()
      copas.pauseforever()
    end
    local sent, serr = c:send("req " .. i .. "\n")
    local line, rerr = c:receive("*l")
    if line == "resp " .. i then
      ok = ok + 1
    else
      fail("client " .. i .. ": " .. tostring(line) .. " " .. tostring(sent and rerr or serr))
    end
  end
  c:close()
  finished = finished + 1
  if finished == N then copas.removeserver(server) end
end

copas.addthread(function()
  while finished < N do
    if now() - t_start > 40 then
      out("error", "deadline")
      report()
      os.exit(1)
    end
    copas.pause(0.2)
  end
end)

for i = 1, N do copas.addthread(client, i) end

local loop_ok, loop_err = pcall(copas.loop)
if not loop_ok then
  out("error", loop_err)
  report()
  os.exit(1)
end
report()
out("done", 1)
os.exit(0)
