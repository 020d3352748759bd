--- One-shot and recurring timers, each running in its own Copas thread.
-- Compatible with Copas 4.11's `copas.timer`: the contract is ../shared/docs/copas-behaviour.md
-- §9.4 (beside this repository); README.md lists the upstream bugs fixed here, with their
-- regression specs (spec/timer_spec.lua).
-- @module copas.timer
local copas = require("copas")

local coroutine_running = getmetatable(copas).internal.running
local xpcall = xpcall
if _VERSION == "Lua 5.1" and not jit then
  -- PUC 5.1: callbacks may yield (copas.pause, I/O), which native xpcall cannot carry
  xpcall = require("coxpcall").xpcall
end

local DELAY_MESSAGE = "delay must be greater than or equal to 0"

local timer = {}
timer.__index = timer


local new_name do
  local count = 0

  function new_name()
    count = count + 1
    return "copas_timer_" .. count
  end
end


local function is_delay(value)
  return type(value) == "number" and value >= 0  -- also false for NaN
end


-- Threads currently inside a callback. `cancel` must not wake (let alone remove) such a
-- thread: the callback may be blocked (copas.pause, socket I/O) and runs to its end.
local in_callback = setmetatable({}, { __mode = "k" })


-- The body of the timer thread. A thread fires only while it is the timer's current
-- thread (`self.co`): after a cancel, or a cancel + arm from inside the callback, it ends
-- at its next check and only the newly armed thread lives on.
local function expire(self, initial_delay)
  local me = coroutine_running()
  if self.errorhandler then
    copas.seterrorhandler(self.errorhandler)
  end

  local delay = initial_delay
  while self.co == me do
    copas.pause(delay)  -- `cancel` cuts this short
    if self.co ~= me then
      return
    end

    if not self.recurring then
      self.cancelled = true
      self.co = nil  -- disarmed before the callback, so it can arm the timer again
      self:callback(self.params)
      return
    end

    in_callback[me] = true
    self:callback(self.params)
    in_callback[me] = nil
    delay = self.delay  -- measured from the end of the callback, like upstream
  end
end


--- A timer, as `new` returns it.
-- @type timer

--- Arms the timer (again).
-- @param initial_delay (optional) the first delay, defaults to the timer's delay
-- @return the timer, or nil + "already armed"
function timer:arm(initial_delay)
  if initial_delay ~= nil and not is_delay(initial_delay) then
    error(DELAY_MESSAGE, 2)
  end
  if self.co then
    return nil, "already armed"
  end

  self.cancelled = false
  local delay = initial_delay or self.delay
  -- a closure, not extra addnamedthread arguments: one allocation less per timer
  self.co = copas.addnamedthread(self.name, function() return expire(self, delay) end)
  return self
end


--- Cancels the timer. A callback that is running (even one blocked in a pause or in
-- I/O) runs to its end; it just does not recur.
-- @return the timer, or nil + "not armed"/"already cancelled"
function timer:cancel()
  local co = self.co
  if not co then
    return nil, "not armed"
  end
  if self.cancelled then
    return nil, "already cancelled"
  end

  self.cancelled = true
  self.co = nil
  if not in_callback[co] then
    copas.wakeup(co)  -- it waits for its next expiry: let it end now
  end
  return self
end


do
  -- Reports a callback error to the Copas error handler of the timer thread, so the
  -- timer itself survives it.
  local function report(err)
    return copas.geterrorhandler()(err, coroutine_running(), nil)
  end

  --- @section end

  --- Creates a timer and arms it.
  -- @param opts table with `delay` (seconds), `callback` (`function(timer, params)`),
  -- and optional `recurring`, `initial_delay`, `params`, `name`, `errorhandler`
  -- @return the armed timer
  function timer.new(opts)
    if type(opts) ~= "table" then
      error("expected options (1st argument) to be a table, got: " .. tostring(opts), 2)
    end
    if not is_delay(opts.delay) then
      error(DELAY_MESSAGE, 2)
    end
    if type(opts.callback) ~= "function" then
      error("expected callback to be a function", 2)
    end
    if opts.initial_delay ~= nil and not is_delay(opts.initial_delay) then
      error(DELAY_MESSAGE, 2)
    end
    if opts.errorhandler ~= nil and type(opts.errorhandler) ~= "function" then
      error("expected errorhandler to be a function", 2)
    end

    local user_callback = opts.callback
    local self = setmetatable({
      name = opts.name or new_name(),
      delay = opts.delay,
      callback = function(timer_obj, params)
        xpcall(user_callback, report, timer_obj, params)
      end,
      recurring = not not opts.recurring,
      params = opts.params,
      cancelled = false,
      errorhandler = opts.errorhandler,
    }, timer)
    return self:arm(opts.initial_delay)
  end
end


return timer
