-- bench/net/server.lua: the HTTP keep-alive responder of suites A and B.
--
-- Usage: lua server.lua PORT
--
-- A plain Lua program using only the public Copas API and LuaSocket, identical for upstream
-- Copas 4.11 and copas-rs (which one is loaded is decided by LUA_PATH / LUA_CPATH only).
-- Per connection: read request lines with receive("*l") up to the blank line (a nil read closes
-- the connection), answer with one fixed HTTP/1.1 200 keep-alive response, repeat.
-- Prints "IMPL ..." (which implementation was loaded) and "ready" once it listens.

local socket = require("socket")
local copas = require("copas")

local port = tonumber(arg[1]) or error("usage: lua server.lua PORT")

local RESPONSE = "HTTP/1.1 200 OK\r\n" ..
  "Content-Type: text/plain\r\n" ..
  "Content-Length: 13\r\n" ..
  "Connection: keep-alive\r\n" ..
  "\r\n" ..
  "Hello, World!"


local server = assert(socket.bind("127.0.0.1", port, 8192))

copas.addserver(server, function(c)
  c = copas.wrap(c)
  while true do
    repeat
      local line = c:receive("*l")
      if not line then
        c:close()
        return
      end
    until line == ""
    if not c:send(RESPONSE) then
      c:close()
      return
    end
  end
end)

print(dofile((arg[0]:match("^(.*)/") or ".") .. "/../impl_line.lua")(copas))
print("ready")
io.stdout:flush()

copas.loop()
