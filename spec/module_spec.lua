-- Specs for the copas module itself: the exact key set, meta fields, aliases, lazy submodules,
-- independent reloads, running without LuaSocket, copas.gettime and copas.debug.start/stop
-- (behaviour contract §1, §2.1, §2.2, §2.9, §11, §15.24).
local helper = require("spec.helper")
local system = require("system")
local clock = system.gettime

local run = helper.loop

local FIELDS = {
  _COPYRIGHT = "string", _DESCRIPTION = "string", _VERSION = "string",
  autoclose = "boolean", running = "boolean", debug = "table",
}
-- Upstream's set, plus the lowercase usesockettimeouterrors that the reference manual documents
-- and issue #3 asks for. The ftp, http and smtp submodules join SUBMODULES with their own issue.
local FUNCTIONS = {
  "addnamedthread", "addserver", "addthread", "cancelall", "close", "connect", "dohandshake",
  "exit", "exiting", "finished", "flush", "geterrorhandler", "getsocketname", "getthreadname",
  "gettime", "gettimeouts", "gettraceback", "handler", "loop", "pause", "pauseforever", "receive",
  "receivePartial", "receivefrom", "receivepartial", "removeserver", "removethread", "send",
  "sendto", "setErrorHandler", "seterrorhandler", "setsocketname", "setthreadname", "settimeout",
  "settimeouts", "sleep", "status", "step", "timeout", "useSocketTimeoutErrors",
  "usesockettimeouterrors", "waitforexit", "wakeup", "wrap",
}
local SUBMODULES = { "future", "lock", "queue", "semaphore", "timer" }

local function key_types(t)
  local r = {}
  for k, v in pairs(t) do r[k] = type(v) end
  return r
end

describe("the copas module table", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("has exactly the documented keys after loading", function()
    local expected = {}
    for k, v in pairs(FIELDS) do expected[k] = v end
    for _, k in ipairs(FUNCTIONS) do expected[k] = "function" end
    assert.same(expected, key_types(copas))
  end)

  it("carries the upstream meta information", function()
    assert.equal("Copas 4.11.0", copas._VERSION)
    assert.equal("Copyright (C) 2005-2013 Kepler Project, 2015-2026 Thijs Schreijer", copas._COPYRIGHT)
    assert.equal("Coroutine Oriented Portable Asynchronous Services", copas._DESCRIPTION)
  end)

  it("starts with autoclose = true and running = false", function()
    assert.is_true(copas.autoclose)
    assert.is_false(copas.running)
  end)

  it("has aliases that are the very same function objects", function()
    assert.equal(copas.receivepartial, copas.receivePartial)
    assert.equal(copas.seterrorhandler, copas.setErrorHandler)
  end)

  it("has usesockettimeouterrors as the same function as useSocketTimeoutErrors", function()
    assert.equal(copas.useSocketTimeoutErrors, copas.usesockettimeouterrors)
  end)

  it("has a debug table with start, stop and socket", function()
    assert.same({ start = "function", stop = "function", socket = "function" }, key_types(copas.debug))
  end)

  it("returns nil for unknown keys without raising", function()
    assert.is_nil(copas.no_such_thing)
    assert.is_nil(copas[1])
    assert.is_nil(copas[true])
  end)

  it("is callable", function()
    local ok = pcall(copas, function() end)
    assert.is_true(ok)
  end)
end)

