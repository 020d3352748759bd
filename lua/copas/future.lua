--- Futures: run a function in a Copas thread and collect its results later.
-- Compatible with Copas 4.11's `copas.future`: the contract is ../shared/docs/copas-behaviour.md
-- §9.5 (beside this repository); README.md lists the upstream bug fixed here, with its
-- regression spec (spec/future_spec.lua).
-- @module copas.future
local copas = require("copas")
local semaphore = require("copas.semaphore")

local pcall = pcall
if _VERSION == "Lua 5.1" and not jit then
  -- PUC 5.1: the task may yield (copas.pause, I/O), which native pcall cannot carry
  pcall = require("coxpcall").pcall
end

local _unpack = table.unpack or unpack

local function pack(...)
  return { n = select("#", ...), ... }
end

local function unpack(t, i)
  return _unpack(t, i or 1, t.n)
end


local M = {
  SUCCESS = true,
  PENDING = false,
  ERROR = "error",
}

-- Catches typos such as `future.PNEDING`, which would otherwise read as nil (falsy,
-- like PENDING).
setmetatable(M, {
  __index = function(_, key)
    error("unknown field 'future." .. tostring(key) .. "'", 2)
  end,
})


local future = {}
future.__index = future

--- A future, as `addthread` and `addnamedthread` return it.
-- @type future

--- Calling a future is the same as calling its `get` method.
future.__call = function(self, ...)
  return self:get(...)
end


-- Stores the outcome (once) and releases every thread waiting in `get`, however many
-- there are: the semaphore has no cap to truncate the release at.
local function settle(self, results)
  if self.results then
    return  -- a cancel came first; it stays
  end
  self.results = results
  self.sema:give(self.sema:get_wait())
end


--- Waits for the task to end.
-- @return `true, results...` on success, `false, err` on error or cancellation
function future:get()
  while not self.results do
    self.sema:take(1, math.huge)
  end
  return unpack(self.results)
end


--- Checks the task without waiting.
-- @return `PENDING`; `SUCCESS, results...`; or `ERROR, err`
function future:try()
  local results = self.results
  if not results then
    return M.PENDING
  end
  if results[1] then
    return M.SUCCESS, unpack(results, 2)
  end
  return M.ERROR, results[2]
end


--- Cancels the task unless it has ended; the task never runs again.
-- @return true if cancelled, false if it had already ended
function future:cancel()
  if self.results then
    return false
  end
  settle(self, pack(false, "cancelled"))
  copas.removethread(self.coro)
  return true
end


local function is_callable(value)
  if type(value) == "function" then
    return true
  end
  local mt = getmetatable(value)
  return type(mt) == "table" and mt.__call ~= nil
end


--- @section end

--- Like `copas.addnamedthread`, but returns a future for the function's results.
-- @param name the thread name (passed on as is)
-- @param func the function to run
-- @param ... the arguments to call it with
-- @return the future
function M.addnamedthread(name, func, ...)
  if not is_callable(func) then
    error("expected a function to run, got: " .. tostring(func), 2)
  end

  local self = setmetatable({
    results = nil,  -- `pack(true, ...)` or `pack(false, err)` once settled
    sema = semaphore.new(math.huge, 0, math.huge),
    coro = nil,     -- the thread running `func`
  }, future)

  self.coro = copas.addnamedthread(name, function(...)
    settle(self, pack(pcall(func, ...)))
  end, ...)
  return self
end


--- Like `copas.addthread`, but returns a future for the function's results.
function M.addthread(func, ...)
  if not is_callable(func) then
    error("expected a function to run, got: " .. tostring(func), 2)
  end
  return M.addnamedthread(nil, func, ...)
end


return M
