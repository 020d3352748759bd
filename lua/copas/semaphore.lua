--- A counting semaphore for Copas threads: FIFO, with timeouts.
-- Compatible with Copas 4.11's `copas.semaphore`: the contract is ../shared/docs/copas-behaviour.md
-- §9.2 (beside this repository); README.md lists the upstream bugs fixed here, with their
-- regression specs (spec/semaphore_spec.lua).
-- @module copas.semaphore
local copas = require("copas")

local DEFAULT_TIMEOUT = 10

local semaphore = {}
semaphore.__index = semaphore


-- `nth` is part of the message; upstream calls the timeout of `new` (its 3rd
-- argument) the "2nd argument", and that text is kept.
local function bad_timeout(value, nth, level)
  error("expected timeout (" .. nth .. " argument) to be a number greater than or equal to 0, got: "
        .. tostring(value), level + 1)
end


-- Every method, and any other missing key, of a destroyed object answers nil, "destroyed".
local destroyed_mt = getmetatable(copas).internal.destroyed_mt


-- The running Copas thread; raises before anything gets queued when the caller cannot
-- wait (the main thread), so that no ghost waiter is left behind.
local waiting_thread = getmetatable(copas).internal.waiting_thread


-- The waiting line and the timeouts live in the core (lua/copas/line.lua). While nobody waits,
-- the count is kept here (`count`), so that take and give call nothing (and LuaJIT compiles
-- them); a waiter hands it to the core (`in_core`), and a call that finds no waiter left in
-- line takes it back.
local line = require("copas.line")
local core_take, core_give, core_counts, line_wait = line.take, line.give, line.counts, line.wait


--- Creates a new semaphore.
-- @param max the maximum number of resources it can hold
-- @param start (optional) resources available at creation (default 0; not capped at `max`)
-- @param seconds (optional) default timeout for `take` (default 10, `math.huge` = forever)
-- @return the semaphore object
function semaphore.new(max, start, seconds)
  local timeout = tonumber(seconds or DEFAULT_TIMEOUT)
  if not timeout or not (timeout >= 0) then  -- the negation also rejects NaN
    bad_timeout(seconds, "2nd", 2)
  end
  if type(max) ~= "number" or not (max >= 1) then
    error("expected max resources (1st argument) to be a number greater than 0, got: "
          .. tostring(max), 2)
  end
  if start ~= nil and (type(start) ~= "number" or start ~= start) then
    error("expected start (2nd argument) to be a number, got: " .. tostring(start), 2)
  end

  local id, keeper = line.new(max, start or 0)
  local self = setmetatable({
    id = id,
    keeper = keeper,  -- frees the line when the semaphore is collected
    count = start or 0,
    max = max,
    timeout = timeout,
    in_core = false,
    -- The threads in line, so that they live as long as the semaphore that may wake them.
    waiting = {},
  }, semaphore)
  return self
end


--- A semaphore, as `new` returns it.
-- @type semaphore

--- Gives resources back. Over `max` the count is capped, and "too many" is returned
-- (the resources up to the cap are still added and waiters still released).
-- A negative number takes resources away: `give(get_wait())` is the documented
-- idiom to release everyone and leave 0.
-- @param given (optional) number of resources, default 1
-- @return true, or nil + "too many"
function semaphore:give(given)
  local amount = given
  if not amount then  -- nil or false, as upstream's `given or 1`
    amount = 1
  elseif type(amount) ~= "number" then
    amount = tonumber(amount)  -- numeric strings work, as upstream
  end
  if not amount or amount ~= amount then
    error("expected given (1st argument) to be a number, got: " .. tostring(given), 2)
  end
  if self.in_core then
    local ok, count = core_give(self.id, amount)
    if count then
      self.count, self.in_core = count, false
    end
    if ok == true then
      return true
    end
    return nil, ok
  end
  local count = self.count + amount
  if count > self.max then
    self.count = self.max
    return nil, "too many"
  end
  self.count = count
  return true
end


-- The slow path of `take`: wait in line for an outcome. Kept out of `take`, whose fast path
-- LuaJIT can then compile.
local function wait_in_line(self, requested, timeout, co)
  local handed_over = not self.in_core and self.count or nil
  self.in_core = true
  local ok, err = line_wait(self, co, self.id, requested, timeout, handed_over)
  if self.in_core and not self.destroyed then
    local count, _, released = core_counts(self.id)
    if released then
      self.count, self.in_core = count, false
    end
  end
  if not ok then
    return nil, err
  end
  return true
end


--- Takes resources, waiting in line (FIFO) until enough are available.
-- @param requested (optional) number of resources, default 1
-- @param timeout (optional) seconds to wait, defaults to the semaphore's timeout;
-- `0` never yields, `math.huge` waits forever
-- @return true, or nil + "too many"/"timeout"/"destroyed"
function semaphore:take(requested, timeout)
  if requested == nil then
    requested = 1
  elseif type(requested) ~= "number" or not (requested >= 0) then
    error("expected requested (1st argument) to be a number greater than or equal to 0, got: "
          .. tostring(requested), 2)
  end
  if timeout ~= nil and (type(timeout) ~= "number" or not (timeout >= 0)) then
    bad_timeout(timeout, "2nd", 2)
  end

  if self.in_core then
    local taken, count = core_take(self.id, requested)
    if count then
      self.count, self.in_core = count, false
    end
    if taken == true then
      return true
    elseif taken then
      return nil, taken  -- "too many"
    end
  else
    local count = self.count
    if count >= requested then
      self.count = count - requested
      return true
    elseif requested > self.max then
      return nil, "too many"
    end
  end
  timeout = timeout or self.timeout
  if timeout == 0 then
    return nil, "timeout"
  end
  return wait_in_line(self, requested, timeout, waiting_thread(2))
end


--- @return the number of resources available
function semaphore:get_count()
  if self.in_core then
    return (core_counts(self.id))
  end
  return self.count
end


--- @return the resources requested by all waiting threads minus those available
-- (negative when more is available than requested)
function semaphore:get_wait()
  if self.in_core then
    local _, wait = core_counts(self.id)
    return wait
  end
  return 0 - self.count
end


--- Destroys the semaphore: every waiter, however much it asked for, returns
-- nil + "destroyed" (so does one served but not yet run, as upstream).
-- @return true
function semaphore:destroy()
  if getmetatable(self) ~= semaphore then
    error(("bad argument #1 to 'destroy' (semaphore expected, got %s)"):format(type(self)), 2)
  end
  line.destroy(self.id)
  self.destroyed = true
  setmetatable(self, destroyed_mt)
  return true
end


return semaphore
