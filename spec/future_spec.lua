-- Specs for copas.future (behaviour contract §9.5, §15.22).
-- Bug fix (fails on upstream 4.11): a future with more than 9,999 threads waiting in get()
-- releases them all, on completion and on cancel (#203).
local helper = require("spec.helper")


local run = helper.run

local function pack(...)
  return { n = select("#", ...), ... }
end


describe("the copas.future module", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("has the status constants SUCCESS, PENDING and ERROR", function()
    assert.is_true(copas.future.SUCCESS)
    assert.is_false(copas.future.PENDING)
    assert.equal("error", copas.future.ERROR)
  end)

  it("raises on an unknown field, naming it", function()
    assert.has_error(function() return copas.future.PNEDING end, nil)
    local ok, err = pcall(function() return copas.future.PNEDING end)
    assert.is_false(ok)
    assert.matches("unknown field 'future%.PNEDING'", err)
  end)

  it("raises when given something that cannot be called", function()
    assert.has_error(function() copas.future.addthread() end)
    assert.has_error(function() copas.future.addthread("task") end)
    assert.has_error(function() copas.future.addnamedthread("name", 42) end)
  end)
end)


describe("future:get()", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("waits for the task and returns true and all its results, nils included", function()
    local result, waited
    run(copas, function()
      local f = copas.future.addthread(function(a, b)
        copas.pause(0.1)
        return a, nil, b, nil
      end, "x", "y")
      local t0 = copas.gettime()
      result = pack(f:get())
      waited = copas.gettime() - t0
    end)
    assert.same({ n = 5, true, "x", nil, "y", nil }, result)
    assert.is_true(waited >= 0.09, "waited " .. waited)
  end)

  it("returns false and the raw error when the task fails", function()
    local err_table = {}
    local r1, r2
    run(copas, function()
      r1 = pack(copas.future.addthread(function() error("boom") end):get())
      r2 = pack(copas.future.addthread(function() error(err_table) end):get())
    end)
    assert.equal(2, r1.n)
    assert.is_false(r1[1])
    assert.matches("boom", r1[2])
    assert.same({ n = 2, false, err_table }, r2)
    assert.equal(err_table, r2[2])
  end)

  it("keeps task errors away from the Copas error handler", function()
    -- `run` fails the spec on anything reaching the handler
    run(copas, function()
      copas.future.addthread(function() error("kept") end):get()
    end)
  end)

  it("can be called again, and by calling the future", function()
    local results
    run(copas, function()
      local f = copas.future.addthread(function() return 42 end)
      results = { pack(f:get()), pack(f:get()), pack(f()) }
    end)
    for i = 1, 3 do
      assert.same({ n = 2, true, 42 }, results[i])
    end
  end)

  it("releases every thread waiting on it", function()
    local got = {}
    run(copas, function()
      local f = copas.future.addthread(function()
        copas.pause(0.1)
        return "shared"
      end)
      for i = 1, 5 do
        copas.addthread(function() got[i] = select(2, f:get()) end)
      end
      copas.pause(0.3)
    end)
    assert.same({ "shared", "shared", "shared", "shared", "shared" }, got)
  end)

  it("releases more than 9,999 waiting threads on completion (bug fix)", function()
    local n, released = 10050, 0
    run(copas, function()
      local f = copas.future.addthread(function()
        copas.pause(0.2)
        return true
      end)
      for _ = 1, n do
        copas.addthread(function()
          f:get()
          released = released + 1
        end)
      end
      copas.pause(0.4)
    end, 10)
    assert.equal(n, released)
  end)

  it("releases more than 9,999 waiting threads on cancel (bug fix)", function()
    local n, cancelled = 10050, 0
    run(copas, function()
      local f = copas.future.addthread(function() copas.pause(5) end)
      for _ = 1, n do
        copas.addthread(function()
          local _, err = f:get()
          if err == "cancelled" then cancelled = cancelled + 1 end
        end)
      end
      copas.pause(0.2)
      f:cancel()
      copas.pause(0.2)
    end, 10)
    assert.equal(n, cancelled)
  end)
end)


describe("future:try()", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("returns PENDING while the task runs, without waiting", function()
    local status
    run(copas, function()
      local f = copas.future.addthread(function() copas.pause(0.1) end)
      status = pack(f:try())
      f:get()
    end)
    assert.same({ n = 1, false }, status)
  end)

  it("returns SUCCESS and the results once done", function()
    local status
    run(copas, function()
      local f = copas.future.addthread(function() return 1, nil, 3 end)
      f:get()
      status = pack(f:try())
    end)
    assert.same({ n = 4, true, 1, nil, 3 }, status)
  end)

  it("returns ERROR and the error once failed", function()
    local status
    run(copas, function()
      local f = copas.future.addthread(function() error("bad") end)
      f:get()
      status = pack(f:try())
    end)
    assert.equal(2, status.n)
    assert.equal("error", status[1])
    assert.matches("bad", status[2])
  end)
end)


describe("future:cancel()", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("stops a pending task for good; get and try then report 'cancelled'", function()
    local resumed, result, status, cancelled
    run(copas, function()
      local f = copas.future.addthread(function()
        copas.pause(0.2)
        resumed = true
      end)
      copas.pause(0.05)
      cancelled = f:cancel()
      result = pack(f:get())
      status = pack(f:try())
      copas.pause(0.4)
    end)
    assert.is_true(cancelled)
    assert.is_nil(resumed)
    assert.same({ n = 2, false, "cancelled" }, result)
    assert.same({ n = 2, "error", "cancelled" }, status)
  end)

  it("releases the threads waiting in get", function()
    local result
    run(copas, function()
      local f = copas.future.addthread(function() copas.pause(5) end)
      copas.addthread(function() result = pack(f:get()) end)
      copas.pause(0.05)
      f:cancel()
      copas.pause(0.05)
    end)
    assert.same({ n = 2, false, "cancelled" }, result)
  end)

  it("returns false once the task has ended", function()
    local cancelled, result
    run(copas, function()
      local f = copas.future.addthread(function() return "done" end)
      f:get()
      cancelled = f:cancel()
      result = pack(f:get())
    end)
    assert.is_false(cancelled)
    assert.same({ n = 2, true, "done" }, result)
  end)
end)


describe("copas.future.addnamedthread()", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("names the task thread and passes the arguments", function()
    local name, result
    run(copas, function()
      local f = copas.future.addnamedthread("worker", function(a, b) return a + b end, 2, 3)
      name = copas.getthreadname(f.coro)
      result = pack(f:get())
    end)
    assert.equal("worker", name)
    assert.same({ n = 2, true, 5 }, result)
  end)

  it("starts the task on a later step, like copas.addthread", function()
    local started
    run(copas, function()
      local f = copas.future.addthread(function() started = true end)
      assert.is_nil(started)
      assert.is_false(f:try())
      f:get()
    end)
    assert.is_true(started)
  end)
end)
