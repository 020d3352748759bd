-- Specs for copas.exit, copas.exiting, copas.waitforexit and copas.cancelall
-- (behaviour contract §4.5, §4.6, §15.2, §15.17, §16.2).
-- Bug fixes (fail on upstream): exit() releases every waitforexit waiter; cancelall drops
-- pending copas.timeout timers, sleepers, pauseforever threads and ready threads, and the loop
-- ends at once.
local helper = require("spec.helper")
local system = require("system")

local run = helper.loop

describe("before the first loop", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("copas.exiting() returns nil", function()
    assert.is_nil(copas.exiting())
    assert.equal(1, select("#", copas.exiting()))
  end)

  it("copas.exit() raises", function()
    assert.has_error(function() copas.exit() end)
  end)

  it("copas.cancelall() raises", function()
    assert.has_error(function() copas.cancelall() end)
  end)

  it("copas.waitforexit() raises", function()
    assert.has_error(function() copas.waitforexit() end)
  end)
end)

describe("copas.exiting", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("is false while the loop runs, true after copas.exit()", function()
    local before, after
    run(copas, 2, function()
      before = copas.exiting()
      copas.exit()
      after = copas.exiting()
    end)
    assert.is_false(before)
    assert.is_true(after)
  end)

  it("stays true after the loop ended, and is reset by the next loop", function()
    run(copas, 2)
    assert.is_true(copas.exiting())
    local inside
    run(copas, 2, function() inside = copas.exiting() end)
    assert.is_false(inside)
    assert.is_true(copas.exiting())
  end)

  it("lets a polling thread see the exit signal given by another thread", function()
    local seen
    copas.addthread(function()
      while not copas.exiting() do copas.pause(0.01) end
      seen = true
    end)
    -- the poller keeps the loop busy, so the loop itself never detects 'finished'
    copas.addthread(function()
      copas.pause(0.1)
      copas.exit()
    end)
    local elapsed = run(copas, 3)
    assert.is_true(seen)
    assert.is_true(elapsed < 2)
  end)
end)

describe("copas.exit", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("does not stop running threads: the loop continues until the work is done", function()
    local finished_work = false
    run(copas, 3, function()
      copas.addthread(function()
        copas.pause(0.2)
        finished_work = true
      end)
      copas.exit()
    end)
    assert.is_true(finished_work)
  end)

  it("keeps the loop going for work scheduled after the exit signal", function()
    local late = false
    run(copas, 3, function()
      copas.waitforexit()
      copas.addthread(function()
        copas.pause(0.1)
        late = true
      end)
    end)
    assert.is_true(late)
  end)

  it("can be called more than once", function()
    local ok
    run(copas, 2, function()
      copas.exit()
      ok = pcall(copas.exit)
    end)
    assert.is_true(ok)
  end)

  it("returns nothing", function()
    local n
    run(copas, 2, function() n = select("#", copas.exit()) end)
    assert.equal(0, n)
  end)
end)

