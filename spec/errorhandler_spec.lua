-- Specs for copas.seterrorhandler / setErrorHandler, copas.geterrorhandler, copas.gettraceback,
-- the default handler's output through the global print, and foreign coroutine.yield calls
-- (behaviour contract §4.2, §5, §12, §15.12).
-- Bug fixes (fail on upstream): an error inside an error handler -- including a `print` that
-- raises -- never stops the loop; other threads carry on.
local helper = require("spec.helper")

local run = helper.loop

-- Calls fn with the global print replaced by a recorder; returns the printed lines (one string
-- per print call, arguments joined by tabs). Restores print even when fn raises, then re-raises.
local function capture_print(fn)
  local lines = {}
  local orig = _G.print
  _G.print = function(...)
    local t = {}
    for i = 1, select("#", ...) do t[i] = tostring((select(i, ...))) end
    lines[#lines + 1] = table.concat(t, "\t")
  end
  local ok, err = pcall(fn)
  _G.print = orig
  if not ok then error(err, 0) end
  return lines
end

local lua51 = _VERSION == "Lua 5.1"
local FOREIGN_YIELD = "coroutine.yield was called without a resume first, user-code cannot yield to Copas"

describe("the default error handler", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("prints the message, thread name, socket and a traceback through the global print", function()
    local lines = capture_print(function()
      copas.addnamedthread("worker", function()
        copas.pause(0)
        error("boom")
      end)
      run(copas, 2)
    end)
    assert.equal(1, #lines)
    assert.matches("^[^\n]-errorhandler_spec%.lua:%d+: boom %(coroutine: worker, socket: nil%)", lines[1])
    assert.matches("\nstack traceback:", lines[1])
  end)

  it("names the loop initializer 'copas_initializer' in its output", function()
    local lines = capture_print(function()
      run(copas, 2, function() error("init failed") end)
    end)
    assert.matches("init failed %(coroutine: copas_initializer, socket: nil%)", lines[1])
  end)

  it("includes the failing function in the traceback (not on 5.1: other traceback layout)", function()
    if lua51 then return end
    local lines = capture_print(function()
      copas.addthread(function()
        local function the_failing_function() error("deep") end
        the_failing_function()
      end)
      run(copas, 2)
    end)
    assert.matches("stack traceback:.*the_failing_function", lines[1])
  end)

  it("shifts its output for an empty message: '(coroutine: , socket: <thread>)'", function()
    local lines = capture_print(function()
      copas.addnamedthread("quiet", function() error() end)
      copas.addnamedthread("empty", function() error("", 0) end)
      run(copas, 2)
    end)
    assert.equal(2, #lines)
    assert.matches("^%(coroutine: , socket: quiet%)\nstack traceback:", lines[1])
    assert.matches("^%(coroutine: , socket: empty%)\nstack traceback:", lines[2])
  end)

  it("prints non-string error values with tostring", function()
    local obj = setmetatable({}, { __tostring = function() return "custom error object" end })
    local lines = capture_print(function()
      copas.addnamedthread("t1", function() error({}) end)
      copas.addnamedthread("t2", function() error(42, 0) end)
      copas.addnamedthread("t3", function() error(obj) end)
      run(copas, 2)
    end)
    assert.equal(3, #lines)
    assert.matches("^table: .- %(coroutine: t1, socket: nil%)", lines[1])
    assert.matches("^42 %(coroutine: t2, socket: nil%)", lines[2])
    assert.matches("^custom error object %(coroutine: t3, socket: nil%)", lines[3])
  end)

  it("uses the print that is global at the time of the error", function()
    local first, second = {}, {}
    local orig = _G.print
    local ok, err = pcall(function()
      _G.print = function(s) first[#first + 1] = s end
      copas.addthread(function()
        copas.pause(0)
        _G.print = function(s) second[#second + 1] = s end
        error("late")
      end)
      run(copas, 2)
    end)
    _G.print = orig
    assert(ok, err)
    assert.equal(0, #first)
    assert.equal(1, #second)
    assert.matches("late", second[1])
  end)

  it("does not stop the loop: other threads carry on", function()
    local done = false
    capture_print(function()
      copas.addthread(function() error("first") end)
      copas.addthread(function()
        copas.pause(0.05)
        done = true
      end)
      run(copas, 2)
    end)
    assert.is_true(done)
  end)

  it("leaves the failed thread dead", function()
    local co
    capture_print(function()
      co = copas.addthread(function() copas.pause(0); error("x") end)
      run(copas, 2)
    end)
    assert.equal("dead", coroutine.status(co))
  end)
end)

describe("copas.seterrorhandler", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("is the same function as copas.setErrorHandler", function()
    assert.equal(copas.seterrorhandler, copas.setErrorHandler)
  end)

  it("sets a handler for the running thread, called with the raw error, the thread and nil", function()
    local got
    local err_obj = { code = 7 }
    local co = copas.addthread(function()
      copas.seterrorhandler(function(...) got = { n = select("#", ...), ... } end)
      copas.pause(0)
      error(err_obj)
    end)
    run(copas, 2)
    assert.is_table(got)
    assert.equal(err_obj, got[1])
    assert.equal(co, got[2])
    assert.is_nil(got[3])
  end)

  it("passes non-table error values unchanged", function()
    local got = {}
    for i, value in ipairs({ 42, true, "plain", false }) do
      copas.addthread(function()
        copas.seterrorhandler(function(e) got[i] = { e } end)
        error(value, 0)
      end)
    end
    run(copas, 2)
    assert.same({ { 42 }, { true }, { "plain" }, { false } }, got)
  end)

  it("keeps the position prefix Lua adds to string errors", function()
    local msg
    copas.addthread(function()
      copas.seterrorhandler(function(e) msg = e end)
      error("where am i")
    end)
    run(copas, 2)
    assert.matches("^[^\n]-errorhandler_spec%.lua:%d+: where am i$", msg)
  end)

  it("only affects the thread that set it", function()
    local own, default = {}, {}
    copas.seterrorhandler(function(e) default[#default + 1] = e end, true)
    copas.addthread(function()
      copas.seterrorhandler(function(e) own[#own + 1] = e end)
      error("mine", 0)
    end)
    copas.addthread(function() error("other", 0) end)
    run(copas, 2)
    assert.same({ "mine" }, own)
    assert.same({ "other" }, default)
  end)

  it("with nil clears the thread's handler", function()
    local own, default = 0, 0
    copas.seterrorhandler(function() default = default + 1 end, true)
    copas.addthread(function()
      copas.seterrorhandler(function() own = own + 1 end)
      copas.seterrorhandler(nil)
      error("x")
    end)
    run(copas, 2)
    assert.equal(0, own)
    assert.equal(1, default)
  end)

  it("with default = true replaces the default handler for every thread", function()
    local got = {}
    copas.seterrorhandler(function(e, co, skt)
      got[#got + 1] = { e = e, name = copas.getthreadname(co), skt = skt }
    end, true)
    copas.addnamedthread("a", function() error("ea", 0) end)
    copas.addnamedthread("b", function() copas.pause(0.01); error("eb", 0) end)
    run(copas, 2)
    assert.same({ { e = "ea", name = "a" }, { e = "eb", name = "b" } }, got)
  end)

  it("raises 'Expected the handler to be a function, or nil' for other values", function()
    for _, v in ipairs({ 42, "f", {}, true }) do
      local ok, err = pcall(copas.seterrorhandler, v)
      assert.is_false(ok)
      assert.matches("Expected the handler to be a function, or nil", err, 1, true)
    end
  end)

  it("raises when setting a nil default", function()
    local ok, err = pcall(copas.seterrorhandler, nil, true)
    assert.is_false(ok)
    assert.matches("Expected the handler to be a function when setting the default", err, 1, true)
  end)

  it("from the main thread: no effect on threads (5.2+) or 'table index is nil' (5.1/LuaJIT)", function()
    local main_called = false
    local h = function() main_called = true end
    if lua51 then
      local ok, err = pcall(copas.seterrorhandler, h)
      assert.is_false(ok)
      assert.matches("table index is nil", err)
    else
      copas.seterrorhandler(h)
      capture_print(function()
        copas.addthread(function() error("x") end)
        run(copas, 2)
      end)
      assert.is_false(main_called)
    end
  end)
end)

describe("copas.geterrorhandler", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("returns the same default handler function everywhere when none is set", function()
    local in_thread
    copas.addthread(function() in_thread = copas.geterrorhandler() end)
    run(copas, 2)
    assert.is_function(in_thread)
    assert.equal(in_thread, copas.geterrorhandler())
  end)

  it("returns the running thread's own handler", function()
    local h = function() end
    local got
    copas.addthread(function()
      copas.seterrorhandler(h)
      got = copas.geterrorhandler()
    end)
    run(copas, 2)
    assert.equal(h, got)
  end)

  it("returns the handler of a given thread", function()
    local h = function() end
    local co = copas.addthread(function()
      copas.seterrorhandler(h)
      copas.pause(0.05)
    end)
    copas.step(0)
    assert.equal(h, copas.geterrorhandler(co))
    run(copas, 2)
  end)

  it("returns the new default after seterrorhandler(h, true)", function()
    local h = function() end
    copas.seterrorhandler(h, true)
    local got
    copas.addthread(function() got = copas.geterrorhandler() end)
    run(copas, 2)
    assert.equal(h, got)
    assert.equal(h, copas.geterrorhandler())
  end)

  it("forgets a thread's handler once the thread ended", function()
    local h = function() end
    local co = copas.addthread(function() copas.seterrorhandler(h) end)
    run(copas, 2)
    assert.are_not.equal(h, copas.geterrorhandler(co))
    assert.equal(copas.geterrorhandler(), copas.geterrorhandler(co))
  end)

  it("returns the default handler, which prints through gettraceback", function()
    local default = copas.geterrorhandler()
    local co = coroutine.create(function() end)
    copas.setthreadname("named", co)
    local lines = capture_print(function() default("direct call", co, nil) end)
    assert.matches("^direct call %(coroutine: named, socket: nil%)", lines[1])
  end)
end)

describe("an error inside an error handler", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("is printed as 'Failed executing error handler: <error>' and the loop carries on", function()
    local done = false
    local lines = capture_print(function()
      copas.addthread(function()
        copas.seterrorhandler(function() error("handler broke", 0) end)
        error("x")
      end)
      copas.addthread(function()
        copas.pause(0.05)
        done = true
      end)
      run(copas, 2)
    end)
    assert.is_true(done)
    assert.equal(1, #lines)
    assert.matches("Failed executing error handler: handler broke", lines[1], 1, true)
  end)

  it("from a failing default handler does not stop the loop", function()
    local done = false
    capture_print(function()
      copas.seterrorhandler(function() error("default broke") end, true)
      copas.addthread(function() error("x") end)
      copas.addthread(function()
        copas.pause(0.05)
        done = true
      end)
      run(copas, 2)
    end)
    assert.is_true(done)
  end)

  it("never stops the loop, even when print itself raises (bug fix; upstream's step raises)", function()
    local done = false
    local orig = _G.print
    local ok, err = pcall(function()
      _G.print = function() error("print is broken") end
      copas.addthread(function() error("x") end)
      copas.addthread(function()
        copas.pause(0.05)
        done = true
      end)
      run(copas, 2)
    end)
    _G.print = orig
    assert.is_true(ok, "the loop raised: " .. tostring(err))
    assert.is_true(done)
  end)

  it("never stops the loop when both the handler and print raise (bug fix)", function()
    local done = 0
    local orig = _G.print
    local ok, err = pcall(function()
      _G.print = function() error("print is broken") end
      for _ = 1, 3 do
        copas.addthread(function()
          copas.seterrorhandler(function() error("handler broke") end)
          error("x")
        end)
      end
      copas.addthread(function()
        for _ = 1, 3 do copas.pause(0.01) end
        done = done + 1
      end)
      run(copas, 2)
    end)
    _G.print = orig
    assert.is_true(ok, "the loop raised: " .. tostring(err))
    assert.equal(1, done)
  end)
end)

describe("a foreign coroutine.yield in a copas thread", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("goes to the thread's error handler with the foreign-yield message", function()
    local got
    local co = copas.addthread(function()
      copas.seterrorhandler(function(...) got = { ... } end)
      coroutine.yield(42)
    end)
    run(copas, 2)
    assert.is_table(got)
    assert.equal(FOREIGN_YIELD, got[1])
    assert.equal(co, got[2])
    assert.is_nil(got[3])
  end)

  it("is printed by the default handler", function()
    local lines = capture_print(function()
      copas.addnamedthread("yielder", function() coroutine.yield() end)
      run(copas, 2)
    end)
    assert.equal(1, #lines)
    assert.matches(FOREIGN_YIELD .. " (coroutine: yielder, socket: nil)", lines[1], 1, true)
  end)

  it("abandons the thread, whatever values it yields, and the loop carries on", function()
    -- values that might look like scheduler requests to an implementation
    local firsts = { "nil", 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, -1, 0.5, 1e9, "read", "x", true }
    local seconds = { "nil", 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, -1, 0.1, "sleep", false }
    local cases, messages, resumed = 0, {}, {}
    copas.seterrorhandler(function(msg, co) messages[co] = msg end, true)
    local threads = {}
    for _, a in ipairs(firsts) do
      for _, b in ipairs(seconds) do
        cases = cases + 1
        local id = cases
        local va = (a ~= "nil") and a or nil
        local vb = (b ~= "nil") and b or nil
        threads[id] = copas.addthread(function()
          coroutine.yield(va, vb)
          resumed[#resumed + 1] = tostring(a) .. "," .. tostring(b)
        end)
      end
    end
    local others = false
    copas.addthread(function()
      copas.pause(0.05)
      others = true
    end)
    run(copas, 3)
    assert.same({}, resumed)
    assert.is_true(others)
    local wrong = {}
    for id, co in ipairs(threads) do
      if messages[co] ~= FOREIGN_YIELD then wrong[#wrong + 1] = id .. ": " .. tostring(messages[co]) end
    end
    assert.same({}, wrong)
  end)

  it("also applies to a yield from a nested function or after copas calls", function()
    local messages = {}
    copas.seterrorhandler(function(msg) messages[#messages + 1] = msg end, true)
    copas.addthread(function()
      copas.pause(0.01)
      local function inner() coroutine.yield("sneaky") end
      inner()
    end)
    run(copas, 2)
    assert.same({ FOREIGN_YIELD }, messages)
  end)

  it("does not affect coroutines the user creates and resumes inside a thread", function()
    local values = {}
    copas.addthread(function()
      local gen = coroutine.wrap(function()
        for i = 1, 3 do coroutine.yield(i) end
      end)
      for _ = 1, 3 do
        values[#values + 1] = gen()
        copas.pause(0)
      end
    end)
    run(copas, 2)
    assert.same({ 1, 2, 3 }, values)
  end)
end)

describe("copas.gettraceback", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("formats 'msg (coroutine: <name>, socket: <name>)' followed by a traceback", function()
    local co = coroutine.create(function() end)
    copas.setthreadname("my thread", co)
    local skt = {}
    copas.setsocketname("my socket", skt)
    local tb = copas.gettraceback("oops", co, skt)
    assert.is_string(tb)
    assert.matches("^oops %(coroutine: my thread, socket: my socket%)\nstack traceback:", tb)
  end)

  it("says nil for a missing coroutine and socket", function()
    local tb = copas.gettraceback("oops")
    assert.matches("^oops %(coroutine: nil, socket: nil%)\nstack traceback:", tb)
  end)

  it("shifts the header for a nil or empty message", function()
    local co = coroutine.create(function() end)
    copas.setthreadname("t", co)
    assert.matches("^%(coroutine: , socket: t%)", copas.gettraceback(nil, co))
    assert.matches("^%(coroutine: , socket: t%)", copas.gettraceback("", co))
    assert.matches("^%(coroutine: , socket: nil%)", copas.gettraceback())
  end)

  it("uses tostring for non-string messages", function()
    assert.matches("^42 %(coroutine: nil, socket: nil%)", copas.gettraceback(42))
    assert.matches("^true %(coroutine: nil, socket: nil%)", copas.gettraceback(true))
  end)

  it("uses an unnamed thread's tostring", function()
    local co = coroutine.create(function() end)
    local tb = copas.gettraceback("m", co)
    assert.equal("m (coroutine: " .. tostring(co) .. ", socket: nil)", tb:match("^[^\n]*"))
  end)

  it("traces the given coroutine's stack", function()
    local co = coroutine.create(function()
      local function parked_here() coroutine.yield() end
      parked_here()
    end)
    coroutine.resume(co)
    assert.matches("parked_here", copas.gettraceback("m", co))
  end)

  it("raises for a coroutine argument that is not a thread", function()
    local ok, err = pcall(copas.gettraceback, "m", 42)
    assert.is_false(ok)
    assert.matches("expected arg #1 to be a coroutine or nil", err, 1, true)
  end)

  it("looks names up through copas.getthreadname and copas.getsocketname (late binding)", function()
    copas.getthreadname = function() return "patched thread" end
    copas.getsocketname = function() return "patched socket" end
    local tb = copas.gettraceback("m", coroutine.create(function() end), {})
    assert.matches("^m %(coroutine: patched thread, socket: patched socket%)", tb)
  end)
end)
