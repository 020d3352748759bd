-- Specs for copas.lock (behaviour contract §9.1, §15.22).
-- Bug fixes (fail on upstream 4.11): lock:get(0) on a held lock leaves no queued ghost; a
-- waiter removed with copas.removethread is skipped on hand-off (needs our core's internal.isgone);
-- an unrelated copas.wakeup does not hand a waiter the lock.
local helper = require("spec.helper")

-- on PUC 5.1, coxpcall's running maps its helper coroutine back to the copas thread
local puc51 = _VERSION == "Lua 5.1" and not jit
local running = puc51 and require("coxpcall").running or coroutine.running

local EPS = 0.01     -- clock granularity
local LATE = 0.25    -- upstream fires timeouts up to 0.2 s late

local run = helper.run


describe("copas.lock.new()", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("defaults to a 10 s timeout, re-entrant", function()
    local lock = copas.lock.new()
    assert.equal(10, lock.timeout)
    assert.is_falsy(lock.not_reentrant)
  end)

  it("accepts a timeout as a number, a numeric string or math.huge", function()
    assert.equal(2.5, copas.lock.new(2.5).timeout)
    assert.equal(5, copas.lock.new("5").timeout)
    assert.equal(math.huge, copas.lock.new(math.huge).timeout)
    assert.equal(0, copas.lock.new(0).timeout)
  end)

  it("raises on a negative, non-numeric or NaN timeout", function()
    local msg = "expected timeout (1st argument) to be a number greater than or equal to 0, got: "
    assert.has_error(function() copas.lock.new(-1) end, msg .. "-1")
    assert.has_error(function() copas.lock.new("soon") end, msg .. "soon")
    assert.has_error(function() copas.lock.new({}) end)
    assert.has_error(function() copas.lock.new(0 / 0) end)
  end)

  it("raises when called with a colon", function()
    assert.has_error(function() copas.lock:new() end)
  end)

  it("stores not_reentrant", function()
    assert.is_truthy(copas.lock.new(nil, true).not_reentrant)
  end)
end)


describe("lock:get()", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("takes a free lock at once and returns 0", function()
    local lock = copas.lock.new()
    run(copas, function()
      assert.equal(0, lock:get())
      assert.equal(running(), lock.owner)
    end)
  end)

  it("lets the owner re-enter a re-entrant lock, needing as many releases", function()
    local lock = copas.lock.new(0.3)
    local other
    run(copas, function()
      assert.equal(0, lock:get())
      assert.equal(0, lock:get())
      copas.addthread(function() other = { lock:get(0.1) } end)
      assert.is_true(lock:release())
      copas.pause(0.4)
      assert.equal("timeout", other[2])  -- still held once
      assert.is_true(lock:release())
      assert.is_nil(lock.owner)
    end)
  end)

  it("makes the owner of a non-re-entrant lock wait for its own lock until timeout", function()
    local lock = copas.lock.new(0.3, true)
    run(copas, function()
      assert.equal(0, lock:get())
      local t0 = copas.gettime()
      local ok, err, waited = lock:get()
      local elapsed = copas.gettime() - t0
      assert.is_nil(ok)
      assert.equal("timeout", err)
      assert.is_true(elapsed >= 0.3 - EPS and elapsed < 0.3 + LATE, "took " .. elapsed)
      assert.is_true(math.abs(waited - elapsed) < 0.05)
    end)
  end)

  it("waits for a held lock and returns the seconds waited", function()
    local lock = copas.lock.new()
    local result
    run(copas, function()
      lock:get()
      copas.addthread(function() result = { lock:get() } end)
      copas.pause(0.2)
      assert.is_nil(result)
      lock:release()
      copas.pause(0.05)
    end)
    assert.is_number(result[1])
    assert.is_true(result[1] >= 0.2 - EPS and result[1] < 0.4, "waited " .. result[1])
  end)

  it("uses the timeout argument over the lock's default", function()
    local lock = copas.lock.new(10)
    local result, elapsed
    run(copas, function()
      lock:get()
      copas.addthread(function()
        local t0 = copas.gettime()
        result = { lock:get(0.3) }
        elapsed = copas.gettime() - t0
      end)
      copas.pause(0.6)
    end)
    assert.equal("timeout", result[2])
    assert.is_true(elapsed >= 0.3 - EPS and elapsed < 0.3 + LATE, "took " .. elapsed)
    assert.is_true(result[3] >= 0.3 - EPS)
  end)

  it("waits forever with math.huge, until released", function()
    local lock = copas.lock.new(0.1)
    local result
    run(copas, function()
      lock:get()
      copas.addthread(function() result = { lock:get(math.huge) } end)
      copas.pause(0.5)
      assert.is_nil(result)
      lock:release()
      copas.pause(0.05)
    end)
    assert.is_number(result[1])
  end)

  it("with timeout 0 on a held lock returns nil, 'timeout', 0 without yielding", function()
    local lock = copas.lock.new()
    local result, ran_between
    run(copas, function()
      copas.addthread(function()
        lock:get()
        copas.pause(0.2)
        lock:release()
      end)
      copas.pause(0.05)
      copas.addthread(function() ran_between = true end)
      result = { lock:get(0) }
      assert.is_nil(ran_between)
    end)
    assert.same({ nil, "timeout", 0 }, result)
  end)

  it("with timeout 0 leaves no ghost in the queue (bug fix)", function()
    local lock = copas.lock.new(1)
    local later
    run(copas, function()
      local holder = copas.addthread(function()
        lock:get()
        copas.pause(0.1)
        lock:release()
      end)
      copas.pause(0.05)
      assert.equal(holder, lock.owner)
      assert.is_nil(select(1, lock:get(0)))  -- a failed probe
      copas.pause(0.2)                         -- the holder releases meanwhile
      assert.is_nil(lock.owner, "the lock went to the probe that gave up")
      copas.addthread(function() later = { lock:get(0) } end)
      copas.pause(0.05)
    end)
    assert.same({ 0 }, later)
  end)

  it("hands the lock to waiters in FIFO order", function()
    local lock = copas.lock.new()
    local order = {}
    run(copas, function()
      lock:get()
      for i = 1, 4 do
        copas.addthread(function()
          lock:get()
          order[#order + 1] = i
          copas.pause(0.01)
          lock:release()
        end)
        copas.pause(0)  -- let each one queue before the next
      end
      lock:release()
      copas.pause(0.3)
    end)
    assert.same({ 1, 2, 3, 4 }, order)
  end)

  it("passes ownership on release, before the waiter runs", function()
    local lock = copas.lock.new()
    local waiter_co, late
    run(copas, function()
      lock:get()
      waiter_co = copas.addthread(function() lock:get() end)
      copas.pause(0.05)
      lock:release()
      assert.equal(waiter_co, lock.owner)
      -- somebody asking now queues behind the pending hand-off
      late = { lock:get(0) }
    end)
    assert.same({ nil, "timeout", 0 }, late)
  end)

  it("skips waiters that timed out", function()
    local lock = copas.lock.new()
    local first, second
    run(copas, function()
      lock:get()
      copas.addthread(function() first = { lock:get(0.1) } end)
      copas.pause(0)
      copas.addthread(function() second = { lock:get(2) } end)
      copas.pause(0.4)
      assert.equal("timeout", first[2])
      lock:release()
      copas.pause(0.05)
    end)
    assert.is_number(second[1])
  end)

  it("does not hand the lock to a waiter woken by an unrelated copas.wakeup (bug fix)", function()
    local lock = copas.lock.new(2)
    local waiter, result
    run(copas, function()
      lock:get()
      local me = running()
      waiter = copas.addthread(function() result = { lock:get() } end)
      copas.pause(0.05)
      copas.wakeup(waiter)
      copas.pause(0.05)
      assert.is_nil(result, "the woken waiter returned from get")
      assert.equal(me, lock.owner)
      lock:release()
      copas.pause(0.05)
      assert.equal(waiter, lock.owner)
    end)
    assert.is_number(result[1])
  end)

  it("skips a waiter removed with copas.removethread (bug fix)", function()
    local lock = copas.lock.new(1)
    local second
    run(copas, function()
      lock:get()
      local removed = copas.addthread(function() lock:get() end)
      copas.pause(0)
      copas.addthread(function() second = { lock:get() } end)
      copas.pause(0.05)
      copas.removethread(removed)
      lock:release()
      assert.are_not.equal(removed, lock.owner)
      copas.pause(0.05)
    end)
    assert.is_number(second and second[1], "the live waiter did not get the lock")
  end)

  it("raises on a bad timeout, leaving nothing queued", function()
    local lock = copas.lock.new()
    local msg = "expected timeout (1st argument) to be a number greater than or equal to 0, got: "
    run(copas, function()
      local holder = copas.addthread(function()
        lock:get()
        copas.pause(0.1)
        lock:release()
      end)
      copas.pause(0.05)
      assert.has_error(function() lock:get(-1) end, msg .. "-1")
      assert.has_error(function() lock:get("later") end, msg .. "later")
      assert.equal(holder, lock.owner)
      copas.pause(0.2)
      assert.is_nil(lock.owner)
    end)
  end)
end)


describe("lock:release()", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("sees the owner as the Copas thread, even inside protected calls (#180)", function()
    local lock = copas.lock.new()
    run(copas, function()
      -- on PUC 5.1 every (co)pcall runs in a helper coroutine of its own
      assert(helper.safe_pcall(function() assert.equal(0, lock:get()) end))
      assert.is_true(lock:release())
      assert.is_nil(lock.owner)
    end)
  end)

  it("refuses a lock not owned by the caller", function()
    local lock = copas.lock.new()
    local result
    run(copas, function()
      assert.same({ nil, "cannot release a lock not owned" }, { lock:release() })
      copas.addthread(function() lock:get() end)
      copas.pause(0.05)
      result = { lock:release() }
    end)
    assert.same({ nil, "cannot release a lock not owned" }, result)
  end)

  it("frees the lock when nobody waits", function()
    local lock = copas.lock.new()
    run(copas, function()
      lock:get()
      assert.is_true(lock:release())
      assert.is_nil(lock.owner)
      assert.equal(0, lock:get(0))
    end)
  end)
end)


describe("lock:destroy()", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("releases every waiter with nil, 'destroyed', seconds waited", function()
    local lock = copas.lock.new()
    local results = {}
    run(copas, function()
      lock:get()
      for i = 1, 3 do
        copas.addthread(function() results[i] = { lock:get() } end)
      end
      copas.pause(0.2)
      assert.is_true(lock:destroy())
      copas.pause(0.05)
    end)
    for i = 1, 3 do
      assert.is_nil(results[i][1])
      assert.equal("destroyed", results[i][2])
      assert.is_true(results[i][3] >= 0.1, "waited " .. tostring(results[i][3]))
    end
  end)

  it("also fails a waiter that was handed the lock but has not run yet", function()
    local lock = copas.lock.new()
    local result
    run(copas, function()
      lock:get()
      copas.addthread(function() result = { lock:get() } end)
      copas.pause(0.05)
      lock:release()
      lock:destroy()
      copas.pause(0.05)
    end)
    assert.is_nil(result[1])
    assert.equal("destroyed", result[2])
  end)

  it("makes every method, and any other name, return nil, 'destroyed'", function()
    local lock = copas.lock.new(3, true)
    run(copas, function()
      lock:get()
      lock:destroy()
      assert.same({ nil, "destroyed" }, { lock:get() })
      assert.same({ nil, "destroyed" }, { lock:release() })
      assert.same({ nil, "destroyed" }, { lock:destroy() })
      assert.same({ nil, "destroyed" }, { lock.new() })
      assert.same({ nil, "destroyed" }, { lock:no_such_method() })
    end)
    -- raw fields stay readable
    assert.equal(3, lock.timeout)
    assert.is_true(lock.destroyed)
    assert.is_truthy(lock.not_reentrant)
  end)

  it("cancels the timeouts of its waiters; nothing fires later (#118)", function()
    local lock = copas.lock.new(0.3)
    local results = {}
    local baseline
    run(copas, function()
      baseline = copas.gettimeouts()
      lock:get()
      for i = 1, 3 do
        copas.addthread(function() results[i] = { lock:get() } end)
      end
      copas.pause(0.1)
      assert.equal(baseline + 3, copas.gettimeouts())
      lock:destroy()
      lock = nil
      copas.pause(0.05)
      assert.equal(baseline, copas.gettimeouts())
      collectgarbage()
      collectgarbage()
      copas.pause(0.5)  -- past the waiters' timeout
    end)
    for i = 1, 3 do
      assert.equal("destroyed", results[i][2])
    end
  end)
end)


describe("copas.lock under load", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("sorts many waiters into acquired, timed out and destroyed", function()
    local lock = copas.lock.new(10)
    local n = 150
    local got, timed_out, destroyed = 0, 0, 0
    run(copas, function()
      lock:get()
      for i = 1, 3 * n do
        copas.addthread(function()
          -- the first third acquires, the second times out, the last sees the destroy
          local timeout = i <= n and 0.2 or i <= 2 * n and 0.4 or 5
          local ok, err = lock:get(timeout)
          if ok then
            got = got + 1
            if i == n then
              copas.pause(0.6)  -- hold it until the second third timed out
              lock:release()
              lock:destroy()
            else
              lock:release()
            end
          elseif err == "timeout" then
            timed_out = timed_out + 1
          elseif err == "destroyed" then
            destroyed = destroyed + 1
          end
        end)
      end
      copas.pause(0.05)
      lock:release()
      copas.pause(1)
    end)
    assert.same({ n, n, n }, { got, timed_out, destroyed })
  end)
end)

-- The waiting line is the core's (lua/copas/line.lua): a waiter without a timeout is a
-- forever-sleeper, held only by the lock it waits for.
describe("copas.lock and the garbage collector", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("keeps a thread waiting for ever alive while the lock lives, and hands the lock to it", function()
    local lock = copas.lock.new(math.huge)
    local result
    run(copas, function()
      lock:get()
      copas.addthread(function() result = { lock:get() } end)
      copas.pause(1.3)  -- long enough for the waiter to move to the weak table
      collectgarbage()
      collectgarbage()
      lock:release()
      copas.pause(0.05)
    end, 5)
    assert.is_number(result and result[1], "the waiter never got the lock")
  end)

  it("lets a lock nobody can reach be collected, with its line", function()
    local weak = setmetatable({}, { __mode = "k" })
    run(copas, function()
      local lock = copas.lock.new(math.huge)
      weak[lock] = true
      lock:get()
      lock = nil -- luacheck: ignore 311 (drops the last reference on purpose)
    end)
    collectgarbage()
    collectgarbage()
    assert.is_nil(next(weak))
  end)
end)
