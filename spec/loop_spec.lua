-- Specs for copas() / copas.loop, copas.step, copas.finished, the copas.running flag and the
-- ordering rules of a step (behaviour contract §1.3, §2.1, §4.3, §4.4, §4.5, §4.10, §15.2).
-- Lead decisions: no core-timer tick (an empty loop returns at once, finished() is true right after
-- require); step(-1)/loop(-1) honour sleepers (upstream blocks in select for ever).
local helper = require("spec.helper")
local system = require("system")
local clock = system.gettime

local run = helper.loop

-- Runs Lua source in a separate interpreter (same version and paths) under `timeout`, so a hang
-- or a crash fails the spec instead of the whole run. Returns the output and the exit code
-- (124/137 = killed by timeout).
local function run_script(src, limit)
  local interp = (arg and arg[-1]) or "lua"
  local prologue = ("package.path = %q; package.cpath = %q\n"):format(package.path, package.cpath)
  local fname = os.tmpname()
  local f = assert(io.open(fname, "w"))
  f:write(prologue, src)
  f:close()
  local p = io.popen(("timeout -s KILL %d %s %s 2>&1; echo \"@@EXIT $?\""):format(limit or 5, interp, fname))
  local out = p:read("*a")
  p:close()
  os.remove(fname)
  local code = tonumber(out:match("@@EXIT (%d+)%s*$"))
  return out, code
end

