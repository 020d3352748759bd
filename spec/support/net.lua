-- Shared helpers for the socket specs (wrap, receive, send, socket timeouts, UDP).
-- Loopback only: every socket binds 127.0.0.1 port 0 and reads its port with getsockname.
-- Sockets made here are tracked; call net.closeall() in after_each so nothing leaks into the
-- next spec.
local socket = require("socket")

local net = {}
net.socket = socket

local opened = {}

-- Remembers `skt` for closeall and returns it.
function net.track(skt)
  opened[#opened + 1] = skt
  return skt
end

-- Closes every tracked socket (errors ignored: some were closed by the spec already).
function net.closeall()
  for i = #opened, 1, -1 do
    pcall(opened[i].close, opened[i])
    opened[i] = nil
  end
end

-- A listening TCP server socket on 127.0.0.1 and its port.
function net.server()
  local server = net.track(assert(socket.bind("127.0.0.1", 0)))
  local _, port = server:getsockname()
  return server, tonumber(port)
end

-- Two connected raw TCP sockets, made before the loop runs: `a` connected to a throw-away
-- server, `b` the accepted end. Both are tracked and non-blocking (LuaSocket timeout 0, as
-- copas leaves the sockets it accepts or wraps: the low-level copas functions expect that).
function net.pair()
  local server = assert(socket.bind("127.0.0.1", 0))
  local _, port = server:getsockname()
  local a = net.track(assert(socket.connect("127.0.0.1", port)))
  server:settimeout(5)
  local b = net.track(assert(server:accept()))
  server:close()
  a:settimeout(0)
  b:settimeout(0)
  return a, b
end

-- The port of a listening socket whose accept queue is full (backlog 0, never accepting, with
-- a few connects pending), so that a further connect to it stays in progress: for connect
-- timeouts without leaving the loopback.
function net.full_listener()
  local server = net.track(assert(socket.tcp()))
  assert(server:bind("127.0.0.1", 0))
  assert(server:listen(0))
  local _, port = server:getsockname()
  for _ = 1, 4 do
    local c = net.track(assert(socket.tcp()))
    c:settimeout(0)
    c:connect("127.0.0.1", port)
  end
  return tonumber(port)
end

-- A raw, non-blocking UDP socket bound to 127.0.0.1 port 0, and its port.
function net.udp()
  local u = net.track(assert(socket.udp()))
  assert(u:setsockname("127.0.0.1", 0))
  u:settimeout(0)
  local _, port = u:getsockname()
  return u, tonumber(port)
end

-- `n` bytes of data in which every 8 KiB block starts with its own number, so that dropped,
-- repeated or reordered blocks change the content (compare with ==).
function net.payload(n)
  local base = {}
  for i = 0, 255 do base[#base + 1] = string.char((i * 37 + 11) % 256) end
  base = table.concat(base)
  local block = base:rep(32) -- 8 KiB
  local parts, size, k = {}, 0, 0
  while size < n do
    local piece = ("%08d"):format(k) .. block:sub(9)
    parts[#parts + 1] = piece
    size = size + #piece
    k = k + 1
  end
  return table.concat(parts):sub(1, n)
end

-- A short description of where two strings first differ, for failure messages.
function net.diff(expected, got)
  if type(got) ~= "string" then return "got a " .. type(got) end
  if got == expected then return "equal" end
  local lo, hi = 1, math.min(#expected, #got)
  -- binary search on prefix equality (cheap on large strings)
  while lo <= hi do
    local mid = math.floor((lo + hi) / 2)
    if expected:sub(1, mid) == got:sub(1, mid) then lo = mid + 1 else hi = mid - 1 end
  end
  return ("lengths %d (expected) and %d (got), first difference at byte %d"):format(#expected, #got, lo)
end

-- A socket-like proxy table around the raw socket `skt` that forwards the methods the copas
-- I/O functions use, and records each receive/send call: proxy.calls lists
-- { op = "receive", pattern = ..., prefix_len = ... } or
-- { op = "send", i = ..., j = ..., last = ..., err = ..., sent = ... }. `map_error`, if given, rewrites the
-- error of a failed receive/send call (e.g. "timeout" -> "wantread", as LuaSec reports it).
function net.recorder(skt, map_error)
  local proxy = { inner = skt, calls = {} }
  local function fix(a, err, c)
    if a == nil and map_error then err = map_error(err) end
    return a, err, c
  end
  function proxy:receive(pattern, prefix)
    self.calls[#self.calls + 1] = { op = "receive", pattern = pattern,
                                    prefix_len = type(prefix) == "string" and #prefix or 0 }
    return fix(skt:receive(pattern, prefix))
  end
  function proxy:send(data, i, j)
    local call = { op = "send", i = i, j = j }
    self.calls[#self.calls + 1] = call
    local last, err, sent = fix(skt:send(data, i, j))
    call.last, call.err, call.sent = last, err, sent
    return last, err, sent
  end
  function proxy.getfd(_) return skt:getfd() end
  function proxy.dirty(_) return skt:dirty() end
  function proxy.settimeout(_, ...) return skt:settimeout(...) end
  function proxy.close(_, ...) return skt:close(...) end
  -- the largest prefix passed to the inner receive
  function proxy:max_prefix()
    local m = 0
    for _, c in ipairs(self.calls) do
      if c.prefix_len and c.prefix_len > m then m = c.prefix_len end
    end
    return m
  end
  function proxy:count(op)
    local n = 0
    for _, c in ipairs(self.calls) do if c.op == op then n = n + 1 end end
    return n
  end
  return proxy
end

return net
