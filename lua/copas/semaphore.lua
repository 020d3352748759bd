--- A counting semaphore for Copas threads: FIFO, with timeouts.
-- Compatible with Copas 4.11's `copas.semaphore`; see docs/copas-behaviour.md §9.2 for
-- the contract and the upstream bugs fixed here.
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


-- A thread that died or was removed (copas.removethread, copas.cancelall) will never run
-- again, so it must not be handed anything.
local is_gone = getmetatable(copas).internal.isgone

-- Every method, and any other missing key, of a destroyed object answers nil, "destroyed".
local destroyed_mt = getmetatable(copas).internal.destroyed_mt


-- The running Copas thread; raises before anything gets queued when the caller cannot
-- wait (the main thread), so that no ghost waiter is left behind.
local waiting_thread = getmetatable(copas).internal.waiting_thread


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

  return setmetatable({
    count = start or 0,
    max = max,
    timeout = timeout,
    queue = {},   -- waiters by position; a hole is a waiter that left the line
    q_tip = 1,    -- position of the first in line
    q_tail = 1,   -- position for the next one to queue
  }, semaphore)
end


-- Hands resources to the waiters at the head of the line, strictly in order, until one
-- cannot be satisfied. Holes and threads that will never run again are dropped on the
-- way, so the head of a non-empty line is always a live waiter that must wait.
local function serve(self)
  local pos, tail = self.q_tip, self.q_tail
  if pos == tail then return end
  local queue = self.queue
  while pos < tail do
    local waiter = queue[pos]
    if waiter then
      if is_gone(waiter.co) then
        waiter.outcome = "gone"  -- its pending timer will find nothing to do
      elseif waiter.requested <= self.count then
        self.count = self.count - waiter.requested
        waiter.outcome = "granted"
        copas.wakeup(waiter.co)
      else
        break
      end
      queue[pos] = nil
    end
    pos = pos + 1
  end

  if pos >= tail then
    -- every served position was cleared: the line starts over in the same table
    self.q_tip = 1
    self.q_tail = 1
  else
    self.q_tip = pos
  end
end


-- Called by the core timer when a waiter's timeout expires.
local function expire(self, waiter)
  if waiter.outcome == nil then
    waiter.outcome = "timeout"
    self.queue[waiter.pos] = nil
    copas.wakeup(waiter.co)
    -- the line may have been blocked by this waiter alone
    serve(self)
  end
end


--- Gives resources back. Over `max` the count is capped, and "too many" is returned
-- (the resources up to the cap are still added and waiters still released).
-- A negative number takes resources away: `give(get_wait())` is the documented
-- idiom to release everyone and leave 0.
-- @param given (optional) number of resources, default 1
-- @return true, or nil + "too many"
function semaphore:give(given)
  local amount = given or 1
  if type(amount) ~= "number" then
    amount = tonumber(amount)  -- numeric strings work, as upstream
  end
  if not amount or amount ~= amount then
    error("expected given (1st argument) to be a number, got: " .. tostring(given), 2)
  end

  local count = self.count + amount
  local max = self.max
  if count > max then
    self.count = max
    serve(self)
    return nil, "too many"
  end
  self.count = count
  serve(self)
  return true
end


-- The slow path of `take`: queue up and wait for an outcome. Kept out of `take`, whose fast
-- path LuaJIT can then compile (a closure in the same function stops its traces).
local function wait_in_line(self, requested, timeout, co)
  local waiter = { co = co, requested = requested, pos = self.q_tail }
  self.queue[waiter.pos] = waiter
  self.q_tail = waiter.pos + 1

  local timed = timeout ~= math.huge
  if timed then
    copas.timeout(timeout, function() expire(self, waiter) end)
  else
    copas.timeout(timeout)  -- still cancels the thread's own timeout, as upstream
  end
  -- An unrelated copas.wakeup of this thread is not an outcome: keep waiting.
  repeat
    copas.pauseforever()
  until waiter.outcome ~= nil

  if waiter.outcome == "timeout" then
    return nil, "timeout"
  end
  if timed then
    copas.timeout(0)  -- still armed: cancel it
  end
  if self.destroyed then
    return nil, "destroyed"
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

  if self.q_tip ~= self.q_tail then
    serve(self)  -- a removed thread at the head must not block a take that can be satisfied
  end
  local count = self.count
  if count >= requested and self.q_tip == self.q_tail then
    self.count = count - requested
    return true
  end

  if requested > self.max then
    return nil, "too many"
  end
  timeout = timeout or self.timeout
  if timeout == 0 then
    return nil, "timeout"
  end

  return wait_in_line(self, requested, timeout, waiting_thread(2))
end


--- @return the number of resources available
function semaphore:get_count()
  return self.count
end


--- @return the resources requested by all waiting threads minus those available
-- (negative when more is available than requested)
function semaphore:get_wait()
  local wait = 0
  local queue = self.queue
  for pos = self.q_tip, self.q_tail - 1 do
    local waiter = queue[pos]
    if waiter and not is_gone(waiter.co) then
      wait = wait + waiter.requested
    end
  end
  return wait - self.count
end


--- Destroys the semaphore: every waiter, however much it asked for, returns
-- nil + "destroyed" (so does one served but not yet run, as upstream).
-- @return true
function semaphore:destroy()
  local queue = self.queue
  for pos = self.q_tip, self.q_tail - 1 do
    local waiter = queue[pos]
    if waiter then
      waiter.outcome = "destroyed"
      copas.wakeup(waiter.co)
    end
  end
  self.queue = {}
  self.q_tip = 1
  self.q_tail = 1
  self.count = self.max
  self.destroyed = true
  setmetatable(self, destroyed_mt)
  return true
end


return semaphore
