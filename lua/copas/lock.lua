--- A (re-entrant) lock for Copas threads, with FIFO hand-off and timeouts.
-- Compatible with Copas 4.11's `copas.lock` (../shared/docs/copas-behaviour.md §9.1), without
-- upstream's bugs: a failed `get(0)` leaves no trace, a waiter woken by an unrelated
-- `copas.wakeup` keeps waiting, a removed or dead waiter is never handed the lock.
--
-- The waiting line is the core's, as a semaphore's (lua/copas/line.lua): a waiter yields once
-- and the core ends its wait with a hand-over, its timeout or the lock's destruction. The owner
-- and its re-entrancy count are kept here.
-- @module copas.lock
local copas = require("copas")
local line = require("copas.line")

local gettime = copas.gettime  -- captured once, like upstream

-- The running Copas thread: on PUC 5.1 a lock taken inside a coxpcall belongs to the Copas
-- thread, not to coxpcall's helper coroutine.
local coroutine_running = getmetatable(copas).internal.running

-- Every method, and any other missing key, of a destroyed object answers nil, "destroyed".
local destroyed_mt = getmetatable(copas).internal.destroyed_mt

-- The running Copas thread; raises before anything gets queued when the caller cannot
-- wait (the main thread), so that no ghost waiter is left behind.
local waiting_thread = getmetatable(copas).internal.waiting_thread

local line_wait, hand_over = line.wait, line.hand_over

local DEFAULT_TIMEOUT = 10

local lock = {}
lock.__index = lock


local function bad_timeout(value, level)
  error("expected timeout (1st argument) to be a number greater than or equal to 0, got: "
        .. tostring(value), level + 1)
end


--- Creates a new lock.
-- @param seconds (optional) default timeout for `get` (default 10, `math.huge` = forever)
-- @param not_reentrant (optional) if truthy, the owner cannot take the lock again
-- @return the lock object
function lock.new(seconds, not_reentrant)
  local timeout = tonumber(seconds or DEFAULT_TIMEOUT)
  if not timeout or not (timeout >= 0) then  -- the negation also rejects NaN
    bad_timeout(seconds, 2)
  end
  local id, keeper = line.new(1, 0)
  return setmetatable({
    timeout = timeout,
    not_reentrant = not_reentrant,
    owner = nil,      -- the thread holding the lock (set on hand-over, before it runs)
    call_count = nil, -- how many times the owner holds it (re-entrancy)
    line = id,        -- the waiting line in the core
    keeper = keeper,  -- frees the line when the lock is collected
    -- The threads in line, so that they live as long as the lock that may be handed to them.
    waiting = {},
  }, lock)
end


-- The slow path of `get`: wait in the core's line until `release` hands the lock over, the
-- timeout passes or the lock is destroyed. Kept out of `get`, whose fast path LuaJIT can then
-- compile.
local function wait_in_line(self, timeout, co)
  local start_time = gettime()
  local ok, err = line_wait(self, co, self.line, 1, timeout, 0)
  local waited = gettime() - start_time
  if not ok then
    return nil, err, waited
  end
  return waited  -- `release` made us the owner already, before we ran
end


--- A lock, as `new` returns it.
-- @type lock

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

  -- Ownership passes before the waiter runs, so a `get` in between queues up. The core skips
  -- waiters that left the line (timed out, removed, dead).
  local next_owner = hand_over(self.line)
  self.owner = next_owner
  self.call_count = next_owner and 1 or nil
  return true
end


--- Destroys the lock; every waiter returns nil + "destroyed" + seconds waited,
-- including one that was handed the lock but has not run yet (as upstream).
-- @return true
function lock:destroy()
  line.destroy(self.line)
  self.destroyed = true
  setmetatable(self, destroyed_mt)
  return true
end


return lock
