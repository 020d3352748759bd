-- Child program of spec/connect_spec.lua, run in a private mount namespace whose /etc/hosts
-- reads "::1 localhost" then "127.0.0.1 localhost", so "localhost" resolves to ::1 first:
--
--   unshare -m --propagation private sh -c 'mount --bind <hosts> /etc/hosts && exec <lua> localhost_child.lua'
--
-- with the interpreter and LUA_PATH/LUA_CPATH under test. Starts an echo server listening on
-- 127.0.0.1 only (port 0), and in a copas thread connects copas.wrap(socket.tcp()) to
-- "localhost" on that port (connect timeout 3 s), sends one line and reads the echo.
-- Prints key=value lines:
--   order=<addr,addr,...>  LuaSocket's getaddrinfo("localhost") order (::1 first expected)
--   connect=<r>            connect's first result;  connect_err=<e>  its second
--   elapsed=<s>            seconds connect took
--   echo=<s>               the echoed line
--   done=1                 last line
local copas = require("copas")
local socket = require("socket")

local function out(k, v)
  io.stdout:write(k, "=", tostring(v):gsub("\n", " "), "\n")
  io.stdout:flush()
end

local order = {}
for _, a in ipairs(socket.dns.getaddrinfo("localhost") or {}) do order[#order + 1] = a.addr end
out("order", table.concat(order, ","))

local server = assert(socket.bind("127.0.0.1", 0, 8))
local _, port = server:getsockname()
copas.addserver(server, copas.handler(function(skt)
  skt:settimeout(3)
  local line = skt:receive("*l")
  if line then skt:send(line .. "\n") end
end))

copas.addthread(function()
  local c = copas.wrap(socket.tcp())
  c:settimeout(3)
  local t0 = socket.gettime()
  local r, err = c:connect("localhost", port)
  out("elapsed", socket.gettime() - t0)
  out("connect", r)
  out("connect_err", err)
  if r then
    c:send("hello localhost\n")
    out("echo", c:receive("*l"))
  end
  c:close()
  copas.removeserver(server)
end)

copas.loop()
out("done", 1)
