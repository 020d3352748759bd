-- Specs for copas.addthread, copas.addnamedthread, copas.removethread and the identity of the
-- coroutine a thread body runs in (behaviour contract §2.7, §4.10, §15.1).
local helper = require("spec.helper")

local run = helper.loop

describe("copas.addthread", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("returns the coroutine of the new thread", function()
    local co = copas.addthread(function() end)
    assert.equal("thread", type(co))
    assert.equal("suspended", coroutine.status(co))
  end)

  it("does not run the body during the call; it starts in the next resumable phase", function()
    local ran = false
    copas.addthread(function() ran = true end)
    assert.is_false(ran)
    copas.step(0)
    assert.is_true(ran)
  end)

  it("runs the body inside the returned coroutine", function()
    local inside
    local co = copas.addthread(function() inside = coroutine.running() end)
    run(copas, 2)
    assert.equal(co, inside)
  end)

  it("passes extra arguments, keeping nils and the argument count", function()
    local n, a, b, c, d
    copas.addthread(function(...)
      n = select("#", ...)
      a, b, c, d = ...
    end, 1, nil, "three", nil)
    run(copas, 2)
    assert.equal(4, n)
    assert.equal(1, a)
    assert.is_nil(b)
    assert.equal("three", c)
    assert.is_nil(d)
  end)

  it("does not pass the scheduler's resume values to the body", function()
    local n
    copas.addthread(function(...) n = select("#", ...) end)
    run(copas, 2)
    assert.equal(0, n)
  end)

  it("ignores the body's return values and leaves a dead coroutine", function()
    local co = copas.addthread(function() return 1, 2, 3 end)
    run(copas, 2)
    assert.equal("dead", coroutine.status(co))
  end)

  it("gives an unnamed thread its tostring() as name", function()
    local co = copas.addthread(function() end)
    assert.equal(tostring(co), copas.getthreadname(co))
  end)

  it("runs threads added from the main thread in the order they were added", function()
    local order = {}
    for i = 1, 5 do copas.addthread(function() order[#order + 1] = i end) end
    copas.step(0)
    assert.same({ 1, 2, 3, 4, 5 }, order)
  end)

  it("starts a thread added from a running thread in the next step, not the current one", function()
    local log = {}
    copas.addthread(function()
      log[#log + 1] = "parent"
      copas.addthread(function() log[#log + 1] = "child" end)
      log[#log + 1] = "parent done"
    end)
    copas.step(0)
    assert.same({ "parent", "parent done" }, log)
    copas.step(0)
    assert.same({ "parent", "parent done", "child" }, log)
  end)

  it("works for many threads", function()
    local count = 0
    for _ = 1, 2000 do
      copas.addthread(function()
        copas.pause(0.01)
        count = count + 1
      end)
    end
    run(copas, 10)
    assert.equal(2000, count)
  end)

  it("lets dead threads be garbage collected", function()
    local weak = setmetatable({}, { __mode = "k" })
    weak[copas.addthread(function() copas.pause(0.01) end)] = true
    run(copas, 2)
    collectgarbage()
    collectgarbage()
    assert.is_nil(next(weak))
  end)

  it("keeps threads across loop runs: a thread added after a loop runs in the next loop", function()
    run(copas, 2)
    local ran = false
    copas.addthread(function() ran = true end)
    run(copas, 2)
    assert.is_true(ran)
  end)
end)

describe("copas.addnamedthread", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("names the thread and returns its coroutine", function()
    local name_inside
    local co = copas.addnamedthread("worker", function()
      name_inside = copas.getthreadname()
    end)
    assert.equal("thread", type(co))
    assert.equal("worker", copas.getthreadname(co))
    run(copas, 2)
    assert.equal("worker", name_inside)
  end)

  it("accepts the old argument order (function, name)", function()
    local ran = false
    local co = copas.addnamedthread(function() ran = true end, "old-style")
    assert.equal("old-style", copas.getthreadname(co))
    run(copas, 2)
    assert.is_true(ran)
  end)

  it("passes extra arguments", function()
    local got
    copas.addnamedthread("args", function(a, b) got = { a, b } end, "x", 42)
    run(copas, 2)
    assert.same({ "x", 42 }, got)
  end)

  it("with a nil name behaves like addthread", function()
    local ran = false
    local co = copas.addnamedthread(nil, function() ran = true end)
    assert.equal(tostring(co), copas.getthreadname(co))
    run(copas, 2)
    assert.is_true(ran)
  end)

  it("is what addthread calls (late binding through the copas table)", function()
    local seen
    local orig = copas.addnamedthread
    copas.addnamedthread = function(name, fn, ...)
      seen = { name = name, fn = fn }
      return orig(name, fn, ...)
    end
    local f = function() end
    copas.addthread(f)
    copas.addnamedthread = orig
    assert.is_table(seen)
    assert.is_nil(seen.name)
    assert.equal(f, seen.fn)
  end)
end)

describe("copas.removethread", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("drops a thread that has not started yet", function()
    local ran = false
    local co = copas.addthread(function() ran = true end)
    copas.removethread(co)
    run(copas, 2)
    assert.is_false(ran)
  end)

  it("drops a sleeping thread at once, so it no longer keeps the loop alive", function()
    local resumed = false
    local sleeper = copas.addthread(function()
      copas.pause(5)
      resumed = true
    end)
    local elapsed = run(copas, 4, function()
      copas.pause(0.1)
      copas.removethread(sleeper)
    end)
    assert.is_false(resumed)
    assert.is_true(elapsed < 1, "loop took " .. elapsed .. " s after removing the sleeper")
  end)

  it("stops a repeating thread from outside", function()
    local ticks = 0
    local ticker = copas.addthread(function()
      while true do
        ticks = ticks + 1
        copas.pause(0.01)
      end
    end)
    run(copas, 4, function()
      copas.pause(0.2)
      copas.removethread(ticker)
    end)
    local at_removal = ticks
    assert.is_true(ticks > 2)
    run(copas, 1)
    assert.equal(at_removal, ticks)
  end)

  it("drops a pauseforever thread: a later wakeup does not resume it", function()
    local resumed = false
    local co = copas.addthread(function()
      copas.pauseforever()
      resumed = true
    end)
    copas.step(0)
    copas.removethread(co)
    copas.wakeup(co)
    run(copas, 2)
    assert.is_false(resumed)
  end)

  it("called on the running thread drops it at its next yield", function()
    local before, after = false, false
    copas.addthread(function()
      copas.removethread(coroutine.running())
      before = true
      copas.pause(0)
      after = true
    end)
    run(copas, 2)
    assert.is_true(before)
    assert.is_false(after)
  end)

  it("called on the running thread has no effect when the thread returns before yielding", function()
    local done = false
    copas.addthread(function()
      copas.removethread(coroutine.running())
      done = true
    end)
    run(copas, 2)
    assert.is_true(done)
  end)

  it("does not run the error handler or any further code of the removed thread", function()
    local handled = false
    copas.seterrorhandler(function() handled = true end, true)
    local co = copas.addthread(function()
      copas.pause(0.05)
      error("should never get here")
    end)
    copas.step(0)
    copas.removethread(co)
    run(copas, 2)
    assert.is_false(handled)
  end)

  it("leaves other threads alone", function()
    local a, b = 0, 0
    local ta = copas.addthread(function() for _ = 1, 5 do a = a + 1; copas.pause(0) end end)
    copas.addthread(function() for _ = 1, 5 do b = b + 1; copas.pause(0) end end)
    copas.step(0)
    copas.removethread(ta)
    run(copas, 2)
    assert.equal(1, a)
    assert.equal(5, b)
  end)

  it("accepts a dead thread or an unknown coroutine without error", function()
    local dead = copas.addthread(function() end)
    run(copas, 2)
    assert.equal("dead", coroutine.status(dead))
    assert.has_no.errors(function() copas.removethread(dead) end)
    local foreign = coroutine.create(function() end)
    assert.has_no.errors(function() copas.removethread(foreign) end)
    assert.equal("suspended", coroutine.status(foreign))
  end)

  it("raises on nil", function()
    assert.has_error(function() copas.removethread(nil) end)
  end)

  it("lets a removed thread be garbage collected", function()
    local weak = setmetatable({}, { __mode = "k" })
    local co = copas.addthread(function() while true do copas.pause(0.01) end end)
    weak[co] = true
    run(copas, 2, function()
      copas.pause(0.05)
      copas.removethread(co)
    end)
    co = nil -- luacheck: ignore
    collectgarbage()
    collectgarbage()
    assert.is_nil(next(weak))
  end)
end)

describe("the coroutine a thread runs in", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("stays the same across pauses", function()
    local seen = {}
    local co = copas.addthread(function()
      seen[1] = coroutine.running()
      copas.pause(0)
      seen[2] = coroutine.running()
      copas.pause(0.01)
      seen[3] = coroutine.running()
    end)
    run(copas, 2)
    assert.equal(co, seen[1])
    assert.equal(co, seen[2])
    assert.equal(co, seen[3])
  end)

  it("is a different coroutine for every thread", function()
    local a, b
    copas.addthread(function() a = coroutine.running() end)
    copas.addthread(function() b = coroutine.running() end)
    run(copas, 2)
    assert.is_not_nil(a)
    assert.are_not.equal(a, b)
  end)

  it("is what copas.getthreadname() uses by default inside the thread", function()
    local name
    local co = copas.addthread(function()
      copas.setthreadname("renamed")
      name = copas.getthreadname()
    end)
    run(copas, 2)
    assert.equal("renamed", name)
    assert.equal("renamed", copas.getthreadname(co))
  end)

  it("is not resumable by user code while it waits in copas (its status is 'suspended')", function()
    local status
    local co
    co = copas.addthread(function() copas.pause(0.05) end)
    copas.addthread(function() status = coroutine.status(co) end)
    run(copas, 2)
    assert.equal("suspended", status)
  end)

  it("is running again in the caller once addthread returns from the new thread's first resume", function()
    -- addthread runs the new coroutine up to its internal pause at once (§2.7), nested in the
    -- caller; afterwards the caller is running again
    local status_after
    copas.addthread(function()
      copas.addthread(function() end)
      status_after = coroutine.status(coroutine.running())
    end)
    run(copas, 2)
    assert.equal("running", status_after)
  end)
end)

-- §12: on PUC 5.1 pcall cannot be yielded across; coxpcall's copcall can, and copas keys its
-- per-thread state on coxpcall.running, which maps the helper coroutine back to the thread.
-- Elsewhere plain pcall is yieldable and coroutine.running is the thread itself.
describe("a protected call inside a copas thread", function()
  local puc51 = _VERSION == "Lua 5.1" and not jit
  local protected = puc51 and require("coxpcall").pcall or pcall
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("can pause, and the thread resumes after it", function()
    local results = {}
    copas.addthread(function()
      local ok, elapsed = protected(function() return copas.pause(0.02) end)
      results[#results + 1] = ok
      results[#results + 1] = type(elapsed)
      local ok2 = protected(function() copas.pause(0) end)
      results[#results + 1] = ok2
    end)
    run(copas, 2)
    assert.same({ true, "number", true }, results)
  end)

  it("sets the error handler of the copas thread itself", function()
    local handled
    local co = copas.addthread(function()
      protected(function() copas.seterrorhandler(function(_, c) handled = c end) end)
      copas.pause(0)
      error("after the protected call")
    end)
    run(copas, 2)
    assert.equal(co, handled)
  end)

  it("arms copas.timeout for the copas thread, which the callback receives", function()
    local got, thread
    thread = copas.addthread(function()
      protected(function()
        copas.timeout(0.02, function(c) got = c; copas.wakeup(c) end)
        copas.pauseforever()
      end)
    end)
    run(copas, 2)
    assert.equal(thread, got)
  end)
end)

-- architecture.md: mlua's handle stack on 5.1/LuaJIT holds ~8,000 live values; a core that kept
-- a handle per task failed at ~7,993 threads there.
describe("many threads at once", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("runs 20,000 threads that are all alive at the same time, on every runtime", function()
    local n, started, finished = 20000, 0, 0
    local threads = {}
    for i = 1, n do
      threads[i] = copas.addthread(function()
        started = started + 1
        copas.pause(0.01)
        copas.pauseforever()  -- woken below: forever-sleepers are held by the core too
        finished = finished + 1
      end)
    end
    copas.addthread(function()
      copas.pause(0.1)
      for i = 1, n do copas.wakeup(threads[i]) end
    end)
    run(copas, 20)
    assert.equal(n, started)
    assert.equal(n, finished)
  end)
end)