describe("copas submodules", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("are not loaded until touched", function()
    for _, name in ipairs(SUBMODULES) do
      assert.is_nil(rawget(copas, name), name)
    end
  end)

  it("load on first access, store themselves in the table and equal require('copas.<name>')", function()
    for _, name in ipairs(SUBMODULES) do
      local mod = copas[name]
      assert.is_table(mod, name)
      assert.equal(mod, rawget(copas, name), name)
      assert.equal(package.loaded["copas." .. name], mod, name)
      assert.equal(mod, copas[name], name)
    end
  end)

  it("appear in pairs() once touched, and only then", function()
    local _ = copas.lock
    local seen = key_types(copas)
    assert.equal("table", seen.lock)
    assert.is_nil(seen.queue)
    assert.is_nil(seen.timer)
  end)

  it("of a fresh copas bind to that copas", function()
    local lock = copas.lock.new()
    local got, err
    run(copas, 2, function()
      got, err = lock:get()
      lock:release()
    end)
    assert.is_not_nil(got, err)
  end)
end)

describe("reloading copas", function()
  it("gives a fresh, independent instance", function()
    local c1 = helper.fresh_copas()
    local c2 = helper.fresh_copas()
    assert.are_not.equal(c1, c2)

    -- threads belong to their own instance
    local ran1, ran2 = false, false
    c1.addthread(function() ran1 = true end)
    local active2 = c2.status().active
    c2.addthread(function() ran2 = true end)
    assert.equal(active2 + 1, c2.status().active)
    c2.step(0)
    assert.is_false(ran1)
    assert.is_true(ran2)
    c1.step(0)
    assert.is_true(ran1)
  end)

  it("keeps default error handlers apart", function()
    local c1 = helper.fresh_copas()
    local c2 = helper.fresh_copas()
    local h1 = function() end
    c1.seterrorhandler(h1, true)
    assert.equal(h1, c1.geterrorhandler())
    assert.are_not.equal(h1, c2.geterrorhandler())
    local got = {}
    c2.seterrorhandler(function(e) got[#got + 1] = e end, true)
    c1.addthread(function() error("from c1", 0) end)
    c2.addthread(function() error("from c2", 0) end)
    c1.step(0)
    c2.step(0)
    assert.same({ "from c2" }, got)
  end)

  it("keeps names apart", function()
    local c1 = helper.fresh_copas()
    local c2 = helper.fresh_copas()
    local co = coroutine.create(function() end)
    c1.setthreadname("in c1", co)
    assert.equal("in c1", c1.getthreadname(co))
    assert.equal(tostring(co), c2.getthreadname(co))
  end)

  it("keeps loop and exit state apart; both instances keep working", function()
    local c1 = helper.fresh_copas()
    local c2 = helper.fresh_copas()
    local done1 = false
    run(c1, 2, function() c1.pause(0.01); done1 = true end)
    assert.is_true(done1)
    assert.is_true(c1.exiting())
    assert.is_nil(c2.exiting())
    local done2 = false
    run(c2, 2, function() c2.pause(0.01); done2 = true end)
    assert.is_true(done2)
  end)

  it("restores the built-in default error handler", function()
    local c1 = helper.fresh_copas()
    c1.seterrorhandler(function() end, true)
    local c2 = helper.fresh_copas()
    local lines = {}
    local orig = _G.print
    _G.print = function(s) lines[#lines + 1] = s end
    local ok, err = pcall(run, c2, 2, function() error("printed by default") end)
    _G.print = orig
    assert(ok, err)
    assert.equal(1, #lines)
    assert.matches("printed by default %(coroutine: copas_initializer, socket: nil%)", lines[1])
  end)
end)

describe("copas without LuaSocket", function()
  local real_require, saved
  local copas

  -- makes require("socket") (and its submodules) fail, then loads a fresh copas
  before_each(function()
    real_require = require
    saved = {}
    for name, mod in pairs(package.loaded) do
      if name == "socket" or name:match("^socket%.") then
        saved[name] = mod
        package.loaded[name] = nil
      end
    end
    _G.require = function(name, ...)
      if name == "socket" or name:match("^socket%.") then
        error("module '" .. name .. "' not found (simulated for this spec)")
      end
      return real_require(name, ...)
    end
    local ok, c = pcall(helper.fresh_copas)
    _G.require = real_require
    assert(ok, c)
    copas = c
  end)

  after_each(function()
    _G.require = real_require
    for name, mod in pairs(saved) do package.loaded[name] = mod end
  end)

  it("loads, and has the same key set", function()
    local expected = {}
    for k, v in pairs(FIELDS) do expected[k] = v end
    for _, k in ipairs(FUNCTIONS) do expected[k] = "function" end
    assert.same(expected, key_types(copas))
    assert.is_nil(package.loaded.socket)
  end)

  it("gives epoch seconds from copas.gettime", function()
    assert.is_true(math.abs(copas.gettime() - os.time()) < 2)
  end)

  it("runs threads, pauses and copas.timeout", function()
    local log = {}
    local t0 = clock()
    copas.addthread(function()
      copas.pause(0.1)
      log[#log + 1] = "paused"
      copas.timeout(0.1, function(co) log[#log + 1] = "timeout"; copas.wakeup(co) end)
      copas.pauseforever()
      log[#log + 1] = "woken"
    end)
    run(copas, 3)
    assert.same({ "paused", "timeout", "woken" }, log)
    local took = clock() - t0
    assert.is_true(took >= 0.2 - 0.002 and took < 1.5, "took " .. took)
  end)

  it("signals exit and releases waitforexit", function()
    local released = false
    copas.addthread(function()
      copas.waitforexit()
      released = true
    end)
    run(copas, 2)
    assert.is_true(released)
  end)

  it("returns true from step (no select, so no 'timeout' result)", function()
    copas.addthread(function() copas.pause(0.01) end)
    assert.is_true(copas.step(0))
    assert.is_true(copas.step(0.05))
  end)

  it("raises when copas.http is touched, and keeps it lazy", function()
    _G.require = function(name, ...)
      if name == "socket" or name:match("^socket%.") then error("module '" .. name .. "' not found") end
      return real_require(name, ...)
    end
    local ok = pcall(function() return copas.http end)
    _G.require = real_require
    assert.is_false(ok)
    assert.is_nil(rawget(copas, "http"))
  end)
end)

describe("copas.gettime", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("returns epoch seconds with sub-second resolution", function()
    local t = copas.gettime()
    assert.is_number(t)
    assert.is_true(math.abs(t - os.time()) < 2)
    local t1 = copas.gettime()
    system.sleep(0.05)
    local d = copas.gettime() - t1
    assert.is_true(d > 0.03 and d < 0.5, "50 ms measured as " .. d)
  end)

  it("does not go backwards", function()
    local prev = copas.gettime()
    for _ = 1, 1000 do
      local now = copas.gettime()
      assert.is_true(now >= prev)
      prev = now
    end
  end)

  it("is LuaSocket's socket.gettime when LuaSocket is present", function()
    assert.equal(require("socket").gettime, copas.gettime)
  end)
end)

describe("copas.debug.start / copas.debug.stop", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)
  after_each(function() if copas then copas.debug.stop() end end)

  local function has_entry(log, ...)
    local want = { n = select("#", ...), ... }
    for _, entry in ipairs(log) do
      if entry.n == want.n then
        local same = true
        for i = 1, want.n do
          -- tostring too: the printed form must match (a float 0.0 prints differently from 0)
          if entry[i] ~= want[i] or tostring(entry[i]) ~= tostring(want[i]) then same = false break end
        end
        if same then return true end
      end
    end
    return false
  end

  local function dump(log)
    local r = {}
    for i, e in ipairs(log) do
      local parts = {}
      for j = 1, e.n do parts[j] = tostring(e[j]) end
      r[i] = table.concat(parts, "|")
    end
    return table.concat(r, "\n")
  end

  it("logs yields, resumes and exits of threads with the logger's argument lists", function()
    local log = {}
    copas.debug.start(function(...) log[#log + 1] = { n = select("#", ...), ... } end)
    local co
    co = copas.addnamedthread("dbg", function()
      copas.pause(0.01)
      copas.pause(0)
      copas.pauseforever()
    end)
    copas.addthread(function()
      copas.pause(0.05)
      copas.wakeup(co)
    end)
    run(copas, 2)
    copas.debug.stop()
    assert.is_true(has_entry(log, "yielding '", "dbg", "' to SLEEP for ", 0.01, " seconds"), dump(log))
    assert.is_true(has_entry(log, "yielding '", "dbg", "' to SLEEP for ", 0, " seconds"), dump(log))
    assert.is_true(has_entry(log, "yielding '", "dbg", "' to SLEEP for ", -1, " seconds"), dump(log))
    assert.is_true(has_entry(log, "resuming '", "dbg", "'"), dump(log))
    assert.is_true(has_entry(log, "exiting '", "dbg", "'"), dump(log))
  end)

  it("uses the global print by default", function()
    local lines = {}
    local orig = _G.print
    _G.print = function(...)
      local t = {}
      for i = 1, select("#", ...) do t[i] = tostring((select(i, ...))) end
      lines[#lines + 1] = table.concat(t, "\t")
    end
    local ok, err = pcall(function()
      copas.debug.start()
      copas.addnamedthread("printed", function() copas.pause(0) end)
      run(copas, 2)
      copas.debug.stop()
    end)
    _G.print = orig
    assert(ok, err)
    local found = false
    for _, l in ipairs(lines) do
      if l == "resuming '\tprinted\t'" then found = true end
    end
    assert.is_true(found, table.concat(lines, "\n"))
  end)

  it("leaves out the core timer unless asked for", function()
    local log = {}
    copas.debug.start(function(...) log[#log + 1] = { n = select("#", ...), ... } end)
    copas.addthread(function()
      copas.timeout(0.05, function(co) copas.wakeup(co) end)
      copas.pauseforever()
      copas.pause(0.15)
    end)
    run(copas, 2)
    copas.debug.stop()
    for _, e in ipairs(log) do
      assert.are_not.equal("copas_core_timer", e[2], dump(log))
    end
  end)

  it("logs 'exiting' only for threads created after start", function()
    local log = {}
    copas.addnamedthread("before", function() copas.pause(0.01) end)
    copas.debug.start(function(...) log[#log + 1] = { n = select("#", ...), ... } end)
    copas.addnamedthread("after", function() copas.pause(0.01) end)
    run(copas, 2)
    copas.debug.stop()
    assert.is_true(has_entry(log, "exiting '", "after", "'"), dump(log))
    assert.is_false(has_entry(log, "exiting '", "before", "'"), dump(log))
  end)

  it("stop() ends the logging", function()
    local count = 0
    copas.debug.start(function() count = count + 1 end)
    copas.debug.stop()
    copas.addnamedthread("quiet", function() copas.pause(0.01) end)
    run(copas, 2)
    assert.equal(0, count)
  end)

  it("does not change the global coroutine functions", function()
    local create, resume, yield = coroutine.create, coroutine.resume, coroutine.yield
    copas.debug.start(function() end)
    assert.equal(create, coroutine.create)
    assert.equal(resume, coroutine.resume)
    assert.equal(yield, coroutine.yield)
    copas.debug.stop()
    assert.equal(create, coroutine.create)
    assert.equal(resume, coroutine.resume)
    assert.equal(yield, coroutine.yield)
  end)
end)

describe("loading on Lua 5.1 / LuaJIT", function()
  it("raises when socket.http was loaded before copas (5.2+: loads fine)", function()
    local saved = package.loaded["socket.http"]
    package.loaded["socket.http"] = saved or {}
    local ok, err = pcall(helper.fresh_copas)
    package.loaded["socket.http"] = saved
    if _VERSION == "Lua 5.1" then
      assert.is_false(ok)
      assert.matches("you must require copas before require'ing socket.http", err, 1, true)
    else
      assert.is_true(ok, err)
    end
  end)
end)
