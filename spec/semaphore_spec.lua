-- Specs for copas.semaphore (behaviour contract §9.2, §15.22, §16.2).
-- Bug fixes (fail on upstream 4.11): destroy() releases every waiter, however much they asked
-- for; a take that can be satisfied never waits behind waiters that timed out; an unrelated
-- copas.wakeup neither ends a take nor skips its deduction; a waiter removed with
-- copas.removethread is skipped (needs our core's internal.isgone).
local helper = require("spec.helper")


local EPS = 0.01     -- clock granularity
local LATE = 0.25    -- upstream fires timeouts up to 0.2 s late

local run = helper.run

-- Starts a thread that records the results of sema:take(...) in results[key].
local function taker(copas, results, key, sema, ...)
  local args = { n = select("#", ...), ... }
  return copas.addthread(function()
    results[key] = { sema:take((table.unpack or unpack)(args, 1, args.n)) }
  end)
end


describe("copas.semaphore.new()", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("defaults to 0 resources and a 10 s timeout", function()
    local sema = copas.semaphore.new(3)
    assert.equal(0, sema:get_count())
    assert.equal(3, sema.max)
    assert.equal(10, sema.timeout)
  end)

  it("accepts a start above max", function()
    assert.equal(20, copas.semaphore.new(10, 20):get_count())
  end)

  it("accepts a timeout as a number, a numeric string or math.huge", function()
    assert.equal(0.5, copas.semaphore.new(1, 0, 0.5).timeout)
    assert.equal(2, copas.semaphore.new(1, 0, "2").timeout)
    assert.equal(math.huge, copas.semaphore.new(1, 0, math.huge).timeout)
  end)

  it("checks the timeout first, calling it the 2nd argument", function()
    assert.has_error(function() copas.semaphore.new(nil, 0, -1) end,
      "expected timeout (2nd argument) to be a number greater than or equal to 0, got: -1")
    assert.has_error(function() copas.semaphore.new(1, 0, "never") end,
      "expected timeout (2nd argument) to be a number greater than or equal to 0, got: never")
  end)

  it("raises on a max that is not a number of at least 1", function()
    local msg = "expected max resources (1st argument) to be a number greater than 0, got: "
    assert.has_error(function() copas.semaphore.new() end, msg .. "nil")
    assert.has_error(function() copas.semaphore.new(0) end, msg .. "0")
    assert.has_error(function() copas.semaphore.new("5") end, msg .. "5")
    assert.has_error(function() copas.semaphore.new(0 / 0) end)
  end)

  it("raises on a start that is not a number", function()
    assert.has_error(function() copas.semaphore.new(5, "many") end)
    assert.has_error(function() copas.semaphore.new(5, {}) end)
  end)
end)


describe("semaphore:take()", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("takes available resources without yielding", function()
    local sema = copas.semaphore.new(10, 5)
    run(copas, function()
      local ran_between
      copas.addthread(function() ran_between = true end)
      assert.is_true(sema:take(3))
      assert.is_true(sema:take())
      assert.is_nil(ran_between)
      assert.equal(1, sema:get_count())
    end)
  end)

  it("returns nil, 'too many' at once for more than max, before looking at the timeout", function()
    local sema = copas.semaphore.new(10, 2)
    run(copas, function()
      local t0 = copas.gettime()
      assert.same({ nil, "too many" }, { sema:take(11) })
      assert.same({ nil, "too many" }, { sema:take(11, 0) })
      assert.is_true(copas.gettime() - t0 < 0.05)
    end)
  end)

  it("with timeout 0 returns nil, 'timeout' at once when short", function()
    local sema = copas.semaphore.new(10, 2)
    run(copas, function()
      local ran_between
      copas.addthread(function() ran_between = true end)
      assert.same({ nil, "timeout" }, { sema:take(3, 0) })
      assert.same({ nil, "timeout" }, { sema:take(10, 0) })
      assert.is_nil(ran_between)
      assert.equal(2, sema:get_count())
    end)
  end)

  it("waits until given enough, then deducts", function()
    local sema = copas.semaphore.new(10, 1)
    local results = {}
    run(copas, function()
      taker(copas, results, 1, sema, 3)
      copas.pause(0.1)
      assert.is_nil(results[1])
      sema:give(1)
      copas.pause(0.05)
      assert.is_nil(results[1])
      sema:give(1)
      copas.pause(0.05)
      assert.same({ true }, results[1])
      assert.equal(0, sema:get_count())
    end)
  end)

  it("times out after the semaphore's timeout", function()
    local sema = copas.semaphore.new(10, 0, 0.3)
    local elapsed, result
    run(copas, function()
      local t0 = copas.gettime()
      result = { sema:take(1) }
      elapsed = copas.gettime() - t0
    end)
    assert.same({ nil, "timeout" }, result)
    assert.is_true(elapsed >= 0.3 - EPS and elapsed < 0.3 + LATE, "took " .. elapsed)
  end)

  it("uses the timeout argument over the default; math.huge waits for ever", function()
    local sema = copas.semaphore.new(10, 0, 0.1)
    local results = {}
    run(copas, function()
      taker(copas, results, "short", sema, 1, 0.3)
      taker(copas, results, "forever", sema, 1, math.huge)
      copas.pause(0.2)
      assert.is_nil(results.short)
      copas.pause(0.4)
      assert.same({ nil, "timeout" }, results.short)
      assert.is_nil(results.forever)
      sema:give(1)
      copas.pause(0.05)
    end)
    assert.same({ true }, results.forever)
  end)

  it("serves waiters strictly in order: a large request blocks smaller ones behind it", function()
    local sema = copas.semaphore.new(10)
    local results, order = {}, {}
    run(copas, function()
      copas.addthread(function() results.big = { sema:take(5) }; order[#order + 1] = "big" end)
      copas.pause(0)
      copas.addthread(function() results.small = { sema:take(1) }; order[#order + 1] = "small" end)
      copas.pause(0.05)
      sema:give(2)
      copas.pause(0.05)
      assert.same({}, order)
      assert.equal(2, sema:get_count())
      sema:give(4)
      copas.pause(0.05)
    end)
    assert.same({ "big", "small" }, order)
    assert.same({ true }, results.big)
    assert.same({ true }, results.small)
  end)

  it("queues behind waiters even when enough is available for the newcomer", function()
    local sema = copas.semaphore.new(10, 3)
    local results = {}
    run(copas, function()
      taker(copas, results, "big", sema, 5, 1)
      copas.pause(0.05)
      assert.same({ nil, "timeout" }, { sema:take(1, 0) })
      assert.equal(3, sema:get_count())
      sema:give(2)
      copas.pause(0.05)
    end)
    assert.same({ true }, results.big)
  end)

  it("never makes a take that can be satisfied wait behind timed-out waiters (bug fix)", function()
    local sema = copas.semaphore.new(10, 5, 0.1)
    local results = {}
    run(copas, function()
      taker(copas, results, "greedy", sema, 8)  -- more than available: waits, times out
      copas.pause(0.4)
      assert.same({ nil, "timeout" }, results.greedy)
      local t0 = copas.gettime()
      assert.is_true(sema:take(1, 1))
      assert.is_true(copas.gettime() - t0 < 0.05, "waited behind a waiter that timed out")
      assert.equal(4, sema:get_count())
    end)
  end)

  it("serves the next waiter when the one blocking the line times out (bug fix)", function()
    local sema = copas.semaphore.new(10, 3)
    local results = {}
    run(copas, function()
      taker(copas, results, "big", sema, 5, 0.1)
      copas.pause(0)
      taker(copas, results, "small", sema, 1, 2)
      copas.pause(0.4)
      assert.same({ nil, "timeout" }, results.big)
      assert.same({ true }, results.small)
      assert.equal(2, sema:get_count())
    end)
  end)

  it("is not ended by an unrelated copas.wakeup, and still deducts (bug fix)", function()
    local sema = copas.semaphore.new(10, 0, 2)
    local results = {}
    run(copas, function()
      local waiter = taker(copas, results, 1, sema, 1)
      copas.pause(0.05)
      copas.wakeup(waiter)
      copas.pause(0.05)
      assert.is_nil(results[1], "the woken waiter returned from take")
      sema:give(1)
      copas.pause(0.05)
      assert.same({ true }, results[1])
      assert.equal(0, sema:get_count())
    end)
  end)

  it("skips a waiter removed with copas.removethread (bug fix)", function()
    local sema = copas.semaphore.new(10, 0, 1)
    local results = {}
    run(copas, function()
      local removed = taker(copas, results, "removed", sema, 2)
      copas.pause(0)
      taker(copas, results, "live", sema, 1)
      copas.pause(0.05)
      copas.removethread(removed)
      sema:give(1)
      copas.pause(0.05)
      assert.same({ true }, results.live)
      assert.equal(0, sema:get_count())
    end)
  end)

  -- Fails before the fix: the removed head stayed in line until the next give, so the waiter
  -- behind it timed out although enough was available.
  it("serves the line at once when the waiter blocking it is removed (bug fix)", function()
    local sema = copas.semaphore.new(10, 0, 1)
    local results = {}
    run(copas, function()
      local head = taker(copas, results, "head", sema, 5)
      copas.pause(0)
      taker(copas, results, "next", sema, 2)
      copas.pause(0.05)
      sema:give(3)
      copas.removethread(head)
      copas.pause(0.05)
      assert.same({ true }, results.next)
      assert.equal(1, sema:get_count())
    end)
  end)

  -- Fails before the fix: the waiter's timed-out entry stayed in line, so taking again put it
  -- in line twice, and one give granted it twice (the count ended at 0 instead of 3).
  it("grants a thread that timed out and takes again once, for its latest request (bug fix)", function()
    local sema = copas.semaphore.new(10, 0, 5)
    local results, wait_before_give = {}, nil
    run(copas, function()
      taker(copas, results, "head", sema, 5)
      copas.pause(0)
      copas.addthread(function()
        results.first = { sema:take(3, 0.1) }
        results.second = { sema:take(2) }
      end)
      copas.pause(0.3)
      wait_before_give = sema:get_wait()
      sema:give(10)
      copas.pause(0.05)
    end)
    assert.same({ nil, "timeout" }, results.first)
    assert.equal(7, wait_before_give)
    assert.same({ true }, results.head)
    assert.same({ true }, results.second)
    assert.equal(3, sema:get_count())
  end)

  it("raises on bad arguments", function()
    local sema = copas.semaphore.new(10, 5)
    assert.has_error(function() sema:take("two") end,
      "expected requested (1st argument) to be a number greater than or equal to 0, got: two")
    assert.has_error(function() sema:take(-1) end)
    assert.has_error(function() sema:take(1, -1) end,
      "expected timeout (2nd argument) to be a number greater than or equal to 0, got: -1")
    assert.has_error(function() sema:take(1, "later") end)
    assert.equal(5, sema:get_count())
  end)
end)


describe("semaphore:give()", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("adds one resource by default and returns true", function()
    local sema = copas.semaphore.new(10)
    assert.is_true(sema:give())
    assert.is_true(sema:give(3))
    assert.equal(4, sema:get_count())
  end)

  it("caps at max and returns nil, 'too many', still releasing waiters", function()
    local sema = copas.semaphore.new(10, 0, 2)
    local results = {}
    run(copas, function()
      taker(copas, results, 1, sema, 4)
      copas.pause(0.05)
      assert.same({ nil, "too many" }, { sema:give(100) })
      assert.equal(6, sema:get_count())
      copas.pause(0.05)
    end)
    assert.same({ true }, results[1])
  end)

  it("accepts a numeric string, like upstream's arithmetic does", function()
    local sema = copas.semaphore.new(10)
    assert.is_true(sema:give("2"))
    assert.equal(2, sema:get_count())
  end)

  it("raises on a non-numeric amount", function()
    local sema = copas.semaphore.new(10)
    assert.has_error(function() sema:give("lots") end)
    assert.has_error(function() sema:give({}) end)
    assert.equal(0, sema:get_count())
  end)
end)


describe("semaphore:get_wait()", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("returns the resources requested by waiters minus those available", function()
    local sema = copas.semaphore.new(10, 1, 1)
    local results = {}
    run(copas, function()
      assert.equal(-1, sema:get_wait())
      taker(copas, results, 1, sema, 3)
      taker(copas, results, 2, sema, 4)
      copas.pause(0.05)
      assert.equal(6, sema:get_wait())
      -- the documented idiom: release everybody and leave nothing
      assert.is_true(sema:give(sema:get_wait()))
      copas.pause(0.05)
      assert.equal(0, sema:get_count())
      assert.equal(0, sema:get_wait())
    end)
    assert.same({ true }, results[1])
    assert.same({ true }, results[2])
  end)
end)


describe("semaphore:destroy()", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("releases every waiter with nil, 'destroyed', even beyond max (bug fix)", function()
    local sema = copas.semaphore.new(10, 0, math.huge)
    local results = {}
    run(copas, function()
      for i = 1, 3 do taker(copas, results, i, sema, 5) end
      copas.pause(0.05)
      assert.is_true(sema:destroy())
      copas.pause(0.05)
    end)
    for i = 1, 3 do
      assert.same({ nil, "destroyed" }, results[i], "waiter " .. i)
    end
  end)

  it("fails a waiter that was served but has not run yet", function()
    local sema = copas.semaphore.new(10)
    local results = {}
    run(copas, function()
      taker(copas, results, 1, sema, 1)
      copas.pause(0.05)
      sema:give(1)
      sema:destroy()
      copas.pause(0.05)
    end)
    assert.same({ nil, "destroyed" }, results[1])
  end)

  it("makes every method, and any other name, return nil, 'destroyed'", function()
    local sema = copas.semaphore.new(10, 2, 3)
    sema:destroy()
    assert.same({ nil, "destroyed" }, { sema:take() })
    assert.same({ nil, "destroyed" }, { sema:give() })
    assert.same({ nil, "destroyed" }, { sema:get_count() })
    assert.same({ nil, "destroyed" }, { sema:get_wait() })
    assert.same({ nil, "destroyed" }, { sema:destroy() })
    assert.same({ nil, "destroyed" }, { sema.new(1) })
    assert.same({ nil, "destroyed" }, { sema:no_such_method() })
    -- raw fields stay readable
    assert.equal(10, sema.max)
    assert.equal(3, sema.timeout)
    assert.is_true(sema.destroyed)
  end)

  it("cancels the timeouts of its waiters; nothing fires later (#118)", function()
    local sema = copas.semaphore.new(10, 0, 0.3)
    local results = {}
    local baseline
    run(copas, function()
      baseline = copas.gettimeouts()
      for i = 1, 3 do taker(copas, results, i, sema, 1) end
      copas.pause(0.1)
      assert.equal(baseline + 3, copas.gettimeouts())
      sema:destroy()
      sema = nil
      copas.pause(0.05)
      assert.equal(baseline, copas.gettimeouts())
      collectgarbage()
      collectgarbage()
      copas.pause(0.5)  -- past the waiters' timeout
    end)
    for i = 1, 3 do
      assert.same({ nil, "destroyed" }, results[i])
    end
  end)
end)


describe("copas.semaphore accounting", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("never loses or invents resources under random takes, gives and timeouts", function()
    local sema = copas.semaphore.new(1000, 0, 0.15)
    local seed = 12345
    local function random(n)  -- a private generator: the global one is not ours to seed
      seed = (seed * 1103515245 + 12345) % 2147483648
      return math.floor(seed / 65536) % n + 1  -- the low bits of an LCG cycle too fast
    end
    local given, taken, asked, answered, negative = 0, 0, 0, 0, {}
    run(copas, function()
      for _ = 1, 80 do
        if random(2) == 1 then
          asked = asked + 1
          copas.addthread(function()
            local n = random(4)
            local ok = sema:take(n, random(2) == 1 and 0.05 or 0.3)
            answered = answered + 1
            if ok then taken = taken + n end
          end)
        else
          local n = random(3)
          sema:give(n)
          given = given + n
        end
        if sema:get_count() < 0 then negative[#negative + 1] = sema:get_count() end
        copas.pause(0.01 * random(3))
      end
      copas.pause(0.5)
    end, 10)
    assert.same({}, negative)
    assert.equal(asked, answered)
    assert.is_true(asked > 20 and taken > 20 and taken <= given,
      ("took %d of %d for %d takers"):format(taken, given, asked))
    assert.equal(given - taken, sema:get_count())
  end)
end)


describe("copas.semaphore and the garbage collector", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("keeps a thread waiting for ever alive while the semaphore lives, and serves it", function()
    local sema = copas.semaphore.new(1, 0, math.huge)
    local weak = setmetatable({}, { __mode = "k" })
    local result
    weak[copas.addthread(function() result = { sema:take() } end)] = true
    run(copas, function()
      copas.pause(1.2)  -- long enough to count as abandoned unless someone can wake it
      collectgarbage()
      collectgarbage()
      copas.pause(0.05)
      sema:give()
      copas.pause(0.05)
    end, 5)
    assert.is_not_nil(next(weak))
    assert.same({ true }, result)
  end)

  it("runs a long waiter it granted to, even when the semaphore is dropped at once", function()
    local result
    run(copas, function()
      local sema = copas.semaphore.new(1, 0, math.huge)
      copas.addthread(function() result = { sema:take() } end)
      copas.pause(1.2)
      sema:give()
      sema = nil -- luacheck: ignore
      collectgarbage()
      collectgarbage()
      copas.pause(0.05)
    end, 5)
    assert.same({ true }, result)
  end)

  it("still times out a waiter whose semaphore nobody can reach any more", function()
    local result
    run(copas, function()
      copas.addthread(function() result = { copas.semaphore.new(1, 0, 1.5):take() } end)
      copas.pause(1.3)
      collectgarbage()
      collectgarbage()
      copas.pause(0.5)
    end, 5)
    assert.same({ nil, "timeout" }, result)
  end)

  it("lets a semaphore nobody can reach be collected with the threads waiting on it", function()
    local weak = setmetatable({}, { __mode = "k" })
    run(copas, function()
      local sema = copas.semaphore.new(1, 0, math.huge)
      weak[sema] = true
      for _ = 1, 2 do
        weak[copas.addthread(function() sema:take() end)] = true
      end
      copas.pause(0.05)
    end, 5)
    collectgarbage()
    collectgarbage()
    assert.is_nil(next(weak))
    assert.equal(0, copas.status().inactive)
  end)
end)
