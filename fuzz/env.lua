-- The world a fuzz program runs in: hostile values (V), copas objects (O) and C, which runs one
-- call in a context (main thread, copas thread, error handler, copas.timeout or copas.timer
-- callback, __gc finalizer) and checks what comes back.
--
-- A program made by fuzz/gen.lua starts with `local F = dofile(".../fuzz/env.lua")`. Findings
-- go to the file named by FUZZ_OUT (stderr without it), one line each:
--   B <k>                        call k is about to run (the last one names a crash or hang)
--   G <k>, g <k>                 a __gc finalizer made by call k starts, ends
--   F <k> <ctx> <target> <msg>   call k gave a message that is not Lua-style
--   D                            every call ran
local copas = require("copas")
local socket = require("socket")

local now = socket.gettime
local pcall = pcall
-- PUC 5.1's pcall cannot be yielded through; copas threads use coxpcall there, as copas does.
-- Its handler gets a traceback first and the error itself second: the error is what we check.
if _VERSION == "Lua 5.1" and not jit then
  local ok, coxpcall = pcall(require, "coxpcall")
  if ok then
    -- Debian's coxpcall returns { pcall, xpcall, running } (and sets the global coxpcall).
    local xpcall_yieldable = coxpcall.xpcall or coxpcall.coxpcall or _G.coxpcall
    local function raw(_, err) return err end
    pcall = function(f, ...)
      local args = { n = select("#", ...), ... }
      return xpcall_yieldable(function() return f(unpack(args, 1, args.n)) end, raw)
    end
  end
end

local out = io.stderr
if os.getenv("FUZZ_OUT") then out = assert(io.open(os.getenv("FUZZ_OUT"), "w")) end

local function emit(line)
  out:write(line, "\n")
  out:flush()
end

-- Wording that comes from Rust or mlua, not from Lua or copas.
local NOT_LUA = {
  "error converting", "mlua", "os error", "called `Result::unwrap()`", "called `Option::unwrap()`",
  "panicked", "^runtime error: ", "callback error",
}
-- A raised message carries no traceback (copas.gettraceback returns one, by design).
local RAISED_ONLY = { "stack traceback" }

local current = 0   -- the call being made, for messages that reach the error handler later

local function inspect(k, ctx, target, v, raised)
  local s = v
  if type(v) ~= "string" then
    local ok, t = pcall(tostring, v)
    if not ok or type(t) ~= "string" then return end
    s = t
  end
  if #s > 4096 then return end   -- data, not a message
  local function found(list)
    for i = 1, #list do
      if s:find(list[i], 1, list[i]:sub(1, 1) ~= "^") then return true end
    end
  end
  if found(NOT_LUA) or (raised and found(RAISED_ONLY)) then
    emit(("F %d %s %s %s"):format(k, ctx, target, (s:gsub("[\r\n\t]", " "))))
  end
end

local function check(k, ctx, target, ok, ...)
  if not ok then return inspect(k, ctx, target, (...), true) end
  for i = 1, math.min(select("#", ...), 3) do
    local v = select(i, ...)
    if type(v) == "string" then inspect(k, ctx, target, v) end
  end
end

-- An object whose __gc runs `fn` (tables have no __gc on 5.1 and LuaJIT).
local function on_gc(fn)
  if newproxy then
    local p = newproxy(true)
    getmetatable(p).__gc = fn
    return p
  end
  return setmetatable({}, { __gc = fn })
end

local function raise() error("fuzz: metamethod raised") end

local V = {}
local O = {}

