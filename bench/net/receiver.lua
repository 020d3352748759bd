-- bench/net/receiver.lua: the Copas receiver of suite D.
--
-- Usage: lua receiver.lua PORT MODE     MODE = "8192" (receive(8192) in a loop) or "all" ("*a")
--
-- A plain Lua program using only the public Copas API and LuaSocket, identical for upstream
-- Copas 4.11 and copas-rs. Accepts one connection and reads it until the peer closes it, then
-- prints
--   RESULT bytes=<count> pattern=<ok|BAD> wall=<s from accept to close> end=<how it ended>
-- (end: the error of the last receive(8192), normally "closed"; for "*a", "data" when it returned
-- the data, "nil,<err>,partial" when it returned nil, err and the data as the partial result)
-- and removes the server so that copas.loop() returns. The sender (sender.c) writes a pattern
-- (the byte at stream offset o is o % 251): the first and the last byte of every chunk are
-- checked against their offsets (for "*a", additionally every 8191st byte), so a receiver that
-- loses, duplicates or reorders data is caught without a costly per-byte checksum in Lua.

local socket = require("socket")
local copas = require("copas")

local port = tonumber(arg[1]) or error("usage: lua receiver.lua PORT 8192|all")
local mode = arg[2] or "8192"
local byte = string.byte


local server = assert(socket.bind("127.0.0.1", port, 16))

copas.addserver(server, function(c)
  local t0 = socket.gettime()
  c = copas.wrap(c)
  local total, ok, last = 0, true
  local function check(s)
    local n = #s
    if n == 0 then return end
    if byte(s, 1) ~= total % 251 or byte(s, n) ~= (total + n - 1) % 251 then ok = false end
    total = total + n
  end
  if mode == "all" then
    local data, err, part = c:receive("*a")
    -- how the data came back: "data" (data, nil) or e.g. "nil,closed,partial" (nil, err, partial)
    last = data and "data" or ("nil," .. tostring(err) .. ",partial")
    data = data or part or ""
    local base = total
    for i = 1, #data, 8191 do
      if byte(data, i) ~= (base + i - 1) % 251 then ok = false break end
    end
    check(data)
  else
    while true do
      local data, err, part = c:receive(8192)
      if data then
        check(data)
      else
        if part then check(part) end
        last = tostring(err)
        break
      end
    end
  end
  local wall = socket.gettime() - t0
  c:close()
  print(string.format("RESULT bytes=%d pattern=%s wall=%.6f end=%s", total, ok and "ok" or "BAD",
    wall, last))
  io.stdout:flush()
  copas.removeserver(server)
end)

print(dofile((arg[0]:match("^(.*)/") or ".") .. "/../impl_line.lua")(copas))
print("ready")
io.stdout:flush()

copas.loop()
