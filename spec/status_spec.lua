-- Specs for copas.status and its stats mode (behaviour contract §7, §15.14).
-- Lead decision: no core-timer thread, so after require status().active == 0 and .timer == 0, and
-- the counts below are exact (upstream counts its core timer in 'active' or 'timer').
local helper = require("spec.helper")
local system = require("system")
local clock = system.gettime

local run = helper.loop

local BASE = { "running", "timeout", "timer", "inactive", "read", "write", "active" }
local STATS = {
  "steps", "duration_min", "duration_max", "duration_tot", "duration_avg", "duration_min_ever",
  "duration_max_ever", "time_start", "time_end", "time_tot", "time_avg",
}

local function keys(t)
  local r = {}
  for k in pairs(t) do r[#r + 1] = k end
  table.sort(r)
  return r
end

local function sorted(list)
  local r = {}
  for i, v in ipairs(list) do r[i] = v end
  table.sort(r)
  return r
end

-- true when x is already rounded to 3 decimals (rounding it again gives the same number)
local function rounded3(x)
  return math.floor(x * 1000 + 0.5) / 1000 == x
end

describe("copas.status", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("returns a table with exactly the base fields", function()
    local s = copas.status()
    assert.same(sorted(BASE), keys(s))
    assert.is_boolean(s.running)
    for _, k in ipairs(BASE) do
      if k ~= "running" then assert.is_number(s[k], k) end
    end
  end)

  it("returns a new table on every call", function()
    assert.are_not.equal(copas.status(), copas.status())
  end)

  it("reports nothing to do right after loading (lead decision: no core timer)", function()
    assert.same({
      running = false, timeout = 0, timer = 0, inactive = 0, read = 0, write = 0, active = 0,
    }, copas.status())
  end)

  it("counts ready threads in 'active'", function()
    for _ = 1, 3 do copas.addthread(function() end) end
    assert.equal(3, copas.status().active)
    copas.step(0)
    assert.equal(0, copas.status().active)
  end)

  it("counts threads sleeping with a deadline in 'timer'", function()
    for i = 1, 2 do copas.addthread(function() copas.pause(i) end) end
    copas.addthread(function() copas.pause(math.huge) end)
    copas.step(0)
    local s = copas.status()
    assert.equal(3, s.timer)
    assert.equal(0, s.active)
  end)

  it("counts threads sleeping forever in 'inactive'", function()
    local threads = {}
    for i = 1, 4 do threads[i] = copas.addthread(function() copas.pauseforever() end) end
    copas.step(0)
    assert.equal(4, copas.status().inactive)
    copas.wakeup(threads[1])
    local s = copas.status()
    assert.equal(3, s.inactive)
    assert.equal(1, s.active)
  end)

  it("reports copas.gettimeouts() in 'timeout'", function()
    local counts = {}
    copas.addthread(function()
      copas.timeout(1, function() end)
      counts[1] = copas.status().timeout
      counts[2] = copas.gettimeouts()
      copas.timeout(0)
      counts[3] = copas.status().timeout
    end)
    run(copas, 2)
    assert.same({ 1, 1, 0 }, counts)
  end)

  it("reads 'timeout' through copas.gettimeouts (late binding)", function()
    copas.gettimeouts = function() return 99 end
    assert.equal(99, copas.status().timeout)
  end)

  it("reports 'running' as a boolean copy of copas.running", function()
    local inside
    run(copas, 2, function() inside = copas.status().running end)
    assert.is_true(inside)
    assert.is_false(copas.status().running)
    copas.running = "yes"
    assert.is_true(copas.status().running)
    copas.running = nil
    assert.is_false(copas.status().running)
  end)

  it("reports no sockets when only threads exist", function()
    copas.addthread(function() copas.pause(0.05) end)
    copas.step(0)
    local s = copas.status()
    assert.equal(0, s.read)
    assert.equal(0, s.write)
  end)

  it("counts a registered server in 'read' until it is removed", function()
    local net = require("spec.support.net")
    local srv = net.server()
    copas.addserver(srv, function() end)
    assert.equal(1, copas.status().read)
    assert.equal(0, copas.status().write)
    copas.removeserver(srv, true)
    assert.equal(0, copas.status().read)
    net.closeall()
  end)

  it("counts sockets with a thread waiting to read in 'read', and to write in 'write'", function()
    local net = require("spec.support.net")
    local quiet = net.pair()        -- nothing ever arrives here: its reader waits
    local _, flooded = net.pair()   -- nobody reads the other end: its writer blocks
    local seen
    copas.addthread(function() copas.receive(quiet, "*l") end)
    copas.addthread(function()
      local chunk = ("x"):rep(65536)
      while copas.send(flooded, chunk) do end
    end)
    copas.addthread(function()
      for _ = 1, 200 do
        copas.pause(0.01)
        local s = copas.status()
        if s.write == 1 then seen = s break end
      end
      copas.close(quiet)
      copas.close(flooded)
    end)
    run(copas, 5)
    assert.is_table(seen, "the writer never blocked")
    assert.equal(1, seen.read)
    assert.equal(1, seen.write)
    assert.equal(0, copas.status().read)
    net.closeall()
  end)

  it("ignores arguments other than the booleans true and false", function()
    for _, v in ipairs({ 1, "yes", {}, 0, "true" }) do
      local s = copas.status(v)
      assert.same(sorted(BASE), keys(s))
    end
    for _ = 1, 3 do copas.step(0) end
    assert.same(sorted(BASE), keys(copas.status()))
  end)
end)

describe("copas.status stats mode", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("status(true) switches stats on but returns only the base fields on that call", function()
    assert.same(sorted(BASE), keys(copas.status(true)))
  end)

  it("returns only base fields while no step ran since stats were switched on", function()
    copas.status(true)
    assert.same(sorted(BASE), keys(copas.status()))
  end)

  it("adds the stats record after some steps", function()
    copas.status(true)
    copas.addthread(function() for _ = 1, 5 do copas.pause(0.01) end end)
    for _ = 1, 6 do copas.step(0.02) end
    local s = copas.status()
    local expected = sorted(BASE)
    for _, k in ipairs(STATS) do expected[#expected + 1] = k end
    table.sort(expected)
    assert.same(expected, keys(s))
    assert.is_nil(s.step_start)
    for _, k in ipairs(STATS) do assert.is_number(s[k], k) end
  end)

  it("counts steps after the first one", function()
    copas.status(true)
    for _ = 1, 5 do copas.step(0) end
    assert.equal(4, copas.status().steps)
  end)

  it("resets the record on every read", function()
    copas.status(true)
    for _ = 1, 3 do copas.step(0) end
    assert.equal(2, copas.status().steps)
    assert.same(sorted(BASE), keys(copas.status()))
    for _ = 1, 4 do copas.step(0) end
    assert.equal(3, copas.status().steps)
  end)

  it("rounds durations to microseconds in milliseconds, and times to milliseconds in seconds", function()
    copas.status(true)
    copas.addthread(function() for _ = 1, 3 do copas.pause(0.01) end end)
    for _ = 1, 5 do copas.step(0.02) end
    local s = copas.status()
    for _, k in ipairs({ "duration_min", "duration_max", "duration_tot", "duration_avg",
                         "duration_min_ever", "duration_max_ever", "time_avg" }) do
      assert.is_true(rounded3(s[k]), k .. " = " .. s[k])
    end
    for _, k in ipairs({ "time_start", "time_end", "time_tot" }) do
      assert.is_true(rounded3(s[k]), k .. " = " .. s[k])
    end
    -- durations are milliseconds: 4 steps waiting ~10-20 ms each
    assert.is_true(s.duration_tot >= 0, "duration_tot " .. s.duration_tot)
    assert.is_true(s.duration_tot < 1000, "duration_tot " .. s.duration_tot)
    -- times are epoch seconds
    assert.is_true(math.abs(s.time_end - os.time()) < 5)
    assert.is_true(s.time_start <= s.time_end)
    assert.is_true(math.abs(s.time_tot - (s.time_end - s.time_start)) < 0.0021)
    assert.is_true(s.time_tot > 0.02 and s.time_tot < 1, "time_tot " .. s.time_tot)
    assert.is_true(s.duration_min <= s.duration_avg and s.duration_avg <= s.duration_max)
  end)

  it("measures the time spent between selects (running tasks) as the step duration", function()
    copas.status(true)
    copas.addthread(function()
      for _ = 1, 3 do
        local t0 = clock()
        while clock() - t0 < 0.02 do end -- busy for 20 ms
        copas.pause(0)
      end
    end)
    for _ = 1, 4 do copas.step(0) end
    local s = copas.status()
    assert.equal(3, s.steps)
    assert.is_true(s.duration_max >= 19, "duration_max " .. s.duration_max)
    assert.is_true(s.duration_tot >= 57, "duration_tot " .. s.duration_tot)
  end)

  it("reports the odd values of a record with a single step", function()
    copas.status(true)
    copas.step(0)
    local s = copas.status()
    assert.equal(0, s.steps)
    assert.equal(-1000, s.duration_max)
    assert.equal(999999000, s.duration_min)
    assert.is_true(s.duration_avg ~= s.duration_avg, "duration_avg should be NaN")
    assert.equal(math.huge, s.time_avg)
  end)

  it("keeps the _ever extremes across reads", function()
    copas.status(true)
    copas.addthread(function()
      local t0 = clock()
      while clock() - t0 < 0.03 do end
      copas.pause(0)
    end)
    for _ = 1, 3 do copas.step(0) end
    local first = copas.status()
    for _ = 1, 3 do copas.step(0) end
    local second = copas.status()
    assert.is_true(first.duration_max >= 29)
    assert.equal(first.duration_max_ever, first.duration_max)
    assert.is_true(second.duration_max < first.duration_max)
    assert.equal(first.duration_max_ever, second.duration_max_ever)
    assert.is_true(second.duration_min_ever <= math.min(first.duration_min, second.duration_min))
  end)

  it("status(true) while on behaves like status() (returns and resets the record)", function()
    copas.status(true)
    for _ = 1, 3 do copas.step(0) end
    local s = copas.status(true)
    assert.equal(2, s.steps)
    assert.same(sorted(BASE), keys(copas.status()))
  end)

  it("status(false) switches stats off and returns the base fields", function()
    copas.status(true)
    for _ = 1, 3 do copas.step(0) end
    assert.same(sorted(BASE), keys(copas.status(false)))
    for _ = 1, 3 do copas.step(0) end
    assert.same(sorted(BASE), keys(copas.status()))
  end)

  it("switching on again starts from scratch", function()
    copas.status(true)
    for _ = 1, 5 do copas.step(0) end
    copas.status(false)
    copas.status(true)
    for _ = 1, 2 do copas.step(0) end
    assert.equal(1, copas.status().steps)
  end)

  it("collects during copas.loop as well", function()
    copas.status(true)
    local s
    run(copas, 2, function()
      for _ = 1, 5 do copas.pause(0) end
      s = copas.status()
    end)
    assert.is_number(s.steps)
    assert.is_true(s.steps >= 4)
    assert.is_true(s.running)
  end)
end)
