-- copas-rs: the public Copas API over the Rust scheduler in `copas.core`.
--
-- This file holds the API surface only: argument checks, names, error handlers, exit
-- signalling and the late binding through the `copas` table that upstream programs observe.
-- Scheduling, sleeping and timers are in Rust (src/scheduler.rs).

if _VERSION == "Lua 5.1" then
  -- Upstream refuses these orders on 5.1 and LuaJIT, where copas patches LuaSocket on load.
  if package.loaded["socket.http"] then
    error("you must require copas before require'ing socket.http")
  end
  if package.loaded["copas.http"] then
    error("you must require copas before require'ing copas.http")
  end
end

local core = require("copas.core")

local function optional(name)
  local ok, mod = pcall(require, name)
  if ok then return mod end
  return nil
end

local socket = optional("socket")
local system = optional("system")

local sched = core.new()
local TOKEN, OP_PAUSE, OP_FOREVER, OP_TIMER_DONE =
  core.TOKEN, core.OP_PAUSE, core.OP_FOREVER, core.OP_TIMER_DONE

local yield = coroutine.yield
local type, select, tostring, error, pcall, xpcall, setmetatable, getmetatable =
  type, select, tostring, error, pcall, xpcall, setmetatable, getmetatable
local unpack = table.unpack or unpack
local huge = math.huge