V.zero, V.one, V.negone, V.half, V.ms, V.three, V.port_max = 0, 1, -1, 0.5, 0.001, 3, 65535
V.nan, V.inf, V.neginf = 0 / 0, math.huge, -math.huge
V.big, V.negbig, V.e308, V.negzero = 2 ^ 53, -2 ^ 53, 1e308, -0.0
V.minint = math.mininteger or -2 ^ 63
V.maxint = math.maxinteger or 2 ^ 63
V.t, V.f = true, false
-- Strings a host name position may get: none of them can reach a DNS resolver.
V.empty, V.ip, V.ip6, V.localhost = "", "127.0.0.1", "::1", "localhost"
V.bin = "\0\1\2\255tcp{client}\0"
V.mib = "\0" .. string.rep("x", 1024 * 1024 - 1)
-- Strings for everything else (receive patterns, names, data).
V.line, V.all, V.star, V.text = "*l", "*a", "*", "hello\n"
V.fn = function() end
V.fn_err = function() error("fuzz: boom") end
V.fn_errtbl = function() error({}) end
V.fn_echo = function(...) return ... end
V.fn_yield = coroutine.yield
V.fn_pause = function() copas.pause(0.01) end
V.fn_forever = function() copas.pauseforever() end
V.callable = setmetatable({}, { __call = function() end })
V.tbl = {}
V.evil = setmetatable({}, {
  __index = raise, __newindex = raise, __tostring = raise, __eq = raise, __len = raise,
  __call = raise, __concat = raise, __lt = raise, __le = raise, __pairs = raise,
})
V.opts = { name = "fuzz", timeout = 0.01, delay = 0.001, recurring = false, callback = V.fn }
V.sslparams = { mode = "client", protocol = "any" }
V.stdout = io.stdout
V.dead_co = coroutine.create(function() end)
coroutine.resume(V.dead_co)
V.new_co = coroutine.create(function() end)
V.yielded_co = coroutine.create(function() coroutine.yield() end)
coroutine.resume(V.yielded_co)

-- Sockets, all on 127.0.0.1.
V.server = assert(socket.bind("127.0.0.1", 0))
local _, port = V.server:getsockname()
V.port = tonumber(port)
V.client = assert(socket.connect("127.0.0.1", V.port))
V.peer = assert(V.server:accept())
V.peer:send("line one\nline two\n")
V.udp = assert(socket.udp())
assert(V.udp:setsockname("127.0.0.1", 0))
V.closed = socket.tcp()
V.closed:close()
V.master = socket.tcp()

-- Fakes: a table and a userdata that claim to be LuaSocket connections.
local fake_methods = {
  getfd = function() return 987 end,
  settimeout = function() return 1 end,
  send = function() return nil, "fake" end,
  receive = function() return nil, "fake" end,
  receivefrom = function() return nil, "fake" end,
  connect = function() return nil, "fake" end,
  accept = function() return nil, "timeout" end,
  close = function() return 1 end,
  dirty = function() return false end,
}
local function fake_tostring() return "tcp{client}: 0x1" end
V.fake = setmetatable({}, { __index = fake_methods, __tostring = fake_tostring })
V.spoof = debug.setmetatable(io.tmpfile(), { __index = fake_methods, __tostring = fake_tostring })
if newproxy then
  V.proxy = newproxy(true)
  getmetatable(V.proxy).__index = fake_methods
  getmetatable(V.proxy).__tostring = fake_tostring
end

-- Objects of every copas class; the program replaces them with the ones it makes.
O.lock = copas.lock.new(0.01)
O.sem = copas.semaphore.new(3, 1, 0.01)
O.queue = copas.queue.new({ name = "fuzzq" })
O.timer = copas.timer.new({ delay = 0.001, callback = V.fn, recurring = false })
O.future = copas.future.addthread(V.fn)
O.wtcp = copas.wrap(V.client)
O.wpeer = copas.wrap(V.peer)
O.wudp = copas.wrap(V.udp)
O.wclosed = copas.wrap(V.closed)
O.wfake = copas.wrap(V.fake)
O.handler = copas.handler(V.fn)
O.thread = copas.addthread(V.fn_forever)