describe("copas.waitforexit", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("blocks until copas.exit() is called", function()
    local log = {}
    copas.addthread(function()
      copas.waitforexit()
      log[#log + 1] = "released"
    end)
    run(copas, 3, function()
      copas.pause(0.1)
      log[#log + 1] = "exit"
      copas.exit()
    end)
    assert.same({ "exit", "released" }, log)
  end)

  it("does not keep the loop alive: the loop's own exit() releases the waiter", function()
    local released = false
    copas.addthread(function()
      copas.waitforexit()
      released = true
    end)
    local elapsed = run(copas, 3)
    assert.is_true(released)
    assert.is_true(elapsed < 1)
  end)

  it("returns at once once exiting", function()
    local returned = false
    run(copas, 2, function()
      copas.exit()
      copas.waitforexit()
      returned = true
    end)
    assert.is_true(returned)
  end)

  it("releases every waiter on exit() (bug fix; upstream releases only one)", function()
    local released = 0
    for _ = 1, 3 do
      copas.addthread(function()
        copas.waitforexit()
        released = released + 1
      end)
    end
    run(copas, 3, function()
      copas.pause(0.05)
      copas.exit()
    end)
    assert.equal(3, released)
  end)

  it("releases every waiter when the loop itself signals the exit (bug fix)", function()
    local released = 0
    for _ = 1, 4 do
      copas.addthread(function()
        copas.waitforexit()
        released = released + 1
      end)
    end
    run(copas, 3)
    assert.equal(4, released)
  end)

  it("lets waiters clean up with copas calls after the signal", function()
    local cleaned = false
    copas.addthread(function()
      copas.waitforexit()
      copas.pause(0.05)
      cleaned = true
    end)
    run(copas, 3)
    assert.is_true(cleaned)
  end)
end)

describe("copas.cancelall", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  -- runs a loop in which `setup` creates work and a separate thread calls cancelall after 0.1 s;
  -- returns the loop's duration
  local function cancel_after(setup)
    setup()
    return run(copas, 4, function()
      copas.pause(0.1)
      copas.cancelall()
    end)
  end

  it("drops sleeping threads and ends the loop at once", function()
    local resumed = false
    local elapsed = cancel_after(function()
      copas.addthread(function() copas.pause(3); resumed = true end)
    end)
    assert.is_false(resumed)
    assert.is_true(elapsed < 1, "loop took " .. elapsed)
  end)

  it("drops threads sleeping for math.huge", function()
    local resumed = false
    local elapsed = cancel_after(function()
      copas.addthread(function() copas.pause(math.huge); resumed = true end)
    end)
    assert.is_false(resumed)
    assert.is_true(elapsed < 1, "loop took " .. elapsed)
  end)

  it("signals the exit", function()
    cancel_after(function() end)
    assert.is_true(copas.exiting())
  end)

  it("drops pending copas.timeout timers; their callbacks never run (bug fix)", function()
    local fired = false
    local count
    local elapsed = cancel_after(function()
      copas.addthread(function()
        copas.timeout(0.3, function(co) fired = true; copas.wakeup(co) end)
        copas.pauseforever()
      end)
    end)
    count = copas.gettimeouts()
    system.sleep(0.3)
    for _ = 1, 3 do copas.step(0) end
    assert.equal(0, count)
    assert.is_false(fired)
    assert.is_true(elapsed < 0.25, "loop took " .. elapsed)
  end)

  it("drops pauseforever threads: a later wakeup does not resume them (bug fix)", function()
    local resumed = false
    local sleeper
    cancel_after(function()
      sleeper = copas.addthread(function()
        copas.pauseforever()
        resumed = true
      end)
    end)
    copas.wakeup(sleeper)
    run(copas, 2)
    assert.is_false(resumed)
    assert.equal(0, copas.status().inactive)
  end)

  it("drops threads that are ready to run", function()
    local ran = false
    run(copas, 3, function()
      copas.addthread(function() ran = true end)
      copas.cancelall()
    end)
    assert.is_false(ran)
  end)

  it("drops threads already scheduled in the current step (bug fix: cancelall is complete)", function()
    local ran = false
    copas.loop(function() end) -- first loop, so cancelall does not raise
    copas.addthread(function() copas.cancelall() end)
    copas.addthread(function() ran = true end)
    copas.step(0)
    copas.step(0)
    assert.is_false(ran)
  end)

  it("ends the loop at once even with a timeout-guarded forever sleeper (bug fix)", function()
    -- upstream keeps the timer-wheel timer: timer + forever sleeper keep finished() false
    local elapsed = cancel_after(function()
      copas.addthread(function()
        copas.timeout(1, function(co) copas.wakeup(co) end)
        copas.pauseforever()
      end)
    end)
    assert.is_true(elapsed < 0.5, "loop took " .. elapsed)
  end)

  it("leaves copas usable: a new loop runs new threads", function()
    cancel_after(function()
      copas.addthread(function() copas.pause(2) end)
    end)
    local ran = false
    run(copas, 2, function() copas.pause(0.01); ran = true end)
    assert.is_true(ran)
    assert.is_true(copas.finished())
  end)

  it("leaves status counters at zero", function()
    cancel_after(function()
      copas.addthread(function() copas.pause(2) end)
      copas.addthread(function() copas.pause(math.huge) end)
      copas.addthread(function() copas.timeout(2, function() end); copas.pauseforever() end)
    end)
    local s = copas.status()
    assert.equal(0, s.active)
    assert.equal(0, s.timer)
    assert.equal(0, s.timeout)
    assert.equal(0, s.inactive)
    assert.equal(0, s.read)
    assert.equal(0, s.write)
  end)
end)
