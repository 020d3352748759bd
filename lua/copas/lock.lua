--- A (re-entrant) lock for Copas threads, with FIFO hand-off and timeouts.
-- Compatible with Copas 4.11's `copas.lock`: the contract is ../shared/docs/copas-behaviour.md
-- §9.1 (beside this repository); README.md lists the upstream bugs fixed here, with their
-- regression specs (spec/lock_spec.lua).
local copas = require("copas")

local gettime = copas.gettime  -- captured once, like upstream

-- The running Copas thread: on PUC 5.1 a lock taken inside a coxpcall belongs to the Copas
-- thread, not to coxpcall's helper coroutine.
local coroutine_running = getmetatable(copas).internal.running

local DEFAULT_TIMEOUT = 10

local lock = {}
lock.__index = lock


local function bad_timeout(value, level)
  error("expected timeout (1st argument) to be a number greater than or equal to 0, got: "
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


--- Creates a new lock.
-- @param seconds (optional) default timeout for `get` (default 10, `math.huge` = forever)
-- @param not_reentrant (optional) if truthy, the owner cannot take the lock again
-- @return the lock object
function lock.new(seconds, not_reentrant)
  local timeout = tonumber(seconds or DEFAULT_TIMEOUT)
  if not timeout or not (timeout >= 0) then  -- the negation also rejects NaN
    bad_timeout(seconds, 2)
  end
  return setmetatable({
    timeout = timeout,
    not_reentrant = not_reentrant,
    queue = {},     -- waiters by position; a hole is a waiter that left the line
    q_tip = 0,      -- position of the first in line
    q_tail = 0,     -- position for the next one to queue
    owner = nil,    -- the thread holding the lock
    call_count = nil, -- how many times the owner holds it (re-entrancy)
    handoff = nil,  -- the waiter made owner by `release` that has not run yet
  }, lock)
end


-- Takes a waiter out of the line, ending its wait with `outcome`.
local function leave_queue(self, waiter, outcome)
  waiter.outcome = outcome
  self.queue[waiter.pos] = nil
end


-- Called by the core timer when a waiter's timeout expires.
local function expire(self, waiter)
  if waiter.outcome == nil then
    leave_queue(self, waiter, "timeout")
    copas.wakeup(waiter.co)
  end
end


-- The slow path of `get`: queue up and wait for an outcome. Kept out of `get`, whose fast
-- path LuaJIT can then compile (a closure in the same function stops its traces).
local function wait_in_line(self, timeout, co)
  local waiter = { co = co, pos = self.q_tail, outcome = nil }
  self.queue[waiter.pos] = waiter
  self.q_tail = waiter.pos + 1

  local start_time = gettime()
  if timeout == math.huge then
    copas.timeout(timeout)  -- still cancels the thread's own timeout, as upstream
  else
    copas.timeout(timeout, function() expire(self, waiter) end)
  end
  -- An unrelated copas.wakeup of this thread is not an outcome: keep waiting.
  repeat
    copas.pauseforever()
  until waiter.outcome ~= nil
  local waited = gettime() - start_time
  if rawget(self, "handoff") == waiter then
    self.handoff = nil
  end

  if waiter.outcome ~= "timeout" then
    copas.timeout(0)  -- still armed: cancel it
  end
  if waiter.outcome ~= "granted" then
    return nil, waiter.outcome, waited
  end
  -- `release` already made us the owner, before we ran
  return waited
end


--- Acquires the lock, waiting in line if another thread holds it.
-- @param timeout (optional) seconds to wait, defaults to the lock's timeout;
-- `0` never yields, `math.huge` waits forever
-- @return seconds waited, or nil + "timeout"/"destroyed" + seconds waited
function lock:get(timeout)
  if timeout ~= nil and (type(timeout) ~= "number" or not (timeout >= 0)) then
    bad_timeout(timeout, 2)
  end
  local co = coroutine_running()

  if not self.owner then
    self.owner = co
    self.call_count = 1
    return 0
  end
  if co == self.owner and not self.not_reentrant then
    self.call_count = self.call_count + 1
    return 0
  end

  timeout = timeout or self.timeout
  if timeout == 0 then
    return nil, "timeout", 0  -- checked before queuing: a failed probe leaves no trace
  end
  return wait_in_line(self, timeout, waiting_thread(2))
end


--- Releases the lock, handing it to the next thread in line (FIFO).
-- @return true, or nil + "cannot release a lock not owned"
function lock:release()
  if coroutine_running() ~= self.owner or self.owner == nil then
    return nil, "cannot release a lock not owned"
  end

  self.call_count = self.call_count - 1
  if self.call_count > 0 then
    return true  -- the owner still holds it (re-entrant)
  end

  local queue = self.queue
  while self.q_tip < self.q_tail do
    local waiter = queue[self.q_tip]
    queue[self.q_tip] = nil
    self.q_tip = self.q_tip + 1
    if waiter then
      if is_gone(waiter.co) then
        waiter.outcome = "gone"  -- its pending timer will find nothing to do
      else
        -- ownership passes before the waiter runs, so a `get` in between queues up
        waiter.outcome = "granted"
        self.owner = waiter.co
        self.call_count = 1
        self.handoff = waiter
        copas.wakeup(waiter.co)
        return true
      end
    end
  end

  self.owner = nil
  self.q_tip = 0
  self.q_tail = 0
  return true
end


--- Destroys the lock; every waiter returns nil + "destroyed" + seconds waited,
-- including one that was handed the lock but has not run yet (as upstream).
-- @return true
function lock:destroy()
  local handoff = self.handoff
  if handoff and handoff.outcome == "granted" then
    handoff.outcome = "destroyed"
  end
  self.handoff = nil
  local queue = self.queue
  for pos = self.q_tip, self.q_tail - 1 do
    local waiter = queue[pos]
    if waiter then
      leave_queue(self, waiter, "destroyed")
      copas.wakeup(waiter.co)
    end
  end
  self.queue = {}
  self.q_tip = 0
  self.q_tail = 0
  self.destroyed = true
  setmetatable(self, destroyed_mt)
  return true
end


return lock