-- Shortly before the driver's time limit, a count hook writes where the program is stuck.
local stuck_at = now() + (tonumber(os.getenv("FUZZ_STUCK_AFTER")) or 15)
debug.sethook(function()
  if now() > stuck_at then
    stuck_at = math.huge
    local where = debug.traceback("at call " .. current, 2):gsub("\n%s*", " | ")
    io.stderr:write("STUCK ", where, "\n")
  end
end, "", 100000)

copas.setErrorHandler(function(msg) inspect(current, "errorhandler", "-", msg, true) end, true)
pcall(collectgarbage, "setpause", 50)   -- collect often: finalizers run inside other calls

-- Steps the loop until `done()` or a little while passed: a call that waits legitimately
-- (pauseforever, a held lock) stays behind without holding up the program.
local function drive(k, done)
  local deadline = now() + 0.1
  repeat
    local ok, err = pcall(copas.step, 0.005)
    if not ok then inspect(k, "step", "copas.step", err, true) end
  until done() or now() > deadline
end

-- Calls that may run the loop (from the main thread or a finalizer) get a watchdog that ends
-- everything: a loop over a thread in pauseforever is a wait, not a hang.
local BLOCKING = { ["copas"] = true, ["copas.loop"] = true, ["copas.step"] = true }

local function guarded(f)
  return function()
    local dog = copas.addthread(function() copas.pause(0.2); copas.cancelall() end)
    local function over(...)
      pcall(copas.removethread, dog)
      return ...
    end
    return over(f())
  end
end

local contexts = {}

function contexts.main(k, target, f)
  check(k, "main", target, pcall(f))
end

function contexts.thread(k, target, f)
  local done = false
  copas.addthread(function()
    check(k, "thread", target, pcall(f))
    done = true
  end)
  drive(k, function() return done end)
end

function contexts.errorhandler(k, target, f)
  local done = false
  copas.addthread(function()
    copas.setErrorHandler(function()
      check(k, "errorhandler", target, pcall(f))
      done = true
    end)
    error("fuzz: raised to reach the error handler")
  end)
  drive(k, function() return done end)
end

function contexts.timeout(k, target, f)
  local done = false
  copas.addthread(function()
    copas.timeout(0.001, function()
      check(k, "timeout", target, pcall(f))
      done = true
    end)
    copas.pause(0.05)
  end)
  drive(k, function() return done end)
end

function contexts.timer(k, target, f)
  local done = false
  copas.timer.new({ delay = 0.001, recurring = false, callback = function()
    check(k, "timer", target, pcall(f))
    done = true
  end })
  drive(k, function() return done end)
end

-- Left for the collector: the call runs whenever a later allocation (in Lua or in the core)
-- triggers a collection.
function contexts.gc(k, target, f)
  for _ = 1, 3 do
    on_gc(function()
      emit("G " .. k)   -- a finalizer of call k runs (a later call may be under way)
      check(k, "gc", target, pcall(f))
      emit("g " .. k)
    end)
  end
  collectgarbage("step")
end

local F = { copas = copas, V = V, O = O }

-- C(k, ctx, target, f [, slot]): call k; its first result replaces O[slot] when not nil.
function F.call(k, ctx, target, f, slot)
  current = k
  emit("B " .. k)
  io.stderr:write("B ", k, "\n")   -- so a panic message on stderr follows its call's number
  if slot then
    local g = f
    local function keep(...)
      if (...) ~= nil then O[slot] = (...) end
      return ...
    end
    f = function() return keep(g()) end
  end
  if BLOCKING[target] then f = guarded(f) end
  contexts[ctx](k, target, f)
end

-- Every call ran. The finalizers left for the collector run now, not while the interpreter
-- closes: there they would meet C modules already unloaded (LuaSocket's, on 5.2 and LuaJIT),
-- whatever copas does. os.exit then leaves without closing the state.
function F.done()
  for _ = 1, 4 do collectgarbage() end
  emit("D")
  if out ~= io.stderr then out:close() end
  io.stdout:flush()
  io.stderr:flush()
  os.exit(0)
end

return F
