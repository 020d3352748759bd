-- Specs for copas.pause, copas.pauseforever, copas.sleep (deprecated) and copas.wakeup
-- (behaviour contract §2.8, §4.4, §15.2, §15.3).
local helper = require("spec.helper")
local system = require("system")
local clock = system.gettime

local run = helper.loop

local EPS = 0.002 -- clock-read tolerance

describe("copas.pause", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("sleeps at least the given time and returns the elapsed seconds", function()
    local elapsed, measured
    copas.addthread(function()
      local t0 = clock()
      elapsed = copas.pause(0.2)
      measured = clock() - t0
    end)
    run(copas, 3)
    assert.is_number(elapsed)
    assert.is_true(measured >= 0.2 - EPS, "woke after " .. measured)
    assert.is_true(elapsed >= 0.2 - EPS, "returned " .. elapsed)
    assert.is_true(elapsed < 0.6, "returned " .. elapsed)
    assert.is_true(math.abs(elapsed - measured) < 0.05)
  end)

  it("with nil, 0 or a negative value yields for exactly one step", function()
    for _, arg in ipairs({ "nil", 0, -1, -0.5 }) do
      local value = (arg ~= "nil") and arg or nil
      local log = {}
      copas.addthread(function()
        log[#log + 1] = "a1"
        local r = copas.pause(value)
        assert(type(r) == "number" and r >= 0)
        log[#log + 1] = "a2"
      end)
      copas.addthread(function()
        log[#log + 1] = "b1"
        copas.pause(value)
        log[#log + 1] = "b2"
      end)
      copas.step(0)
      assert.same({ "a1", "b1" }, log, "after step 1 with pause(" .. tostring(arg) .. ")")
      copas.step(0)
      assert.same({ "a1", "b1", "a2", "b2" }, log, "after step 2 with pause(" .. tostring(arg) .. ")")
    end
  end)

  it("runs a pause(0) loop only once per step", function()
    local n = 0
    copas.addthread(function()
      while true do
        n = n + 1
        copas.pause(0)
      end
    end)
    for i = 1, 5 do
      copas.step(0)
      assert.equal(i, n)
    end
  end)

  it("wakes sleepers in deadline order", function()
    local order = {}
    for _, d in ipairs({ 0.15, 0.05, 0.1, 0.2 }) do
      copas.addthread(function()
        copas.pause(d)
        order[#order + 1] = d
      end)
    end
    run(copas, 3)
    assert.same({ 0.05, 0.1, 0.15, 0.2 }, order)
  end)

  it("does not block other threads while sleeping", function()
    local ticks = 0
    copas.addthread(function() copas.pause(0.3) end)
    copas.addthread(function()
      for _ = 1, 10 do
        ticks = ticks + 1
        copas.pause(0.01)
      end
    end)
    local t0 = clock()
    run(copas, 3)
    assert.equal(10, ticks)
    assert.is_true(clock() - t0 < 1)
  end)

  it("keeps the loop alive while a thread sleeps", function()
    local done = false
    copas.addthread(function()
      copas.pause(0.3)
      done = true
    end)
    local elapsed = run(copas, 3)
    assert.is_true(done)
    assert.is_true(elapsed >= 0.3 - EPS)
  end)

  it("with math.huge keeps the loop alive until woken", function()
    local sleeper, elapsed
    sleeper = copas.addthread(function()
      elapsed = copas.pause(math.huge)
    end)
    copas.step(0)
    copas.step(0)
    assert.is_false(copas.finished())
    copas.addthread(function()
      copas.pause(0.2)
      copas.wakeup(sleeper)
    end)
    run(copas, 3)
    assert.is_number(elapsed)
    assert.is_true(elapsed >= 0.2 - EPS and elapsed < 1, "elapsed " .. tostring(elapsed))
  end)

  -- Fails before the fix: the delay in nanoseconds was cut to 64 bits, so 2^64 ns (about 585
  -- years) and more wrapped round to a deadline a moment away.
  it("with a finite delay of centuries does not wake early", function()
    local woke = false
    copas.addthread(function()
      copas.pause(18446744074)  -- 2^64 ns and a bit
      woke = true
    end)
    local deadline = require("system").gettime() + 0.5
    while require("system").gettime() < deadline do copas.step(0.05) end
    assert.is_false(woke)
    assert.is_false(copas.finished())
  end)

  it("raises when called outside a copas thread", function()
    assert.has_error(function() copas.pause(0.01) end)
  end)
end)

describe("copas.pauseforever", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("sleeps until woken and returns the elapsed seconds", function()
    local elapsed
    local sleeper = copas.addthread(function()
      elapsed = copas.pauseforever()
    end)
    copas.addthread(function()
      copas.pause(0.2)
      copas.wakeup(sleeper)
    end)
    run(copas, 3)
    assert.is_number(elapsed)
    assert.is_true(elapsed >= 0.2 - EPS and elapsed < 1, "elapsed " .. tostring(elapsed))
  end)

  it("does not keep the loop alive by itself", function()
    local resumed = false
    copas.addthread(function()
      copas.pauseforever()
      resumed = true
    end)
    local elapsed = run(copas, 3)
    assert.is_false(resumed)
    assert.is_true(elapsed < 1, "loop took " .. elapsed)
  end)

  it("does not resume the thread on its own, however many steps run", function()
    local resumed = false
    copas.addthread(function()
      copas.pauseforever()
      resumed = true
    end)
    for _ = 1, 20 do copas.step(0) end
    copas.step(0.1)
    assert.is_false(resumed)
  end)
end)

describe("copas.wakeup", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("ends a pause early; pause returns the real elapsed time", function()
    local elapsed
    local sleeper = copas.addthread(function()
      elapsed = copas.pause(10)
    end)
    local t0 = clock()
    copas.addthread(function()
      copas.pause(0.1)
      copas.wakeup(sleeper)
    end)
    run(copas, 3)
    assert.is_true(clock() - t0 < 2)
    assert.is_true(elapsed >= 0.1 - EPS and elapsed < 1, "elapsed " .. tostring(elapsed))
  end)

  it("schedules the woken thread for the next step when called from a running thread", function()
    local log = {}
    local sleeper = copas.addthread(function()
      copas.pauseforever()
      log[#log + 1] = "woken"
    end)
    copas.step(0) -- sleeper now sleeps forever
    copas.addthread(function()
      copas.wakeup(sleeper)
      log[#log + 1] = "waker"
    end)
    copas.step(0)
    assert.same({ "waker" }, log)
    copas.step(0)
    assert.same({ "waker", "woken" }, log)
  end)

  it("called from the main thread between steps runs the thread in the next step", function()
    local woken = false
    local sleeper = copas.addthread(function()
      copas.pause(10)
      woken = true
    end)
    copas.step(0)
    copas.wakeup(sleeper)
    copas.step(0)
    assert.is_true(woken)
  end)

  it("resumes woken threads in the order they were woken", function()
    local order, threads = {}, {}
    for i = 1, 4 do
      threads[i] = copas.addthread(function()
        copas.pauseforever()
        order[#order + 1] = i
      end)
    end
    copas.step(0)
    copas.wakeup(threads[3])
    copas.wakeup(threads[1])
    copas.wakeup(threads[4])
    copas.wakeup(threads[2])
    copas.step(0)
    assert.same({ 3, 1, 4, 2 }, order)
  end)

  it("does nothing for a thread that is already scheduled to run", function()
    local runs = 0
    local co = copas.addthread(function()
      runs = runs + 1
      copas.pause(0)
      runs = runs + 1
    end)
    copas.wakeup(co) -- not yet started: it is in the resumable list
    copas.step(0)
    assert.equal(1, runs)
    copas.wakeup(co) -- did pause(0): resumable again
    copas.step(0)
    assert.equal(2, runs)
    run(copas, 2)
    assert.equal(2, runs)
  end)

  it("does nothing for a dead thread or a coroutine copas does not know", function()
    local dead = copas.addthread(function() end)
    run(copas, 2)
    assert.has_no.errors(function() copas.wakeup(dead) end)
    local resumed = false
    local foreign = coroutine.create(function() resumed = true end)
    assert.has_no.errors(function() copas.wakeup(foreign) end)
    run(copas, 2)
    assert.is_false(resumed)
    assert.equal("suspended", coroutine.status(foreign))
  end)

  it("waking a thread twice resumes it once", function()
    local runs = 0
    local co = copas.addthread(function()
      copas.pauseforever()
      runs = runs + 1
      copas.pauseforever()
      runs = runs + 1
    end)
    copas.step(0)
    copas.wakeup(co)
    copas.wakeup(co)
    copas.step(0)
    copas.step(0)
    copas.step(0)
    assert.equal(1, runs)
  end)
end)

describe("copas.sleep (deprecated)", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("sleeps the given time and returns nothing", function()
    local n, measured
    copas.addthread(function()
      local t0 = clock()
      n = select("#", copas.sleep(0.1))
      measured = clock() - t0
    end)
    run(copas, 3)
    assert.equal(0, n)
    assert.is_true(measured >= 0.1 - EPS and measured < 1, "measured " .. tostring(measured))
  end)

  it("with nil or 0 yields for one step", function()
    local log = {}
    copas.addthread(function()
      log[#log + 1] = 1
      copas.sleep()
      log[#log + 1] = 2
      copas.sleep(0)
      log[#log + 1] = 3
    end)
    copas.step(0)
    assert.same({ 1 }, log)
    copas.step(0)
    assert.same({ 1, 2 }, log)
    copas.step(0)
    assert.same({ 1, 2, 3 }, log)
  end)

  it("with a negative value sleeps until woken", function()
    local resumed = false
    local co = copas.addthread(function()
      copas.sleep(-1)
      resumed = true
    end)
    for _ = 1, 5 do copas.step(0) end
    copas.step(0.05)
    assert.is_false(resumed)
    copas.wakeup(co)
    copas.step(0)
    assert.is_true(resumed)
  end)
end)