-- The coroutine that identifies "the running thread": on 5.2+ the main thread too; on 5.1 and
-- LuaJIT nil there. On PUC 5.1, coxpcall runs protected code in helper coroutines and maps them
-- back to the copas thread, as upstream does.
local running
-- A pcall that a copas thread may yield through (PUC 5.1's own cannot).
local yieldable_pcall = pcall
if _VERSION == "Lua 5.1" and not jit then
  local coxpcall = optional("coxpcall")
  running = coxpcall and coxpcall.running or coroutine.running
  yieldable_pcall = coxpcall and coxpcall.pcall or pcall
else
  running = coroutine.running   -- its second result tells the main thread (waiting_thread)
end

-- LuaSocket's protect/newtry/try, made yieldable as upstream does (copas/protect.lua).
if socket then require("copas.protect")(socket, yieldable_pcall) end


local copas = setmetatable({}, {})
local copas_mt = getmetatable(copas)

copas._COPYRIGHT = "Copyright (C) 2005-2013 Kepler Project, 2015-2026 Thijs Schreijer"
copas._DESCRIPTION = "Coroutine Oriented Portable Asynchronous Services"
copas._VERSION = "Copas 4.11.0"
copas.autoclose = true
copas.running = false
copas.gettime = socket and socket.gettime or system and system.gettime or core.gettime


-------------------------------------------------------------------------------
-- Argument checks in Lua's own words
-------------------------------------------------------------------------------

local function argerror(n, fname, expected, got)
  error(("bad argument #%d to '%s' (%s expected, got %s)"):format(n, fname, expected, type(got)), 3)
end

local function is_callable(f)
  if type(f) == "function" then return true end
  local mt = getmetatable(f)
  return type(mt) == "table" and mt.__call ~= nil
end

local function check_optional_number(v, n, fname)
  if v ~= nil and type(v) ~= "number" then argerror(n, fname, "number", v) end
end


-------------------------------------------------------------------------------
-- Lazy submodules, copas() as copas.loop()
-------------------------------------------------------------------------------

local lazy = { ftp = true, future = true, http = true, lock = true, queue = true,
               semaphore = true, smtp = true, timer = true }

copas_mt.__index = function(self, key)
  if not lazy[key] then return nil end
  local mod = require("copas." .. key)
  lazy[key] = nil
  rawset(self, key, mod)
  return mod
end

copas_mt.__call = function(self, ...)
  return self.loop(...)
end


-------------------------------------------------------------------------------
-- Names of threads and sockets
-------------------------------------------------------------------------------

-- A default name is the object's tostring at its first lookup, cached (upstream quirk §6).
local names = setmetatable({}, { __mode = "k" })

local function name_of(obj)
  local name = names[obj]
  if name == nil then
    name = tostring(obj)
    names[obj] = name
  end
  return name
end

function copas.setthreadname(name, co)
  if type(name) ~= "string" then error("expected arg #1 to be a string", 2) end
  co = co or running()
  if type(co) ~= "thread" then error("expected arg #2 to be a coroutine or nil", 2) end
  names[co] = name
end

function copas.getthreadname(co)
  co = co or running()
  if type(co) ~= "thread" then error("expected arg #1 to be a coroutine or nil", 2) end
  return name_of(co)
end

function copas.setsocketname(name, skt)
  if type(name) ~= "string" then error("expected arg #1 to be a string", 2) end
  if not skt then error("expected arg #2 to be a socket", 2) end
  names[skt] = name
end

function copas.getsocketname(skt)
  if not skt then error("expected arg #1 to be a socket", 2) end
  return name_of(skt)
end


-------------------------------------------------------------------------------
-- Error handling
-------------------------------------------------------------------------------

local errhandlers = setmetatable({}, { __mode = "k" })
-- While debug logging runs: the threads created since it started, the only ones whose exit
-- upstream logs (its logging coroutine.create made them).
local traced_exits
-- Task ids by coroutine, for wakeup/removethread; weak, so finished threads are collectable.
local task_ids = setmetatable({}, { __mode = "k" })

function copas.gettraceback(msg, co, skt)
  local co_str = co == nil and "nil" or copas.getthreadname(co)
  local skt_str = skt == nil and "nil" or copas.getsocketname(skt)
  local msg_str = msg == nil and "" or tostring(msg)
  if msg_str == "" then
    -- Upstream formats the empty message into the first slot; its output is kept (§15.12).
    msg_str = ("(coroutine: %s, socket: %s)"):format(msg_str, co_str, skt_str)
  else
    msg_str = ("%s (coroutine: %s, socket: %s)"):format(msg_str, co_str, skt_str)
  end
  if type(co) == "thread" then
    return debug.traceback(co, msg_str)
  end
  return debug.traceback(msg_str, 2)
end

local function default_errorhandler(msg, co, skt)
  print(copas.gettraceback(msg, co, skt))
end

function copas.seterrorhandler(handler, default)
  if handler ~= nil and type(handler) ~= "function" then
    error("Expected the handler to be a function, or nil", 2)
  end
  if default then
    if handler == nil then
      error("Expected the handler to be a function when setting the default", 2)
    end
    default_errorhandler = handler
  else
    local co = running()
    errhandlers[co] = handler
    local id = task_ids[co]
    if id then sched.watch_exit(id) end   -- forget the handler when the thread ends
  end
end
copas.setErrorHandler = copas.seterrorhandler

function copas.geterrorhandler(co)
  co = co or running()
  return co ~= nil and errhandlers[co] or default_errorhandler
end

-- Called by the core when a task raised (or yielded outside copas). The error value arrives as
-- raised; the handler runs after the coroutine died, its stack intact for debug.traceback.
local function dispatch_error(err, co)
  local handler = errhandlers[co] or default_errorhandler
  errhandlers[co] = nil
  local ok, e = pcall(handler, err, co, nil)
  if not ok then
    print("Failed executing error handler: " .. tostring(e))
  end
end
sched.set_error_hook(dispatch_error)


-------------------------------------------------------------------------------
-- Threads
-------------------------------------------------------------------------------

function copas.addnamedthread(name, handler, ...)
  if type(name) == "function" and type(handler) == "string" then
    name, handler = handler, name   -- the old argument order
  end
  if name ~= nil and type(name) ~= "string" then argerror(1, "addnamedthread", "string", name) end
  local co
  local n = select("#", ...)
  if n == 0 and type(handler) == "function" then
    co = coroutine.create(handler)
  elseif not is_callable(handler) then
    argerror(2, "addnamedthread", "function", handler)
  elseif n == 0 then
    co = coroutine.create(function() return handler() end)
  else
    local args = { ... }
    co = coroutine.create(function() return handler(unpack(args, 1, n)) end)
  end
  if name ~= nil then names[co] = name end
  if traced_exits then traced_exits[co] = true end
  task_ids[co] = sched.spawn(co, true)
  return co
end

function copas.addthread(handler, ...)
  if type(handler) ~= "function" and not is_callable(handler) then
    argerror(1, "addthread", "function", handler)
  end
  return copas.addnamedthread(nil, handler, ...)
end


function copas.removethread(co)
  if type(co) ~= "thread" then argerror(1, "removethread", "coroutine", co) end
  local id = task_ids[co]
  if id then sched.remove(id) end
end

function copas.pause(sleeptime)
  -- false counts as nil, as upstream's `if sleeptime and sleeptime > 0`
  if sleeptime and type(sleeptime) ~= "number" then argerror(1, "pause", "number", sleeptime) end
  return yield(TOKEN, OP_PAUSE, sleeptime or nil)
end

function copas.pauseforever()
  return yield(TOKEN, OP_FOREVER)
end

function copas.sleep(sleeptime)
  check_optional_number(sleeptime, 1, "sleep")
  sleeptime = sleeptime or 0
  if sleeptime < 0 then
    yield(TOKEN, OP_FOREVER)
  else
    yield(TOKEN, OP_PAUSE, sleeptime)
  end
end

function copas.wakeup(co)
  if type(co) ~= "thread" then argerror(1, "wakeup", "coroutine", co) end
  local id = task_ids[co]
  if id then sched.wakeup(id) end
end


-------------------------------------------------------------------------------
-- copas.timeout: one timer per coroutine, run in the core timer coroutine
-------------------------------------------------------------------------------

local timeout_ids = setmetatable({}, { __mode = "k" })   -- coroutine -> its timer id
local timer_callbacks, timer_args = {}, {}                -- timer id -> callback, coroutine
local core_timer

local function timer_callback_failed(err)
  local ok, e = pcall(default_errorhandler, err, core_timer, nil)
  if not ok then
    print("Failed executing error handler: " .. tostring(e))
  end
  return err
end

local function run_timer(id)
  local callback, co = timer_callbacks[id], timer_args[id]
  timer_callbacks[id], timer_args[id] = nil, nil
  if co ~= nil and timeout_ids[co] == id then timeout_ids[co] = nil end
  if callback ~= nil then
    xpcall(function() return callback(co) end, timer_callback_failed)
  end
end

-- The core resumes this coroutine with the id of each timer that expires.
local function core_timer_body()
  while true do
    run_timer(yield(TOKEN, OP_TIMER_DONE))
  end
end

sched.set_core_timer_factory(function()
  core_timer = coroutine.create(core_timer_body)
  names[core_timer] = "copas_core_timer"
  coroutine.resume(core_timer)   -- runs up to its first wait for a timer id
  return core_timer
end)

local function cancel_timer(id)
  sched.cancel_timer(id)
  timer_callbacks[id], timer_args[id] = nil, nil
end

function copas.timeout(delay, callback)
  local co = running()
  local existing = co ~= nil and timeout_ids[co]
  if existing then
    cancel_timer(existing)
    timeout_ids[co] = nil
  end
  if type(delay) ~= "number" then argerror(1, "timeout", "number", delay) end
  if delay > 0 and delay ~= huge then
    if not is_callable(callback) then
      if callback == nil then error("the callback parameter is required", 2) end
      argerror(2, "timeout", "function", callback)
    end
    if co == nil then error("table index is nil", 2) end   -- upstream on 5.1/LuaJIT's main thread
    local id = sched.add_timer(delay)
    timeout_ids[co] = id
    timer_callbacks[id], timer_args[id] = callback, co
  elseif delay ~= 0 and delay ~= huge then
    error(("timout value must be greater than or equal to 0, got: %s"):format(tostring(delay)), 2)
  end
  return true
end

function copas.gettimeouts()
  return sched.timer_count()
end


-------------------------------------------------------------------------------
-- Sockets: timeouts, waiting, the low-level I/O functions
-------------------------------------------------------------------------------

local OP_READ, OP_WRITE, OP_LOOKUP = core.OP_READ, core.OP_WRITE, core.OP_LOOKUP
local OP_SEMAPHORE = core.OP_SEMAPHORE
local UDP_DATAGRAM_MAX = socket and socket._DATAGRAMSIZE or 8192
local concat = table.concat

-- LuaSocket and LuaSec errors that mean "not now": wait and retry.
local RETRY = { timeout = true, wantread = true, wantwrite = true }

local function check_socket(skt, n, fname)
  local t = type(skt)
  if t ~= "userdata" and t ~= "table" then argerror(n, fname, "socket", skt) end
end

-- Copas-level timeouts per socket (the real LuaSocket timeout is always 0). Missing means none.
local connect_timeouts = setmetatable({}, { __mode = "k" })
local send_timeouts = setmetatable({}, { __mode = "k" })
local read_timeouts = setmetatable({}, { __mode = "k" })

local function set_one(store, skt, value, what)
  if value == nil then return true end
  if type(value) ~= "number" then return nil, what .. " timeout must be 'nil' or a number" end
  if value < 0 or value == huge then value = nil end   -- both mean "no timeout": no entry
  store[skt] = value
  return true
end

-- Applied in order; an error leaves the earlier ones applied (as upstream).
function copas.settimeouts(skt, connect, send, read)
  if skt == nil then argerror(1, "settimeouts", "socket", skt) end
  local ok, err = set_one(connect_timeouts, skt, connect, "connect")
  if ok then ok, err = set_one(send_timeouts, skt, send, "send") end
  if ok then ok, err = set_one(read_timeouts, skt, read, "read") end
  return ok, err
end

function copas.settimeout(skt, timeout)
  if skt == nil then argerror(1, "settimeout", "socket", skt) end
  timeout = timeout or -1
  if type(timeout) ~= "number" then return nil, "timeout must be 'nil' or a number" end
  return copas.settimeouts(skt, timeout, timeout, timeout)
end

-- A timeout of 0, like none, arms no timer (upstream: copas.timeout(0) cancels).
local function deadline_for(timeout)
  if timeout and timeout > 0 and timeout ~= huge then return sched.now() + timeout end
  return nil
end

-- Per thread: report the socket's own error ("timeout", "wantread", ...) on a timeout.
local raw_timeout_errors = setmetatable({}, { __mode = "k" })

function copas.useSocketTimeoutErrors(bool)
  local co = running()
  if co == nil then error("table index is nil", 2) end   -- upstream, on 5.1's main thread
  raw_timeout_errors[co] = not not bool
end
copas.usesockettimeouterrors = copas.useSocketTimeoutErrors

local function timeout_error(raw)
  local co = running()
  if co ~= nil and raw_timeout_errors[co] then return raw end
  return "timeout"
end

-- A deterministic fairness budget (upstream pauses at random after 10% of I/O calls): every
-- IO_BUDGET-th socket call that does not wait yields once, so a socket that always has data
-- cannot starve timers or other threads, and math.random is left alone. A call about to wait
-- is not counted: its wait yields anyway, and a pause between its failed try and its wait would
-- let the readiness it waits for go by unseen (edge-triggered: it would wait for ever).
local IO_BUDGET = 32
local io_budget = IO_BUDGET

local function budget_spent()
  io_budget = IO_BUDGET
  local co, main = coroutine.running()
  if co ~= nil and not main then copas.pause() end
end

local function spend(err)
  if RETRY[err] then return end
  io_budget = io_budget - 1
  if io_budget <= 0 then budget_spent() end
end

-- The descriptor each socket object was added to epoll with, and the object of each descriptor
-- (for debug output and cancelall).
local watched_fd = setmetatable({}, { __mode = "k" })
local fd_socket = setmetatable({}, { __mode = "v" })

local function current_fd(skt)
  local getfd = skt.getfd
  if getfd == nil then return nil end
  local fd = getfd(skt)
  if type(fd) ~= "number" or fd < 0 or fd ~= fd then return nil end
  return fd
end

local function watch(skt)
  local fd = watched_fd[skt]
  if fd then return fd end
  fd = current_fd(skt)
  if fd == nil or not sched.watch(fd) then return nil end
  watched_fd[skt], fd_socket[fd] = fd, skt
  return fd
end

-- Waits until `skt` is worth a retry in direction `op`: true on readiness, false once the
-- deadline passed, nil for an object without a usable descriptor.
local function wait_for(skt, op, deadline)
  local fd = watch(skt)
  if fd == nil then return nil end
  return yield(TOKEN, op, fd, deadline) == 1
end

local tcp_mt, udp_mt   -- the wrapper metatables, below

local function is_wrapper(skt)
  local mt = getmetatable(skt)
  return mt ~= nil and (mt == tcp_mt or mt == udp_mt)
end

-- Upstream hangs when handed a wrapper here; the wrapper's socket is what is meant.
local function unwrap(skt)
  if is_wrapper(skt) then return skt.socket end
  return skt
end

local function direction(err, default)
  if err == "wantwrite" then return OP_WRITE end
  if err == "wantread" then return OP_READ end
  return default
end

-- Collects received pieces so that a long "*a" or "*l" costs linear time: each retry asks for
-- the rest only, and the pieces are joined once (upstream re-copies everything per retry).
local function join(pieces, n)
  if n <= 1 then return pieces[1] end
  return concat(pieces, "", 1, n)
end

local function receive_waiting(skt, pattern, err, part)
  local count = tonumber(pattern)
  local pieces, n = { part }, part ~= nil and 1 or 0
  local got = type(part) == "string" and #part or 0
  local deadline = deadline_for(read_timeouts[skt])
  local ready = true
  while true do
    if not ready then return nil, timeout_error(err), join(pieces, n) end
    ready = wait_for(skt, direction(err, OP_READ), deadline)
    if ready == nil then return nil, "closed", join(pieces, n) end
    local data
    data, err, part = skt:receive(count and count - got or pattern)
    spend(err)
    if data then
      n = n + 1
      pieces[n] = data
      return join(pieces, n), nil, nil
    end
    if type(part) == "string" and part ~= "" then
      n = n + 1
      pieces[n] = part
      got = got + #part
    end
    if not RETRY[err] then return nil, err, join(pieces, n) end
  end
end

-- Plain LuaSocket TCP connections are read and written by the core on the descriptor, with
-- copas's own buffer (src/io.rs): no failed recv before each wait, no per-call clock reads.
-- A connection is taken over only while LuaSocket's own buffer is empty, so no data is
-- reordered; other objects (LuaSec, proxies, UDP) go through their own methods.
local MODE_LINE, MODE_ALL = core.MODE_LINE, core.MODE_ALL
local sched_recv, sched_send = sched.recv, sched.send
local adopted = setmetatable({}, { __mode = "k" })   -- connection -> its descriptor
-- LuaSocket TCP connections, as the core recognises them: by their class's metatable and size,
-- never by tostring (the core reads the descriptor out of the object). Only true is kept: a
-- socket becomes a connection when it connects.
local clients = setmetatable({}, { __mode = "k" })

local function is_client(skt)
  if clients[skt] then return true end
  if type(skt) ~= "userdata" or not sched.is_tcp_client(skt) then return false end
  clients[skt] = true
  return true
end

local function adopt(skt)
  if not is_client(skt) or skt:dirty() then return nil end
  local fd = current_fd(skt)
  if fd == nil or not sched.adopt(skt, fd) then return nil end
  adopted[skt], watched_fd[skt], fd_socket[fd] = fd, fd, skt
  return fd
end

-- The core's code for a receive pattern (and prefix); nil for what only LuaSocket knows how to
-- refuse.
local function mode_of(pattern, prefix)
  if prefix ~= nil and type(prefix) ~= "string" then return nil end
  if pattern == "*l" then return MODE_LINE end
  if pattern == "*a" then return MODE_ALL end
  if type(pattern) == "number" and pattern >= 0 then return 0 end
  return nil
end

-- The rest of a receive on an adopted connection after the first try said "timeout".
local function receive_adopted(skt, fd, mode, pattern, prefix)
  local deadline = deadline_for(read_timeouts[skt])
  local ready, data, err, part
  repeat
    ready = yield(TOKEN, OP_READ, fd, deadline) == 1
    -- once out of time, what arrived so far comes back as the partial result
    data, err, part = sched_recv(skt, mode, pattern, prefix, not ready)
    spend(err)
    if data or err ~= "timeout" then return data, err, part end
  until not ready
  return nil, timeout_error(err), part
end

function copas.receive(skt, pattern, prefix)
  -- the first lines are the hot path of every server: a connection copas reads itself
  local fd = adopted[skt]
  if fd == nil then
    check_socket(skt, 1, "receive")
    skt = unwrap(skt)
    fd = adopted[skt] or adopt(skt)
  end
  pattern = pattern or "*l"
  local mode = fd and mode_of(pattern, prefix)
  if mode then
    local data, err, part = sched_recv(skt, mode, pattern, prefix, false)
    if data or err ~= "timeout" then
      io_budget = io_budget - 1
      if io_budget <= 0 then budget_spent() end
      return data, err, part
    end
    return receive_adopted(skt, fd, mode, pattern, prefix)
  end
  local data, err, part = skt:receive(pattern, prefix)
  spend(err)
  if data or not RETRY[err] then return data, err, part end
  return receive_waiting(skt, pattern, err, part)
end

-- Like receive, but returns as soon as any new data arrived (with the socket's own error).
function copas.receivepartial(skt, pattern, prefix)
  check_socket(skt, 1, "receivepartial")
  skt = unwrap(skt)
  pattern = pattern or "*l"
  local mode = (adopted[skt] or adopt(skt)) and mode_of(pattern, prefix)
  local known = type(prefix) == "string" and #prefix or 0
  local deadline, armed, ready
  while true do
    local data, err, part
    if mode then
      data, err, part = sched_recv(skt, mode, pattern, prefix, true)
    else
      data, err, part = skt:receive(pattern, prefix)
    end
    spend(err)
    if data or not RETRY[err] then return data, err, part end
    if type(part) == "string" and #part > known then
      spend()  -- it returns without waiting after all
      return data, err, part
    end
    if armed and not ready then return nil, timeout_error(err), part end
    if not armed then deadline, armed = deadline_for(read_timeouts[skt]), true end
    ready = wait_for(skt, direction(err, OP_READ), deadline)
    if ready == nil then return nil, "closed", part end
  end
end
copas.receivePartial = copas.receivepartial

function copas.receivefrom(skt, size)
  check_socket(skt, 1, "receivefrom")
  skt = unwrap(skt)
  size = size or UDP_DATAGRAM_MAX
  local deadline, armed, ready
  while true do
    local data, err, port = skt:receivefrom(size)
    spend(err)
    if data or err ~= "timeout" then return data, err, port end
    if armed and not ready then return nil, timeout_error(err), nil end
    if not armed then deadline, armed = deadline_for(read_timeouts[skt]), true end
    ready = wait_for(skt, OP_READ, deadline)
    if ready == nil then return nil, "closed", nil end
  end
end

local function is_index(i)
  return i == nil or type(i) == "number"
end

function copas.send(skt, data, i, j)
  check_socket(skt, 1, "send")
  skt = unwrap(skt)
  local direct = is_client(skt) and type(data) == "string" and is_index(i) and is_index(j)
  local send = direct and sched_send or skt.send
  local last, err, sent = send(skt, data, i or 1, j)
  spend(err)
  if last or not RETRY[err] then return last, err, sent end
  local deadline = deadline_for(send_timeouts[skt])
  local ready = true
  while true do
    if not ready then return nil, timeout_error(err), sent end
    ready = wait_for(skt, direction(err, OP_WRITE), deadline)
    if ready == nil then return nil, "closed", sent end
    local start = (sent or (i or 1) - 1) + 1
    last, err, sent = send(skt, data, start, j)
    spend(err)
    if last or not RETRY[err] then return last, err, sent end
  end
end

function copas.flush()
end


-------------------------------------------------------------------------------
-- Names: looked up off the loop thread
-------------------------------------------------------------------------------

local function is_ipv4(host)
  return host:match("^%d+%.%d+%.%d+%.%d+$") ~= nil
end

local function is_numeric_host(host)
  return is_ipv4(host) or host:find(":", 1, true) ~= nil
end

local function in_copas_thread()
  local co, main = coroutine.running()
  return co ~= nil and not main
end

-- The addresses of `host`, resolved on another thread while the loop goes on. Outside a copas
-- thread (nothing could run meanwhile) and for numeric addresses, LuaSocket resolves as usual.
local function addresses(host, deadline)
  if type(host) ~= "string" or is_numeric_host(host) or host == "*" or not in_copas_thread() then
    return { host }
  end
  local id = sched.resolve(host)
  local ready = yield(TOKEN, OP_LOOKUP, id, deadline) == 1
  local list, err = sched.lookup_result(id)
  if list then return list end
  if not ready then return nil, "timeout" end
  return nil, err
end

-- LuaSocket ties a socket to the address family of its first connect. After an IPv6 address
-- failed, an IPv4 address is reached through the same socket as an IPv4-mapped IPv6 address.
local function address_for(skt, address, attempt)
  if attempt == 1 or not is_ipv4(address) then return address end
  local ok, family = pcall(skt.getfamily, skt)
  if ok and family == "inet6" and skt:setoption("ipv6-v6only", false) then
    return "::ffff:" .. address
  end
  return address
end

-- Tries one address until connected, failed or out of time.
local function connect_to(skt, host, port, deadline)
  local tries, ready = 0, true
  while true do
    local ok, err = skt:connect(host, port)
    tries = tries + 1
    if ok or (err ~= "timeout" and err ~= "Operation already in progress") then
      if err == "already connected" and tries > 1 then return 1 end   -- an async connect done
      return ok, err
    end
    if not ready then return nil, timeout_error(err), true end
    -- LuaSocket makes the descriptor on the first connect (of the address's family).
    if watched_fd[skt] ~= current_fd(skt) then watched_fd[skt] = nil end
    ready = wait_for(skt, OP_WRITE, deadline)
    if ready == nil then return nil, "closed" end
  end
end

function copas.connect(skt, host, port)
  check_socket(skt, 1, "connect")
  skt = unwrap(skt)
  skt:settimeout(0)
  local deadline = deadline_for(connect_timeouts[skt])
  local list, err = addresses(host, deadline)
  if not list then return nil, err end
  local ok, timed_out
  for i = 1, #list do
    ok, err, timed_out = connect_to(skt, address_for(skt, list[i], i), port, deadline)
    if ok or timed_out or err == "already connected" then break end
  end
  return ok, err
end

-- The first address of `host` in the family of the (UDP) socket, which cannot change it.
local function address_of(skt, host)
  local list, err = addresses(host, nil)
  if not list then return nil, err end
  local ok, family = pcall(skt.getfamily, skt)
  local v6 = ok and family == "inet6"
  for i = 1, #list do
    local a = list[i]
    if type(a) == "string" and (a:find(":", 1, true) ~= nil) == v6 then return a end
  end
  return list[1]
end

function copas.sendto(skt, data, ip, port)
  check_socket(skt, 1, "sendto")
  skt = unwrap(skt)
  local address, err = address_of(skt, ip)
  if address == nil and err then return nil, err end
  return skt:sendto(data, address, port)
end

local function setpeername(skt, host, ...)
  local address, err = address_of(skt, host)
  if address == nil and err then return nil, err end
  return skt:setpeername(address, ...)
end


-------------------------------------------------------------------------------
-- Closing
-------------------------------------------------------------------------------

-- Every thread waiting on the socket wakes and sees "closed"; the descriptor leaves epoll first.
local function forget_socket(skt)
  local fd = watched_fd[skt] or current_fd(skt)
  watched_fd[skt], adopted[skt] = nil, nil
  if fd then sched.close_fd(fd) end
end

function copas.close(skt, ...)
  check_socket(skt, 1, "close")
  if not is_wrapper(skt) then forget_socket(skt) end
  return skt:close(...)
end


-------------------------------------------------------------------------------
-- TLS through LuaSec
-------------------------------------------------------------------------------

local autoclose = setmetatable({}, { __mode = "k" })     -- handler coroutine -> client socket
local autoclose_of = setmetatable({}, { __mode = "k" })  -- client socket -> handler coroutine

local function is_tcp(skt)
  local kind = tostring(skt):sub(1, 3)
  return kind == "tcp" or kind == "SSL"
end

local ssl_params_mt = {
  __index = function(_, key)
    error("accessing unknown 'ssl_params' table key: " .. tostring(key), 2)
  end,
}

local function normalize_sslt(sslt)
  local t = type(sslt)
  local r = setmetatable({ wrap = false, sni = false }, ssl_params_mt)
  if sslt == nil then
    return r
  elseif t == "table" then
    if sslt.mode or sslt.protocol then
      r.wrap = sslt
    else
      r.wrap = sslt.wrap or false
      r.sni = sslt.sni or false
    end
  elseif t == "userdata" then
    r.wrap = sslt
  else
    error("ssl parameters; did not expect type " .. tostring(sslt), 3)
  end
  return r
end

local function ssl_wrap(skt, params)
  if tostring(skt):sub(1, 3) == "SSL" then return skt end
  if not params then
    error("cannot wrap socket into a secure socket (using 'ssl.wrap()') without parameters/context", 3)
  end
  local ssl = require("ssl")
  local nskt = assert(ssl.wrap(skt, params))
  nskt:settimeout(0)
  connect_timeouts[nskt], send_timeouts[nskt], read_timeouts[nskt] =
    connect_timeouts[skt], send_timeouts[skt], read_timeouts[skt]
  local co = autoclose_of[skt]
  if co then
    autoclose[co], autoclose_of[nskt], autoclose_of[skt] = nskt, co, nil
  end
  local name = names[skt]
  if name ~= nil and name ~= tostring(skt) then names[nskt] = name end
  -- LuaSec took over the descriptor: the raw object must not answer for it any more.
  watched_fd[skt] = nil
  return nskt
end

function copas.dohandshake(skt, wrap_params)
  check_socket(skt, 1, "dohandshake")
  skt = unwrap(skt)
  local nskt = ssl_wrap(skt, wrap_params)
  local deadline = deadline_for(connect_timeouts[nskt])
  local ready = true
  while true do
    local ok, err = nskt:dohandshake()
    if ok then return nskt end
    if err ~= "wantread" and err ~= "wantwrite" then
      error("TLS/SSL handshake failed: " .. tostring(err), 2)
    end
    if not ready then return nil, timeout_error(err) end
    ready = wait_for(nskt, direction(err, OP_READ), deadline)
    if ready == nil then error("TLS/SSL handshake failed: closed", 2) end
  end
end


-------------------------------------------------------------------------------
-- The socket wrapper
-------------------------------------------------------------------------------

-- A method of the inner socket under pcall: at most `n` results, or nil and `fallback` when
-- it fails (LuaSec objects lack some of LuaSocket's methods).
local function protected(name, n, fallback)
  return function(self, ...)
    local inner = self.socket
    local ok, a, b, c = pcall(inner[name], inner, ...)
    if not ok then return nil, fallback end
    if n == 2 then return a, b end
    return a, b, c
  end
end

local function forwarded(name)
  return function(self, ...)
    local inner = self.socket
    return inner[name](inner, ...)
  end
end

local tcp_methods = {
  send = function(self, data, i, j) return copas.send(self.socket, data, i, j) end,
  receive = function(self, pattern, prefix)
    if read_timeouts[self.socket] == 0 then
      return copas.receivepartial(self.socket, pattern, prefix)
    end
    return copas.receive(self.socket, pattern, prefix)
  end,
  receivepartial = function(self, pattern, prefix)
    return copas.receivepartial(self.socket, pattern, prefix)
  end,
  flush = function(self) copas.flush(self.socket) end,
  settimeout = function(self, t) return copas.settimeout(self.socket, t) end,
  settimeouts = function(self, c, s, r) return copas.settimeouts(self.socket, c, s, r) end,
  connect = function(self, ...)
    local res, err = copas.connect(self.socket, ...)
    if res then
      if self.ssl_params.sni then self:sni() end
      if self.ssl_params.wrap then res, err = self:dohandshake() end
    end
    return res, err
  end,
  close = function(self, ...) return copas.close(self.socket, ...) end,
  bind = forwarded("bind"),
  listen = forwarded("listen"),
  accept = forwarded("accept"),
  shutdown = forwarded("shutdown"),
  getstats = forwarded("getstats"),
  setstats = forwarded("setstats"),
  getsockname = protected("getsockname", 3, "not implemented by LuaSec"),
  getpeername = protected("getpeername", 3, "not implemented by LuaSec"),
  setoption = protected("setoption", 2, "not implemented by LuaSec"),
  getoption = protected("getoption", 2, "not implemented by LuaSec"),
  getalpn = protected("getalpn", 2, "not a tls socket"),
  getsniname = protected("getsniname", 2, "not a tls socket"),
  sni = function(self, names_, strict)
    local sslp = self.ssl_params
    self.socket = ssl_wrap(self.socket, sslp.wrap)
    if names_ == nil then
      names_ = sslp.sni.names
      strict = sslp.sni.strict
    end
    return self.socket:sni(names_, strict)
  end,
  dohandshake = function(self, wrap_params)
    local nskt, err = copas.dohandshake(self.socket, wrap_params or self.ssl_params.wrap)
    if not nskt then return nskt, err end
    self.socket = nskt
    return self
  end,
}

local function wrapped_tostring(self)
  return tostring(self.socket) .. " (copas wrapped)"
end

tcp_mt = { __index = tcp_methods, __tostring = wrapped_tostring }

local udp_methods = {}
for k, v in pairs(tcp_methods) do udp_methods[k] = v end
udp_methods.send = function(self, ...) return self.socket:send(...) end
udp_methods.sendto = function(self, data, ip, port) return copas.sendto(self.socket, data, ip, port) end
udp_methods.receive = function(self, size) return copas.receive(self.socket, size or UDP_DATAGRAM_MAX) end
udp_methods.receivefrom = function(self, size) return copas.receivefrom(self.socket, size or UDP_DATAGRAM_MAX) end
udp_methods.setpeername = function(self, ...) return setpeername(self.socket, ...) end
udp_methods.setsockname = forwarded("setsockname")
-- A UDP server's "client" is the server socket itself: closing it here would end the server.
udp_methods.close = function() return true end

udp_mt = { __index = udp_methods, __tostring = wrapped_tostring }

function copas.wrap(skt, sslt)
  check_socket(skt, 1, "wrap")
  if is_wrapper(skt) then return skt end
  skt:settimeout(0)
  if is_tcp(skt) then
    return setmetatable({ socket = skt, ssl_params = normalize_sslt(sslt) }, tcp_mt)
  end
  return setmetatable({ socket = skt }, udp_mt)
end


-------------------------------------------------------------------------------
-- Servers
-------------------------------------------------------------------------------

local servers = setmetatable({}, { __mode = "k" })   -- server socket -> { handler, fd, count }
local server_at = {}                                  -- fd -> server socket

-- The core calls this for a server whose accept may succeed. 1: accepted one (try again next
-- step); 0: nothing waiting; 2: accept failed (e.g. no descriptors left: retried a bit later).
local function accept_one(fd)
  local server = server_at[fd]
  local srv = server and servers[server]
  if not srv then return 0 end
  local ok, client, err = pcall(server.accept, server)
  if not (ok and client) then
    return ok and err == "timeout" and 0 or 2
  end
  srv.count = srv.count + 1
  local base = name_of(server)
  names[client] = base .. ":client_" .. srv.count
  client:settimeout(0)
  copas.settimeouts(client, connect_timeouts[server] or huge, send_timeouts[server] or huge,
                    read_timeouts[server] or huge)
  local co = coroutine.create(srv.handler)
  names[co] = base .. ":handler_" .. srv.count
  if traced_exits then traced_exits[co] = true end
  local id = sched.attach(co)
  task_ids[co] = id
  if copas.autoclose then
    autoclose[co], autoclose_of[client] = client, co
    sched.watch_exit(id)
  end
  sched.run_now(id, client)
  return 1
end
sched.set_accept_hook(accept_one)

-- Only an accepted client is closed when its handler ends (upstream issue #122).
local function close_autoclosed(co)
  local skt = autoclose[co]
  if skt == nil then return end
  autoclose[co], autoclose_of[skt] = nil, nil
  forget_socket(skt)
  skt:close()
end

sched.set_exit_hook(function(co)
  errhandlers[co] = nil
  close_autoclosed(co)
end)

local function as_function(handler)
  if type(handler) == "function" then return handler end
  return function(...) return handler(...) end
end

function copas.addserver(server, handler, timeout, name)
  check_socket(server, 1, "addserver")
  if not is_callable(handler) then argerror(2, "addserver", "function", handler) end
  if name ~= nil and type(name) ~= "string" then argerror(4, "addserver", "string", name) end
  server:settimeout(0)
  if name then names[server] = name end
  local fd = current_fd(server)
  if fd == nil then error("bad argument #1 to 'addserver' (socket has no descriptor)", 2) end
  if is_tcp(server) then
    servers[server] = { handler = as_function(handler), fd = fd, count = 0 }
    server_at[fd] = server
    sched.add_server(fd, false)
    watched_fd[server], fd_socket[fd] = fd, server
    if timeout then copas.settimeout(server, timeout) end   -- a non-number is ignored, as upstream
  else
    local co = coroutine.create(as_function(handler))
    names[co] = name_of(server) .. ":handler"
    sched.add_server(fd, true)
    watched_fd[server], fd_socket[fd] = fd, server
    if timeout then copas.settimeout(server, timeout) end
    local id = sched.attach(co)
    task_ids[co] = id
    sched.run_now(id, server)
  end
end

function copas.removeserver(server, keep_open)
  check_socket(server, 1, "removeserver")
  local skt = unwrap(server)
  local srv = servers[skt]
  local fd = srv and srv.fd or watched_fd[skt]
  servers[skt] = nil
  if fd then
    if server_at[fd] == skt then server_at[fd] = nil end
    sched.remove_server(fd)
  end
  if keep_open then return true end
  return server:close()
end

function copas.handler(handler, sslparams)
  if not is_callable(handler) then argerror(1, "handler", "function", handler) end
  return function(skt, ...)
    skt = copas.wrap(skt, sslparams)
    local sslp = skt.ssl_params
    if sslp.sni then skt:sni(sslp.sni.names, sslp.sni.strict) end
    if sslp.wrap then
      -- Upstream runs the handler even after a handshake timeout, on a socket that is not TLS.
      if not skt:dohandshake(sslp.wrap) then return end
    end
    return handler(skt, ...)
  end
end


-------------------------------------------------------------------------------
-- The loop, exit signalling, status
-------------------------------------------------------------------------------

function copas.step(timeout)
  check_optional_number(timeout, 1, "step")
  local events = sched.step(timeout)
  -- Upstream without LuaSocket has no select to time out, and always reports true.
  return events or socket == nil
end

function copas.finished()
  return sched.finished()
end

local exiting        -- nil until the first loop, as upstream
local exit_waiters   -- coroutines in waitforexit; nil until the first loop

local function not_looping()
  error("copas has no exit signal before the first copas.loop() (attempt to index a nil value 'exit_semaphore')", 3)
end

function copas.exit()
  if exiting then return end
  exiting = true
  if not exit_waiters then not_looping() end
  -- Every waiter is released (upstream releases only one: its exit semaphore has max 1).
  local waiters = exit_waiters
  exit_waiters = {}
  for i = 1, #waiters do
    copas.wakeup(waiters[i])
  end
end

function copas.exiting()
  return exiting
end

function copas.waitforexit()
  if exiting then return end
  if not exit_waiters then not_looping() end
  exit_waiters[#exit_waiters + 1] = running()
  repeat
    copas.pauseforever()
  until exiting
end

local builtin_step, builtin_finished = copas.step, copas.finished

-- Steps until finished. While copas.step and copas.finished are the built-in ones the steps run
-- in Rust without a return to Lua each time; once a program wraps either, every step goes
-- through the copas table, as upstream's loop does.
local function run_until_finished(timeout)
  if sched.run(copas, builtin_step, builtin_finished, timeout) then return end
  repeat
    copas.step(timeout)
  until copas.finished()
end

function copas.loop(initializer, timeout)
  if type(initializer) == "function" then
    copas.addnamedthread("copas_initializer", initializer)
  else
    timeout = initializer or timeout
  end
  check_optional_number(timeout, type(initializer) == "function" and 2 or 1, "loop")
  exiting = false
  exit_waiters = {}
  copas.running = true
  while true do
    run_until_finished(timeout)
    if copas.exiting() then break end
    copas.exit()
  end
  copas.running = false
end

-- The sockets to close come from the core as descriptors: a finalizer run by any allocation
-- here may add entries to copas's own tables, and a `pairs` walk over a table that grows fails.
function copas.cancelall()
  local waited_on, server_fds = sched.cancel_all()
  for i = 1, #server_fds do
    local server = server_at[server_fds[i]]
    if server then copas.removeserver(server) end
  end
  for i = 1, #waited_on do
    local skt = fd_socket[waited_on[i]]
    if skt then copas.close(skt) end
  end
  timer_callbacks, timer_args = {}, {}
  copas.exit()
end

function copas.status(enable_stats)
  local res = {}
  if enable_stats == true and not sched.stats_enabled() then
    sched.set_stats(true)
  elseif enable_stats == false then
    sched.set_stats(false)
  elseif sched.stats_enabled() then
    sched.take_stats(res)
  end
  local active, sleeping, forever = sched.counts()
  res.running = not not copas.running
  res.timeout = copas.gettimeouts()
  res.timer = sleeping
  res.inactive = forever
  res.read, res.write = sched.io_counts()
  res.active = active
  return res
end


-------------------------------------------------------------------------------
-- Debug logging
-------------------------------------------------------------------------------

copas.debug = {}

-- The yielded value as upstream logs it: pause(0) shows 0, not 0.0.
local function as_logged(seconds)
  if seconds and math.tointeger then return math.tointeger(seconds) or seconds end
  return seconds or 0
end

local function trace_line(logger, with_core)
  return function(event, co, op, seconds)
    local name = copas.getthreadname(co)
    if name == "copas_core_timer" and not with_core then return end
    if event == "resume" then
      logger("resuming '", name, "'")
    elseif event == "exit" then
      if traced_exits and traced_exits[co] then logger("exiting '", name, "'") end
    elseif op == OP_PAUSE then
      logger("yielding '", name, "' to SLEEP for ", as_logged(seconds), " seconds")
    elseif op == OP_FOREVER then
      logger("yielding '", name, "' to SLEEP for ", -1, " seconds")
    elseif op == OP_READ or op == OP_WRITE then
      local skt = fd_socket[seconds]
      logger("yielding '", name, "' to ", op == OP_READ and "READ" or "WRITE", " on '",
             skt and copas.getsocketname(skt) or tostring(seconds), "'")
    end
  end
end

function copas.debug.start(logger, core_timer_too)
  traced_exits = traced_exits or setmetatable({}, { __mode = "k" })
  sched.set_tracer(trace_line(logger or print, core_timer_too))
end

function copas.debug.stop()
  traced_exits = nil
  sched.set_tracer(nil)
end

-- Names for the arguments and results of the calls debug.socket prints; others are numbered.
local CALL_LABELS = {
  settimeout_in = { "socket", "seconds", "mode" },
  connect_in = { "socket", "address", "port" },
  connect_out = { "success", "error" },
  send_in = { "socket", "data", "start index", "end index" },
  send_out = { "last index sent", "error", "last index sent on error" },
  receive_in = { "socket", "pattern", "prefix" },
  receive_out = { "received", "error", "partial data" },
  getfd_out = { "fd" },
  close_out = { "success", "error" },
}

local function print_call(labels, header, ...)
  print(header)
  local n = select("#", ...)
  labels = labels or {}
  for i = 1, math.max(n, #labels) do
    local v = select(i, ...)
    local label = labels[i] or i
    if type(v) == "string" then
      local shown = v:sub(1, 30)
      if shown ~= v then shown = shown .. "(...truncated)" end
      print(("\t%s: '%s' (string #%d)"):format(label, shown, #v))
    else
      print(("\t%s: '%s' (%s)"):format(label, tostring(v), type(v)))
    end
  end
end

local call_count = 0
local debug_socket_mt = {
  __index = function(self, key)
    local original = self.__original_socket
    local value = original[key]
    if type(value) ~= "function" then return value end
    return function(this, ...)
      call_count = call_count + 1
      local id = call_count
      local target = this == self and original or this
      local k = tostring(key)
      print_call(CALL_LABELS[k .. "_in"], id .. "-calling '" .. k .. "' with; ", target, ...)
      local results = { n = 0 }
      local function keep(...) results = { n = select("#", ...), ... } end
      keep(value(target, ...))
      print_call(CALL_LABELS[k .. "_out"], id .. "-results '" .. k .. "' returned; ",
                 unpack(results, 1, results.n))
      return unpack(results, 1, results.n)
    end
  end,
  __tostring = function(self) return tostring(self.__original_socket) end,
}

-- A proxy that prints every call made on the socket (a wrapper gets its inner socket proxied).
function copas.debug.socket(skt)
  if is_wrapper(skt) then
    skt.socket = copas.debug.socket(skt.socket)
    return skt
  end
  check_socket(skt, 1, "socket")
  return setmetatable({ __original_socket = skt }, debug_socket_mt)
end

-- Upstream's tests/tcptimeout.lua checks, with _TEST set, that a thread that timed out on a
-- socket is not kept in upstream's per-thread socket registers. Here a thread's socket state is
-- its wait in the core; these views show a thread for as long as it waits on a socket.
if _G._TEST then
  local waiting_view = setmetatable({}, {
    __index = function(_, co)
      local id = task_ids[co]
      if id and sched.io_waiting(id) then return true end
      return nil
    end,
  })
  copas._socket_register = waiting_view
  copas._operation_register = waiting_view
  copas._timeout_flags = waiting_view
end


-------------------------------------------------------------------------------
-- Helpers for the submodules, kept off the public table (pairs(copas) matches upstream)
-------------------------------------------------------------------------------

local function destroyed_method()
  return nil, "destroyed"
end

copas_mt.internal = {
  -- The metatable of a destroyed lock, semaphore or queue: every method, and any other missing
  -- key, answers nil, "destroyed".
  destroyed_mt = { __index = function() return destroyed_method end },

  -- The running thread as copas keys per-thread state (coxpcall-aware on PUC 5.1).
  running = running,

  -- The running thread, for a wait `level` calls up; raises on the main thread instead.
  waiting_thread = function(level)
    local co, ismain = running()
    if co == nil or ismain then
      error("attempt to yield from outside a coroutine", level + 1)
    end
    return co
  end,

  -- True when `co` has ended or was removed (removethread, cancelall): it will not run again,
  -- so a lock or semaphore must not be handed to it.
  isgone = function(co)
    if coroutine.status(co) == "dead" then return true end
    local id = task_ids[co]
    return id ~= nil and not sched.alive(id)
  end,

  -- The semaphores of copas.semaphore live in the core, by id: count, line and timeouts.
  semaphore = {
    new = sched.semaphore_new,            -- (max, start) -> id
    take = sched.semaphore_take,          -- (id, requested) -> true | false (wait) | error
    give = sched.semaphore_give,          -- (id, amount) -> true | "too many"
    counts = sched.semaphore_counts,      -- (id) -> count, resources waited for minus count
    remove = sched.semaphore_remove,      -- (id, destroyed)
    -- The running thread `co` waits in the line of semaphore `id`, handing over `count` if
    -- given (its copas.timeout is cancelled, as upstream's take replaces it with its own).
    -- Returns 1 granted, 0 timeout, 2 destroyed.
    wait = function(co, id, requested, timeout, count)
      local existing = timeout_ids[co]
      if existing then
        cancel_timer(existing)
        timeout_ids[co] = nil
      end
      return yield(TOKEN, OP_SEMAPHORE, id, requested, timeout, count)
    end,
  },
}

return copas
