-- copas-rs: the public `copas` table over the Rust scheduler in `copas.core`. The contract is
-- upstream Copas 4.11's, ../shared/docs/copas-behaviour.md beside this repository (the §s below).
--
-- This file holds the API table: names, error handlers, threads, pause/wakeup, copas.timeout,
-- loop/step/exit/status, with the late binding through the `copas` table that upstream programs
-- observe. The socket functions and copas.debug come from private modules (copas/socket.lua,
-- server.lua, tls.lua, wrap.lua, debug.lua). Scheduling, sleeping, timers and readiness are in
-- Rust (src/).

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
local OP_SEMAPHORE = core.OP_SEMAPHORE

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


-- What copas's own modules want to hear of a thread's end (see internal.on_exit).
local exit_watchers = setmetatable({}, { __mode = "k" })

local function notify_exit(co)
  local watcher = exit_watchers[co]
  if watcher then
    exit_watchers[co] = nil
    watcher(co)
  end
end

function copas.removethread(co)
  if type(co) ~= "thread" then argerror(1, "removethread", "coroutine", co) end
  local id = task_ids[co]
  if id and sched.remove(id) then notify_exit(co) end
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
-- Sockets: copas/socket.lua, copas/server.lua, copas/tls.lua, copas/wrap.lua
-------------------------------------------------------------------------------

-- What the socket modules take from this file and hand each other: private to this load of
-- copas (never on the copas table), so a reloaded copas starts with fresh socket state too.
local shared = {
  core = core, sched = sched, socket = socket, running = running,
  names = names, name_of = name_of, task_ids = task_ids,
  argerror = argerror, is_callable = is_callable,
  -- while debug logging runs, a handler thread started by accepting is one whose exit is logged
  traced = function(co) if traced_exits then traced_exits[co] = true end end,
  -- debug logging starts (a weak table) and stops (nil) the record of such threads
  set_traced_exits = function(t) traced_exits = t end,
  traced_exits = function() return traced_exits end,
}
require("copas.socket")(copas, shared)
require("copas.server")(copas, shared)
require("copas.tls")(copas, shared)
require("copas.wrap")(copas, shared)

local fd_socket, server_at = shared.fd_socket, shared.server_at
local close_autoclosed = shared.close_autoclosed

sched.set_exit_hook(function(co)
  errhandlers[co] = nil
  close_autoclosed(co)
  notify_exit(co)
end)


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
  error("copas has no exit signal before the first copas.loop() "
    .. "(attempt to index a nil value 'exit_semaphore')", 3)
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
-- Debug logging: copas/debug.lua
-------------------------------------------------------------------------------

require("copas.debug")(copas, shared)


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

  -- Calls `watcher(co)` once when thread `co` ends: it returns, raises, or is removed.
  on_exit = function(co, watcher)
    exit_watchers[co] = watcher
    local id = task_ids[co]
    if id then sched.watch_exit(id) end
  end,

  -- The semaphores of copas.semaphore live in the core, by id: count, line and timeouts.
  semaphore = {
    new = sched.semaphore_new,            -- (max, start) -> id
    take = sched.semaphore_take,          -- (id, requested) -> true | false (wait) | error
    give = sched.semaphore_give,          -- (id, amount) -> true | "too many"
    counts = sched.semaphore_counts,      -- (id) -> count, resources waited for minus count
    remove = sched.semaphore_remove,      -- (id, destroyed)
    hand_over = sched.semaphore_hand_over, -- (id) -> the waiter given one resource, or nil
    GRANTED = core.GRANTED,
    TIMED_OUT = core.TIMED_OUT,
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