describe("copas.loop", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("returns at once when there is nothing to do (lead decision: no core-timer tick)", function()
    local best = math.huge
    for _ = 1, 3 do
      copas = helper.fresh_copas()
      local t0 = clock()
      copas.loop()
      best = math.min(best, clock() - t0)
    end
    assert.is_true(best < 0.05, "an empty loop took " .. best .. " s")
  end)

  it("ends promptly once the work is done, however large its timeout", function()
    copas.addthread(function() copas.pause(0.05) end)
    local t0 = clock()
    local step = copas.step
    local deadline = t0 + 8
    copas.step = function(t) -- only a hang guard: the timeout is passed on unchanged
      if clock() > deadline then error("copas.loop(3) still running after 8 s", 0) end
      return step(t)
    end
    local ok, err = pcall(copas.loop, 3)
    copas.step = step
    assert(ok, err)
    local took = clock() - t0
    assert.is_true(took < 0.6, "loop(3) took " .. took .. " s for 0.05 s of work")
  end)

  it("runs a function argument as the initializer thread 'copas_initializer'", function()
    local name, co
    run(copas, 2, function()
      co = coroutine.running()
      name = copas.getthreadname()
    end)
    assert.equal("copas_initializer", name)
    assert.equal("thread", type(co))
    assert.equal("dead", coroutine.status(co))
  end)

  it("returns nothing", function()
    assert.equal(0, select("#", copas.loop(function() end)))
  end)

  it("runs until all threads are done", function()
    local done = {}
    for i = 1, 3 do
      copas.addthread(function()
        copas.pause(0.05 * i)
        done[i] = true
      end)
    end
    local elapsed = run(copas, 3)
    assert.same({ true, true, true }, done)
    assert.is_true(elapsed >= 0.15 - 0.002)
  end)

  it("passes its timeout to every step", function()
    local args = {}
    local step = copas.step
    copas.step = function(t)
      args[#args + 1] = t
      return step(0)
    end
    copas.loop(0.3)
    copas.loop(function() copas.pause(0) end, 0.4)
    copas.loop(nil, 0.5)
    copas.step = step
    local seen = {}
    for _, t in ipairs(args) do seen[t] = true end
    assert.is_true(#args >= 3)
    assert.same({ [0.3] = true, [0.4] = true, [0.5] = true }, seen)
  end)

  it("passes nil to step when called without a timeout", function()
    local n, non_nil = 0, 0
    local step = copas.step
    copas.step = function(t)
      n = n + 1
      if t ~= nil then non_nil = non_nil + 1 end
      return step(0)
    end
    copas.loop(function() copas.pause(0) end)
    copas.step = step
    assert.is_true(n > 0)
    assert.equal(0, non_nil)
  end)

  it("looks up step, finished, exiting and exit through the copas table (late binding)", function()
    local calls = { step = 0, finished = 0, exiting = 0, exit = 0 }
    for name in pairs(calls) do
      local orig = copas[name]
      copas[name] = function(...)
        calls[name] = calls[name] + 1
        return orig(...)
      end
    end
    run(copas, 2, function() copas.pause(0.01) end)
    assert.is_true(calls.step > 0)
    assert.is_true(calls.finished > 0)
    assert.is_true(calls.exiting > 0)
    assert.equal(1, calls.exit)
  end)

  it("keeps stepping while a replaced copas.finished says there is work", function()
    local orig = copas.finished
    local n = 0
    copas.finished = function()
      n = n + 1
      return n > 5 and orig()
    end
    run(copas, 2)
    assert.is_true(n >= 7) -- 5 refusals, then the two finished() detections of the exit rule
  end)

  it("ends on the second finished(), after calling copas.exit() once (exit rule)", function()
    local exits, finished_at_exit = 0, nil
    local exit = copas.exit
    copas.exit = function(...)
      exits = exits + 1
      finished_at_exit = copas.finished()
      return exit(...)
    end
    run(copas, 2, function() copas.pause(0.01) end)
    assert.equal(1, exits)
    assert.is_true(finished_at_exit)
    assert.is_true(copas.exiting())
  end)

  it("can be called again after it returned", function()
    local count = 0
    for _ = 1, 3 do
      run(copas, 2, function()
        copas.pause(0.01)
        count = count + 1
      end)
    end
    assert.equal(3, count)
  end)

  it("is what copas(...) calls, with the same arguments (late binding)", function()
    local got
    copas.loop = function(...) got = { n = select("#", ...), ... }; return "r1", "r2" end
    local a, b = copas(1, nil, 3)
    assert.same({ n = 3, 1, nil, 3 }, got)
    assert.equal("r1", a)
    assert.equal("r2", b)
  end)

  it("as copas(fn) runs the initializer", function()
    local name
    copas(function() name = copas.getthreadname() end)
    assert.equal("copas_initializer", name)
  end)

  it("with a negative timeout still wakes sleepers in time (bug fix; upstream blocks for ever)", function()
    local out, code = run_script([[
      local copas = require("copas")
      local gettime = require("system").gettime
      local t0 = gettime()
      copas.addthread(function()
        copas.pause(0.2)
        print("@@WOKE", gettime() - t0)
      end)
      copas.loop(-1)
      print("@@DONE", gettime() - t0)
    ]], 3)
    assert.equal(0, code, "interpreter killed or failed (exit " .. tostring(code) .. "):\n" .. out)
    local woke = tonumber(out:match("@@WOKE%s+(%S+)"))
    assert.is_number(woke, out)
    assert.is_true(woke >= 0.2 - 0.002 and woke < 1, "woke after " .. tostring(woke))
    assert.matches("@@DONE", out)
  end)
end)

describe("copas.running", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("is false before the loop, true while it runs, false after it returned", function()
    assert.is_false(copas.running)
    local inside
    run(copas, 2, function() inside = copas.running end)
    assert.is_true(inside)
    assert.is_false(copas.running)
  end)

  it("is not set by copas.step", function()
    local inside
    copas.addthread(function() inside = copas.running end)
    copas.step(0)
    assert.is_false(inside)
  end)

  it("stays true when the loop raises", function()
    copas.step = function() error("step failed", 0) end
    local ok, err = pcall(copas.loop)
    assert.is_false(ok)
    assert.equal("step failed", err)
    assert.is_true(copas.running)
  end)
end)

describe("copas.finished", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("is true right after loading (lead decision: no core-timer thread)", function()
    assert.is_true(copas.finished())
  end)

  it("is false while a thread is ready to run", function()
    copas.addthread(function() end)
    assert.is_false(copas.finished())
    copas.step(0)
  end)

  it("is false while a thread sleeps with a deadline, even math.huge", function()
    copas.addthread(function() copas.pause(0.2) end)
    copas.step(0)
    assert.is_false(copas.finished())
    local huge = copas.addthread(function() copas.pause(math.huge) end)
    system.sleep(0.25)
    for _ = 1, 3 do copas.step(0) end
    assert.is_false(copas.finished())
    copas.removethread(huge)
    for _ = 1, 3 do copas.step(0) end
    assert.is_true(copas.finished())
  end)

  it("ignores threads that sleep forever when no timeout is pending", function()
    copas.addthread(function() copas.pauseforever() end)
    for _ = 1, 3 do copas.step(0) end
    assert.is_true(copas.finished())
  end)

  it("counts threads that sleep forever while some copas.timeout is pending", function()
    copas.addthread(function() copas.pauseforever() end)
    copas.addthread(function()
      copas.timeout(0.3, function() end)
      copas.pauseforever()
    end)
    for _ = 1, 3 do copas.step(0) end
    assert.is_false(copas.finished())
  end)

  it("is true again once every thread ended", function()
    copas.addthread(function() copas.pause(0.02) end)
    run(copas, 2)
    assert.is_true(copas.finished())
  end)
end)

describe("copas.step", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("returns false when no socket was ready, even when threads ran", function()
    local ran = false
    copas.addthread(function() ran = true end)
    assert.is_false(copas.step(0))
    assert.is_true(ran)
  end)

  it("with 0 returns at once when nothing is ready", function()
    copas.addthread(function() copas.pause(5) end)
    copas.step(0)
    local t0 = clock()
    for _ = 1, 5 do copas.step(0) end
    assert.is_true(clock() - t0 < 0.1)
  end)

  it("waits at most its timeout when no sleeper is due", function()
    local resumed = false
    copas.addthread(function() copas.pause(5); resumed = true end)
    copas.step(0)
    local t0 = clock()
    copas.step(0.1)
    local took = clock() - t0
    assert.is_false(resumed)
    assert.is_true(took < 0.5, "step(0.1) took " .. took)
  end)

  it("without a timeout waits for the next sleeper instead of spinning", function()
    local woke
    local t0 = clock()
    copas.addthread(function() copas.pause(0.15); woke = clock() - t0 end)
    local steps = 0
    while not woke and clock() - t0 < 3 do
      copas.step()
      steps = steps + 1
    end
    assert.is_number(woke)
    assert.is_true(woke >= 0.15 - 0.002 and woke < 0.6, "woke after " .. tostring(woke))
    assert.is_true(steps <= 6, steps .. " steps")
  end)

  it("without a timeout returns promptly when nothing is scheduled at all", function()
    local out, code = run_script([[
      local copas = require("copas")
      local gettime = require("system").gettime
      local t0 = gettime()
      copas.step()
      copas.step()
      print("@@TOOK", gettime() - t0)
    ]], 3)
    assert.equal(0, code, "interpreter killed or failed (exit " .. tostring(code) .. "):\n" .. out)
    local took = tonumber(out:match("@@TOOK%s+(%S+)"))
    assert.is_true(took < 1, "two empty steps took " .. tostring(took))
  end)

  it("with a negative timeout still wakes sleepers in time (bug fix; upstream blocks for ever)", function()
    local out, code = run_script([[
      local copas = require("copas")
      local gettime = require("system").gettime
      local t0 = gettime()
      local woke
      copas.addthread(function()
        copas.pause(0.2)
        woke = gettime() - t0
      end)
      while not woke and gettime() - t0 < 3 do copas.step(-1) end
      print("@@WOKE", woke)
    ]], 3)
    assert.equal(0, code, "interpreter killed or failed (exit " .. tostring(code) .. "):\n" .. out)
    local woke = tonumber(out:match("@@WOKE%s+(%S+)"))
    assert.is_number(woke, out)
    assert.is_true(woke >= 0.2 - 0.002 and woke < 1, "woke after " .. tostring(woke))
  end)
end)

describe("ordering within a step (§4.10)", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("runs ready threads in the order they became ready", function()
    local log = {}
    local a = copas.addthread(function() copas.pauseforever(); log[#log + 1] = "a" end)
    local b = copas.addthread(function() copas.pauseforever(); log[#log + 1] = "b" end)
    copas.step(0)
    copas.addthread(function() log[#log + 1] = "new" end)
    copas.wakeup(b)
    copas.wakeup(a)
    copas.step(0)
    assert.same({ "new", "b", "a" }, log)
  end)

  it("runs expired sleepers after the threads that were already ready", function()
    local log = {}
    copas.addthread(function()
      copas.pause(0.05)
      log[#log + 1] = "sleeper"
    end)
    copas.step(0) -- the sleeper's body starts and goes to sleep
    copas.addthread(function() log[#log + 1] = "ready" end)
    system.sleep(0.15) -- the sleeper's deadline passes while no step runs
    copas.step(0)
    assert.same({ "ready", "sleeper" }, log)
  end)

  it("moves several expired sleepers to the ready list in deadline order", function()
    local log = {}
    for _, d in ipairs({ 0.06, 0.02, 0.04 }) do
      copas.addthread(function()
        copas.pause(d)
        log[#log + 1] = d
      end)
    end
    copas.step(0)
    system.sleep(0.15)
    copas.step(0)
    assert.same({ 0.02, 0.04, 0.06 }, log)
  end)

  it("runs a thread made ready during the resumable phase in the next step", function()
    local log = {}
    copas.addthread(function()
      log[#log + 1] = "a1"
      copas.pause(0)
      log[#log + 1] = "a2"
    end)
    copas.addthread(function()
      log[#log + 1] = "b1"
      copas.addthread(function() log[#log + 1] = "c" end)
    end)
    copas.step(0)
    assert.same({ "a1", "b1" }, log)
    copas.step(0)
    assert.same({ "a1", "b1", "a2", "c" }, log)
  end)

  it("starts each pause(0) round of many threads in the same relative order", function()
    local log = {}
    for i = 1, 3 do
      copas.addthread(function()
        for r = 1, 3 do
          log[#log + 1] = i .. ":" .. r
          copas.pause(0)
        end
      end)
    end
    run(copas, 2)
    assert.same({ "1:1", "2:1", "3:1", "1:2", "2:2", "3:2", "1:3", "2:3", "3:3" }, log)
  end)
end)
