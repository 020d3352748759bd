-- Specs for copas.timer (behaviour contract §9.4, §15.13, §15.22).
-- Bug fixes (fail on upstream 4.11): cancelling a recurring timer whose callback is blocked
-- lets that callback run to its end and stops the recurrence (#206); cancel + arm from inside
-- a recurring callback, repeated, leaves exactly one live timer thread (#213).
local helper = require("spec.helper")


local EPS = 0.01     -- clock granularity
local LATE = 0.25    -- upstream fires timers up to 0.2 s late

local run = helper.run

local function noop() end


describe("copas.timer.new()", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("returns an armed timer with the given fields", function()
    local params = {}
    local t = copas.timer.new({ name = "tick", delay = 1, callback = noop, params = params,
                                recurring = 1 })
    assert.equal("tick", t.name)
    assert.equal(1, t.delay)
    assert.equal(params, t.params)
    assert.is_true(t.recurring)
    assert.is_false(t.cancelled)
    assert.equal("thread", type(t.co))
    assert.equal("tick", copas.getthreadname(t.co))
    assert.is_function(t.callback)
    assert.are_not.equal(noop, t.callback)  -- the field holds the protecting wrapper
    t:cancel()
  end)

  it("names timers copas_timer_<n> by default and makes them one-shot", function()
    local t1 = copas.timer.new({ delay = 1, callback = noop })
    local t2 = copas.timer.new({ delay = 1, callback = noop })
    assert.matches("^copas_timer_%d+$", t1.name)
    assert.are_not.equal(t1.name, t2.name)
    assert.is_false(t1.recurring)
    t1:cancel()
    t2:cancel()
  end)

  it("raises on a missing or negative delay", function()
    local msg = "delay must be greater than or equal to 0"
    assert.has_error(function() copas.timer.new({ callback = noop }) end, msg)
    assert.has_error(function() copas.timer.new({ delay = -1, callback = noop }) end, msg)
    assert.has_error(function() copas.timer.new({ delay = "1", callback = noop }) end, msg)
    assert.has_error(function()
      copas.timer.new({ delay = 1, initial_delay = -1, callback = noop })
    end, msg)
  end)

  it("raises on a callback that is not a function", function()
    assert.has_error(function() copas.timer.new({ delay = 1 }) end,
      "expected callback to be a function")
    assert.has_error(function() copas.timer.new({ delay = 1, callback = "go" }) end,
      "expected callback to be a function")
  end)

  it("raises on options that are not a table", function()
    assert.has_error(function() copas.timer.new() end)
    assert.has_error(function() copas.timer.new(1) end)
  end)
end)


describe("a one-shot timer", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("calls back once, after the delay, with the timer and the params", function()
    local calls, args, elapsed = 0, nil, nil
    local t
    run(copas, function()
      local t0 = copas.gettime()
      t = copas.timer.new({ delay = 0.2, params = "p", callback = function(...)
        calls = calls + 1
        args = { ... }
        elapsed = copas.gettime() - t0
      end })
      copas.pause(0.6)
    end)
    assert.equal(1, calls)
    assert.equal(t, args[1])
    assert.equal("p", args[2])
    assert.is_true(elapsed >= 0.2 - EPS and elapsed < 0.2 + LATE, "fired after " .. elapsed)
    assert.is_nil(t.co)
    assert.is_true(t.cancelled)
  end)

  it("uses initial_delay for the first expiry", function()
    local elapsed
    run(copas, function()
      local t0 = copas.gettime()
      copas.timer.new({ delay = 5, initial_delay = 0.1, callback = function()
        elapsed = copas.gettime() - t0
      end })
      copas.pause(0.5)
    end)
    assert.is_true(elapsed >= 0.1 - EPS and elapsed < 0.1 + LATE, "fired after " .. elapsed)
  end)

  it("with delay 0 fires on the next step", function()
    local fired
    run(copas, function()
      copas.timer.new({ delay = 0, callback = function() fired = true end })
      assert.is_nil(fired)
      copas.pause(0.05)
    end)
    assert.is_true(fired)
  end)

  it("can arm itself again from its callback, with a new delay", function()
    local times = {}
    run(copas, function()
      local t0 = copas.gettime()
      copas.timer.new({ delay = 0.1, callback = function(t)
        times[#times + 1] = copas.gettime() - t0
        if #times == 1 then
          assert.equal(t, t:arm(0.3))
        end
      end })
      copas.pause(0.8)
    end)
    assert.equal(2, #times)
    local gap = times[2] - times[1]
    assert.is_true(gap >= 0.3 - EPS and gap < 0.3 + LATE, "re-armed after " .. gap)
  end)

  it("does not fire once cancelled; cancel returns the timer", function()
    local fired
    run(copas, function()
      local t = copas.timer.new({ delay = 0.1, callback = function() fired = true end })
      assert.equal(t, t:cancel())
      assert.is_true(t.cancelled)
      assert.is_nil(t.co)
      copas.pause(0.3)
    end)
    assert.is_nil(fired)
  end)

  it("does not keep the loop alive once cancelled", function()
    local t0 = copas.gettime()
    run(copas, function()
      copas.timer.new({ delay = 3, callback = noop }):cancel()
      copas.timer.new({ delay = 3, recurring = true, callback = noop }):cancel()
    end)
    assert.is_true(copas.gettime() - t0 < 1)
  end)

  it("can be armed again after a cancel", function()
    local fired = 0
    run(copas, function()
      local t = copas.timer.new({ delay = 0.1, callback = function() fired = fired + 1 end })
      t:cancel()
      assert.equal(t, t:arm())
      assert.is_false(t.cancelled)
      copas.pause(0.3)
    end)
    assert.equal(1, fired)
  end)
end)


describe("a recurring timer", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("keeps firing every delay until cancelled", function()
    local count = 0
    run(copas, function()
      local t = copas.timer.new({ delay = 0.1, recurring = true, callback = function()
        count = count + 1
      end })
      copas.pause(0.55)
      t:cancel()
      local at_cancel = count
      copas.pause(0.3)
      assert.equal(at_cancel, count)
    end)
    assert.is_true(count >= 3 and count <= 5, "fired " .. count .. " times")
  end)

  it("counts the delay from the end of the callback", function()
    local starts = {}
    run(copas, function()
      local t0 = copas.gettime()
      copas.timer.new({ delay = 0.1, initial_delay = 0, recurring = true, callback = function(t)
        starts[#starts + 1] = copas.gettime() - t0
        copas.pause(0.2)  -- a slow callback
        if #starts == 2 then t:cancel() end
      end })
      copas.pause(0.8)
    end)
    assert.equal(2, #starts)
    local period = starts[2] - starts[1]
    assert.is_true(period >= 0.3 - EPS, "period " .. period)
  end)

  it("cannot be armed while armed", function()
    local result
    run(copas, function()
      local t = copas.timer.new({ delay = 0.05, recurring = true, callback = function(t)
        result = { t:arm(1) }
        t:cancel()
      end })
      assert.same({ nil, "already armed" }, { t:arm() })
      copas.pause(0.2)
    end)
    assert.same({ nil, "already armed" }, result)
  end)

  it("stops after a cancel from its own callback, which runs to its end (#206)", function()
    local count, finished = 0, 0
    run(copas, function()
      copas.timer.new({ delay = 0.05, recurring = true, callback = function(t)
        count = count + 1
        if count == 2 then t:cancel() end
        copas.pause(0.01)
        finished = finished + 1
      end })
      copas.pause(0.4)
    end)
    assert.equal(2, count)
    assert.equal(2, finished)
  end)

  it("lets a callback blocked in a pause finish when cancelled, and stops (#206)", function()
    local count, finished = 0, 0
    run(copas, function()
      local t = copas.timer.new({ delay = 0.1, recurring = true, callback = function()
        count = count + 1
        copas.pause(0.3)
        finished = finished + 1
      end })
      copas.pause(0.2)  -- the first callback is now blocked in its pause
      assert.equal(1, count)
      assert.equal(t, t:cancel())
      copas.pause(0.6)
    end)
    assert.equal(1, count)
    assert.equal(1, finished)
  end)

  it("lets a callback blocked in socket I/O finish when cancelled, and stops (#206)", function()
    if not copas.wrap then
      pending("copas.wrap is not available in this build yet")
      return
    end
    local socket = require("socket")
    local server = assert(socket.bind("127.0.0.1", 0))
    local _, port = server:getsockname()
    local count, received = 0, {}
    run(copas, function()
      local client = copas.wrap(socket.tcp())
      assert(client:connect("127.0.0.1", port))
      local peer = assert(server:accept())
      local t = copas.timer.new({ delay = 0.05, recurring = true, callback = function()
        count = count + 1
        client:settimeout(2)
        received[#received + 1] = client:receive("*l")  -- blocks until the peer talks
      end })
      copas.pause(0.15)
      assert.equal(1, count)
      t:cancel()
      peer:send("late\n")
      copas.pause(0.3)
      client:close()
      peer:close()
    end)
    server:close()
    assert.equal(1, count)
    assert.same({ "late" }, received)
  end)

  it("leaves one live thread after cancel + arm from its callback, many times (#213)", function()
    local threads, count = {}, 0
    local timer, alive_armed, last
    run(copas, function()
      timer = copas.timer.new({ delay = 0, recurring = true, callback = function(t)
        count = count + 1
        if count < 1000 then
          t:cancel()
          t:arm()
          threads[#threads + 1] = t.co
        end
      end })
      threads[#threads + 1] = timer.co
      while count < 1000 do copas.pause(0.01) end
      copas.pause(0.05)  -- it keeps recurring meanwhile
      alive_armed = {}
      for _, co in ipairs(threads) do
        if coroutine.status(co) ~= "dead" then alive_armed[#alive_armed + 1] = co end
      end
      last = timer.co
      timer:cancel()
      copas.pause(0.05)
    end, 10)
    assert.equal(1000, #threads)
    assert.is_true(count > 1000)
    assert.same({ last }, alive_armed)
    assert.equal("dead", coroutine.status(last))
  end)

  it("survives errors in its callback, reporting them to its errorhandler", function()
    local reports, count = {}, 0
    local timer_co
    run(copas, function()
      local t = copas.timer.new({
        name = "failing",
        delay = 0.05,
        recurring = true,
        errorhandler = function(msg, co)
          reports[#reports + 1] = { msg = tostring(msg), co = co,
                                    trace = copas.gettraceback(msg, co) }
        end,
        callback = function(t)
          count = count + 1
          if count == 3 then t:cancel() end
          error("failure " .. count)
        end,
      })
      timer_co = t.co
      copas.pause(0.5)
    end)
    assert.equal(3, count)
    assert.equal(3, #reports)
    for i, report in ipairs(reports) do
      assert.matches("failure " .. i, report.msg)  -- PUC 5.1 hands a traceback
      assert.equal(timer_co, report.co)
      assert.matches("failing", report.trace)
    end
  end)

  it("reports callback errors to the default error handler without an errorhandler", function()
    local copas_errors = {}
    local count = 0
    local errors_seen
    run(copas, function()
      copas.seterrorhandler(function(msg) copas_errors[#copas_errors + 1] = tostring(msg) end,
                            true)
      copas.timer.new({ delay = 0.05, recurring = true, callback = function(t)
        count = count + 1
        if count == 2 then t:cancel() end
        error("oops " .. count)
      end })
      copas.pause(0.4)
      errors_seen = #copas_errors
    end)
    assert.equal(2, count)
    assert.equal(2, errors_seen)
    assert.matches("oops 1", copas_errors[1])
  end)
end)


describe("timer:arm() and timer:cancel()", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("cancel on a timer that is not armed returns nil, 'not armed'", function()
    local result
    run(copas, function()
      local t = copas.timer.new({ delay = 0, callback = function(t)
        result = { t:cancel() }  -- a one-shot is disarmed before its callback
      end })
      copas.pause(0.05)
      assert.same({ nil, "not armed" }, { t:cancel() })
    end)
    assert.same({ nil, "not armed" }, result)
  end)

  it("arm raises on a negative delay", function()
    local t = copas.timer.new({ delay = 1, callback = noop })
    t:cancel()
    assert.has_error(function() t:arm(-1) end, "delay must be greater than or equal to 0")
    assert.has_error(function() t:arm("1") end, "delay must be greater than or equal to 0")
    assert.is_nil(t.co)
  end)
end)
