-- Specs for copas.queue (behaviour contract §9.3, §15.13, §15.22, §16.2).
-- Bug fixes (fail on upstream 4.11): a worker that died from an error does not keep
-- queue:finish() waiting; neither does a worker removed with copas.removethread (needs our
-- core's internal.isgone).
local helper = require("spec.helper")


local EPS = 0.01     -- clock granularity
local LATE = 0.25    -- upstream fires timeouts up to 0.2 s late

local run = helper.run


describe("copas.queue.new()", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("names queues copas_queue_<n> by default, or after opts.name", function()
    local q1, q2 = copas.queue.new(), copas.queue.new()
    assert.matches("^copas_queue_%d+$", q1.name)
    assert.matches("^copas_queue_%d+$", q2.name)
    assert.are_not.equal(q1.name, q2.name)
    assert.equal("jobs", copas.queue.new({ name = "jobs" }).name)
  end)

  it("works when called with a colon", function()
    local q = copas.queue:new()
    assert.matches("^copas_queue_%d+$", q.name)
    assert.is_true(q:push(1))
    assert.equal(1, q:get_size())
  end)

  it("pops with the semaphore's default timeout of 10 s", function()
    assert.equal(10, copas.queue.new().sema.timeout)
  end)

  it("raises on options that are not a table", function()
    assert.has_error(function() copas.queue.new("jobs") end)
    assert.has_error(function() copas.queue.new({ name = {} }) end)
  end)
end)


describe("queue:push() and queue:pop()", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("hand over items first in, first out, with the size tracking them", function()
    local q = copas.queue.new()
    local popped = {}
    run(copas, function()
      for i = 1, 3 do assert.is_true(q:push(i)) end
      assert.equal(3, q:get_size())
      for _ = 1, 3 do popped[#popped + 1] = q:pop() end
      assert.equal(0, q:get_size())
    end)
    assert.same({ 1, 2, 3 }, popped)
  end)

  it("carry nil and false items; a nil item pops as a lone nil", function()
    local q = copas.queue.new()
    local got = {}
    run(copas, function()
      q:push(nil)
      q:push(false)
      got.n1 = select("#", q:pop())
      got.second = { q:pop() }
    end)
    assert.equal(1, got.n1)
    assert.same({ false }, got.second)
  end)

  it("pop waits for a push", function()
    local q = copas.queue.new()
    local item, waited
    run(copas, function()
      copas.addthread(function()
        copas.pause(0.2)
        q:push("late")
      end)
      local t0 = copas.gettime()
      item = q:pop()
      waited = copas.gettime() - t0
    end)
    assert.equal("late", item)
    assert.is_true(waited >= 0.2 - EPS and waited < 0.2 + LATE, "waited " .. waited)
  end)

  it("pop times out with nil, 'timeout'", function()
    local q = copas.queue.new()
    local result, waited
    run(copas, function()
      local t0 = copas.gettime()
      result = { q:pop(0.3) }
      waited = copas.gettime() - t0
    end)
    assert.same({ nil, "timeout" }, result)
    assert.is_true(waited >= 0.3 - EPS and waited < 0.3 + LATE, "waited " .. waited)
  end)

  it("pop with timeout 0 never yields", function()
    local q = copas.queue.new()
    run(copas, function()
      local ran_between
      copas.addthread(function() ran_between = true end)
      assert.same({ nil, "timeout" }, { q:pop(0) })
      q:push("x")
      assert.equal("x", q:pop(0))
      assert.is_nil(ran_between)
    end)
  end)

  it("pop raises on a bad timeout", function()
    local q = copas.queue.new()
    assert.has_error(function() q:pop(-1) end,
      "expected timeout (1st argument) to be a number greater than or equal to 0, got: -1")
    assert.has_error(function() q:pop("soon") end)
  end)
end)


describe("queue:stop()", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("refuses pushes, and destroys the queue once the last item is popped", function()
    local q = copas.queue.new()
    run(copas, function()
      q:push(1)
      q:push(2)
      assert.is_true(q:stop())
      assert.is_true(q:stop())
      assert.same({ nil, "stopping" }, { q:push(3) })
      assert.equal(1, q:pop())
      assert.equal(2, q:pop())
      assert.same({ nil, "destroyed" }, { q:pop() })
      assert.same({ nil, "destroyed" }, { q:stop() })
    end)
  end)

  it("destroys an empty queue at once, releasing its poppers", function()
    local q = copas.queue.new()
    local result
    run(copas, function()
      copas.addthread(function() result = { q:pop(1) } end)
      copas.pause(0.05)
      assert.is_true(q:stop())
      copas.pause(0.05)
      assert.same({ nil, "destroyed" }, { q:push(1) })
    end)
    assert.same({ nil, "destroyed" }, result)
  end)
end)


describe("queue:finish()", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("returns only after the workers finished handling the last item", function()
    local q = copas.queue.new()
    local log = {}
    run(copas, function()
      for i = 1, 3 do q:push(i) end
      for _ = 1, 2 do
        q:add_worker(function(item)
          log[#log + 1] = "start " .. item
          copas.pause(0.2)
          log[#log + 1] = "end " .. item
        end)
      end
      copas.pause(0.3)
      log[#log + 1] = "finish"
      local ok = q:finish(2)
      log[#log + 1] = "finished " .. tostring(ok)
    end)
    assert.same({ "start 1", "start 2", "end 1", "start 3", "end 2", "finish", "end 3",
                  "finished true" }, log)
  end)

  it("returns true when idle workers exit", function()
    local q = copas.queue.new()
    local worker, result
    run(copas, function()
      worker = q:add_worker(function() end)
      copas.pause(0.05)
      result = { q:finish() }
    end)
    assert.same({ true }, result)
    assert.equal("dead", coroutine.status(worker))
  end)

  it("times out with nil, 'timeout' and destroys the queue", function()
    local q = copas.queue.new()
    local result, waited
    run(copas, function()
      q:push(1)  -- nobody will ever pop it
      local t0 = copas.gettime()
      result = { q:finish(0.3) }
      waited = copas.gettime() - t0
    end)
    assert.same({ nil, "timeout" }, result)
    assert.is_true(waited >= 0.3 - EPS and waited < 0.3 + LATE, "waited " .. waited)
    assert.same({ nil, "destroyed" }, { q:get_size() })
  end)

  it("leaves the queue intact on a timeout when asked to", function()
    local q = copas.queue.new()
    local result
    run(copas, function()
      q:push(1)
      result = { q:finish(0.2, true) }
      assert.equal(1, q:get_size())
      assert.same({ nil, "stopping" }, { q:push(2) })
      assert.equal(1, q:pop(0))  -- the last item: now it goes
      assert.same({ nil, "destroyed" }, { q:get_size() })
    end)
    assert.same({ nil, "timeout" }, result)
  end)

  it("times out on a worker still busy with its item", function()
    local q = copas.queue.new()
    local result
    run(copas, function()
      q:add_worker(function() copas.pause(1) end)
      q:push(1)
      copas.pause(0.05)
      result = { q:finish(0.3) }
    end)
    assert.same({ nil, "timeout" }, result)
  end)

  -- Fails before the change: finish looked for workers that ended without signalling only
  -- every 0.1 s; now the core tells of every thread's end (internal.on_exit).
  it("learns of a worker removed with copas.removethread at once", function()
    local q = copas.queue.new()
    local worker, result
    run(copas, function()
      worker = q:add_worker(function() copas.pause(1) end)
      q:push(1)
      copas.pause(0)  -- the worker has its item
      copas.addthread(function() result = { q:finish(2) } end)
      copas.pause(0)  -- finish waits for the worker
      copas.removethread(worker)
      copas.pause(0)
      copas.pause(0)
      assert.same({ true }, result, "finish did not return within two steps")
    end)
  end)

  it("returns true in every thread that finishes the same queue", function()
    local q = copas.queue.new()
    local results = {}
    run(copas, function()
      q:add_worker(function() copas.pause(0.2) end)
      q:add_worker(function() copas.pause(0.3) end)
      for i = 1, 3 do q:push(i) end  -- one item waits: the finishers all get to wait
      for i = 1, 3 do
        copas.addthread(function() results[i] = { q:finish(2) } end)
      end
      copas.pause(0.8)
    end)
    assert.same({ { true }, { true }, { true } }, results)
  end)

  it("is not kept waiting by a worker that died from an error (bug fix)", function()
    local q = copas.queue.new()
    local result, waited
    local errors = run(copas, function()
      q:add_worker(function() error("worker failed") end)
      q:push(1)
      copas.pause(0.05)
      local t0 = copas.gettime()
      result = { q:finish(3) }
      waited = copas.gettime() - t0
    end, 5, true)
    assert.same({ true }, result)
    assert.is_true(waited < 0.5, "waited " .. waited)
    assert.equal(1, #errors)
    assert.matches("worker failed", errors[1])
  end)

  it("is not kept waiting by a worker removed with copas.removethread (bug fix)", function()
    local q = copas.queue.new()
    local result, waited
    run(copas, function()
      local worker = q:add_worker(function() end)
      copas.pause(0.05)
      copas.removethread(worker)
      local t0 = copas.gettime()
      result = { q:finish(3) }
      waited = copas.gettime() - t0
    end)
    assert.same({ true }, result)
    assert.is_true(waited < 0.5, "waited " .. waited)
  end)
end)


describe("queue:destroy()", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("releases poppers with nil, 'destroyed' and drops the items", function()
    local q = copas.queue.new()
    local result
    run(copas, function()
      copas.addthread(function() result = { q:pop(2) } end)
      copas.pause(0.05)
      assert.is_true(q:destroy())
      copas.pause(0.05)
    end)
    assert.same({ nil, "destroyed" }, result)
    assert.same({}, q.list)
  end)

  it("makes the workers exit, leaving them collectable", function()
    local q = copas.queue.new()
    local weak = setmetatable({}, { __mode = "v" })
    run(copas, function()
      weak[1] = q:add_worker(function() end)
      copas.pause(0.05)
      q:destroy()
      copas.pause(0.05)
      assert.equal("dead", coroutine.status(weak[1]))
    end)
    collectgarbage()
    collectgarbage()
    assert.is_nil(weak[1])
  end)

  it("makes every method, and any other name, return nil, 'destroyed'", function()
    local q = copas.queue.new({ name = "gone" })
    q:push(1)
    q:destroy()
    for _, method in ipairs({ "push", "pop", "get_size", "stop", "finish", "destroy",
                               "add_worker", "get_workers", "no_such_method" }) do
      assert.same({ nil, "destroyed" }, { q[method](q) }, method)
    end
    assert.equal("gone", q.name)  -- raw fields stay readable
  end)
end)


describe("queue:add_worker()", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("runs the worker for every item, including nil ones", function()
    local q = copas.queue.new()
    local seen = {}
    run(copas, function()
      q:add_worker(function(item) seen[#seen + 1] = tostring(item) end)
      q:push(1)
      q:push(nil)
      q:push(3)
      assert.is_true(q:finish(1))
    end)
    assert.same({ "1", "nil", "3" }, seen)
  end)

  it("names the worker threads <queue name>:worker_<n>", function()
    local q = copas.queue.new({ name = "jobs" })
    local w1 = q:add_worker(function() end)
    local w2 = q:add_worker(function() end)
    assert.equal("thread", type(w1))
    assert.equal("jobs:worker_1", copas.getthreadname(w1))
    assert.equal("jobs:worker_2", copas.getthreadname(w2))
    q:destroy()
  end)

  it("raises when the worker is not a function", function()
    local q = copas.queue.new()
    assert.has_error(function() q:add_worker("work") end, "expected worker to be a function")
  end)
end)


describe("queue:get_workers()", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("lists the workers still active", function()
    local q = copas.queue.new()
    local before, after
    run(copas, function()
      local w1 = q:add_worker(function() end)
      q:add_worker(function() error("stop here") end)  -- w2
      before = q:get_workers()
      copas.pause(0.05)  -- both wait in pop now, w1 first in line
      q:push(1)
      q:push(2)          -- for w2, which dies from it
      copas.pause(0.1)
      after = q:get_workers()
      assert.is_true(#before == 2 and (before[1] == w1 or before[2] == w1))
      assert.same({ w1 }, after)
      q:destroy()
    end, 5, true)
  end)
end)
