--- Waiting lines in the core (src/semaphore.rs, src/semaphore_waits.rs), for the objects that
-- queue threads: `copas.semaphore` and `copas.lock`. Private to copas-rs.
--
-- A line lives in the core under an id, as long as the Lua object it belongs to: when that
-- object is collected, a finalizer records the id, and the core state is freed on the next
-- `new` (a finalizer may run inside any allocation, also while this module frees ids, so it
-- only records; the list is swapped out before it is walked).
local copas = require("copas")

local core = getmetatable(copas).internal.semaphore

local line = {
  take = core.take,          -- (id, requested) -> true | false (wait) | "too many"; count
  give = core.give,          -- (id, amount) -> true | "too many"; count
  counts = core.counts,      -- (id) -> count, resources waited for minus count, released
  hand_over = core.hand_over, -- (id) -> the waiter given one resource, or nil
}

local core_wait, GRANTED, TIMED_OUT = core.wait, core.GRANTED, core.TIMED_OUT

local collected = {}

local function free_collected()
  if collected[1] == nil then
    return
  end
  local ids = collected
  collected = {}
  for i = 1, #ids do
    core.remove(ids[i], false)
  end
end

-- A value whose finalizer records `id`: a userdata on 5.1/LuaJIT, whose tables have none.
local function finalizer_for(id)
  local function record() collected[#collected + 1] = id end
  if newproxy then
    local proxy = newproxy(true)
    getmetatable(proxy).__gc = record
    return proxy
  end
  return setmetatable({}, { __gc = record })
end

--- A new line of `max` resources holding `start`. Its owner keeps the second result in a field
-- of its own: the line is freed once that value is collected with it.
-- @return the line's id, the finalizer value
function line.new(max, start)
  free_collected()
  local id = core.new(max, start)
  return id, finalizer_for(id)
end

--- Waits in line `id` of `owner` (a semaphore or a lock) for `requested` resources, at most
-- `timeout` seconds; `count`, when given, is the count the owner kept while nobody waited.
-- The waiting thread `co` is kept in `owner.waiting` meanwhile, so that it lives as long as
-- the owner that may serve it.
-- @return true, or nil + "timeout" or "destroyed" (also when served, then destroyed before it ran)
function line.wait(owner, co, id, requested, timeout, count)
  local waiting = owner.waiting  -- still there if the owner is destroyed meanwhile
  waiting[co] = true
  local outcome = core_wait(co, id, requested, timeout, count)
  waiting[co] = nil
  if outcome == TIMED_OUT then
    return nil, "timeout"
  end
  if outcome ~= GRANTED or owner.destroyed then
    return nil, "destroyed"
  end
  return true
end

--- Ends the line now: its waiters' waits return "destroyed".
function line.destroy(id)
  core.remove(id, true)
end

return line
