-- Every public function of the copas table driven with wrong argument types.
--
-- Part 1 (crash matrix): for each public function a separate interpreter (same Lua version and
-- paths, under `timeout`) calls it with garbage -- nil, booleans, numbers (0, negative, huge,
-- -huge, NaN, 1e300), strings, tables, functions, a coroutine and fake "socket" tables whose
-- getfd returns nonsense -- in every argument position, from the main thread and from inside a
-- copas thread, then steps the scheduler and cancels everything. The function passes when the
-- interpreter survives (no segfault, abort, panic or hang), every error is a Lua string, and
-- copas.step never raises afterwards.
--
-- Part 2: the exact errors and results for wrong types (lead decisions: "bad argument #n to
-- '<fn>' (<type> expected, got <type>)" where upstream fails late or not at all; upstream's own
-- assert messages and nil+message results stay). Messages are matched without the position prefix.
local helper = require("spec.helper")

local PUBLIC = {
  "addnamedthread", "addserver", "addthread", "cancelall", "close", "connect", "dohandshake",
  "exit", "exiting", "finished", "flush", "geterrorhandler", "getsocketname", "getthreadname",
  "gettime", "gettimeouts", "gettraceback", "handler", "loop", "pause", "pauseforever", "receive",
  "receivePartial", "receivefrom", "receivepartial", "removeserver", "removethread", "send",
  "sendto", "setErrorHandler", "seterrorhandler", "setsocketname", "setthreadname", "settimeout",
  "settimeouts", "sleep", "status", "step", "timeout", "useSocketTimeoutErrors",
  "usesockettimeouterrors", "waitforexit", "wakeup", "wrap", "debug.start", "debug.stop",
  "debug.socket",
}

-- The script each child interpreter runs; FN is the function's path in the copas table.
local CHILD = [==[
local FN = ...
local copas = require("copas")
local unpack = unpack or table.unpack
local function pack(...) return { n = select("#", ...), ... } end
local function out(...)
  local t = { ... }
  for i = 1, #t do t[i] = tostring(t[i]):gsub("[\r\n\t]", " "):sub(1, 300) end
  io.write("@@", table.concat(t, "\t"), "\n")
end

local f = copas
for part in FN:gmatch("[^.]+") do f = type(f) == "table" and f[part] or nil end
if type(f) ~= "function" then out("MISSING") out("SURVIVED") return end

local handled = {}
local function recorder(msg, co) handled[co] = { msg = msg } end
local function reset()
  pcall(copas.debug.stop)
  pcall(copas.seterrorhandler, recorder, true)
end
reset()

local function fake(getfd, raising)
  local t = {}
  local methods = { "settimeout", "receive", "send", "connect", "close", "dirty", "receivefrom",
                    "sendto", "accept", "getsockname", "getpeername", "setoption", "bind", "listen",
                    "dohandshake", "shutdown" }
  for _, m in ipairs(methods) do
    if raising then
      t[m] = function() error("fake socket failure") end
    elseif m == "dirty" then
      t[m] = function() return false end
    elseif m == "close" or m == "settimeout" then
      t[m] = function() return 1 end
    else
      t[m] = function() return nil, "timeout" end
    end
  end
  t.getfd = function() return getfd end
  return t
end

local VALUES = {
  { "nil", nil }, { "false", false }, { "true", true }, { "zero", 0 }, { "negative", -1 },
  { "huge", math.huge }, { "-huge", -math.huge }, { "nan", 0 / 0 }, { "1e300", 1e300 },
  { "string", "garbage" }, { "empty-string", "" }, { "table", {} },
  { "function", function() end }, { "coroutine", coroutine.create(function() end) },
  { "fake-fd-invalid", fake(-1) }, { "fake-fd-huge", fake(1e9) }, { "fake-fd-nan", fake(0 / 0) },
  { "fake-fd-string", fake("x") }, { "fake-raising", fake(-1, true) },
}
local SHAPES = { { 1 }, { 2 }, { 3 }, { 4 }, { 1, 2, 3, 4 } }

local function args_for(shape, v)
  local a = { n = 4 }
  for _, p in ipairs(shape) do a[p] = v end
  return a
end

local function describe_result(r)
  if r[1] then return "returned", "", "" end
  return "error", type(r[2]), r[2]
end

-- 1. from the main thread
for _, val in ipairs(VALUES) do
  for si, shape in ipairs(SHAPES) do
    local a = args_for(shape, val[2])
    local r = pack(pcall(f, unpack(a, 1, 4)))
    reset()
    out("CASE", "main", val[1], si, describe_result(r))
  end
end

-- 2. from inside copas threads (so functions that yield can do so)
local threads = {}
for _, val in ipairs(VALUES) do
  for si, shape in ipairs(SHAPES) do
    local a = args_for(shape, val[2])
    local case = { label = val[1], shape = si }
    local ok, co = pcall(copas.addthread, function()
      f(unpack(a, 1, 4))
      case.returned = true
      reset()
    end)
    if ok then case.co = co else out("HARNESS", "addthread failed", co) end
    threads[#threads + 1] = case
  end
end

local deadline = os.clock() + 1
for _ = 1, 40 do
  local ok, err = pcall(copas.step, 0.01)
  if not ok then out("STEPERR", type(err), err) end
  reset()
  if os.clock() > deadline then break end
end

for _, case in ipairs(threads) do
  if case.co then
    local h = handled[case.co]
    if case.returned then
      out("CASE", "thread", case.label, case.shape, "returned", "", "")
    elseif h then
      out("CASE", "thread", case.label, case.shape, "error", type(h.msg), h.msg)
    else
      out("CASE", "thread", case.label, case.shape, "pending", "", "")
    end
  end
end

-- 3. copas must still be able to clean up and run a fresh thread
local ok, err = pcall(copas.cancelall)
if not ok then out("NOTE", "cancelall raised", err) end
local ran = false
pcall(copas.addthread, function() ran = true end)
for _ = 1, 3 do
  local sok, serr = pcall(copas.step, 0)
  if not sok then out("STEPERR", type(serr), serr) end
end
out("ALIVE", tostring(ran))
out("SURVIVED")
]==]

local function interpreter()
  return (arg and arg[-1]) or "lua"
end

-- starts one child per function (all at once), returns { [fn] = { out = ..., code = ... } }
local function run_children(list, limit)
  local prologue = ("package.path = %q; package.cpath = %q\n"):format(package.path, package.cpath)
  local script = os.tmpname()
  local fh = assert(io.open(script, "w"))
  fh:write(prologue, CHILD)
  fh:close()
  local pipes = {}
  for _, fn in ipairs(list) do
    local cmd = ("timeout -s KILL %d %s %s %s </dev/null 2>&1; echo \"@@EXIT $?\""):format(
      limit, interpreter(), script, fn)
    pipes[fn] = io.popen(cmd)
  end
  local results = {}
  for _, fn in ipairs(list) do
    local outp = pipes[fn]:read("*a")
    pipes[fn]:close()
    results[fn] = { out = outp, code = tonumber(outp:match("@@EXIT (%d+)%s*$")) }
  end
  os.remove(script)
  return results
end

local function tail(s, n)
  n = n or 1500
  return #s > n and ("..." .. s:sub(-n)) or s
end

describe("every public function given garbage arguments", function()
  local results

  lazy_setup(function()
    results = run_children(PUBLIC, 10)
  end)

  for _, fn in ipairs(PUBLIC) do
    it("copas." .. fn .. " never crashes, hangs, panics or breaks copas.step", function()
      local r = results[fn]
      assert.is_table(r)
      assert.is_nil(r.out:match("@@MISSING"), "copas." .. fn .. " does not exist")
      assert.equal(0, r.code, "interpreter died or hung (exit " .. tostring(r.code) .. "):\n" .. tail(r.out))
      assert.is_truthy(r.out:match("@@SURVIVED"), tail(r.out))
      local problems = {}
      for line in r.out:gmatch("[^\n]+") do
        local ctx, label, shape, outcome, etype, msg =
          line:match("^@@CASE\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t?(.*)$")
        if outcome == "error" and etype ~= "string" then
          problems[#problems + 1] = ("%s/%s/shape %s: error value is a %s (%s)"):format(ctx, label, shape, etype, msg)
        end
        if msg and msg:lower():match("panick") then
          problems[#problems + 1] = ("%s/%s/shape %s: Rust panic: %s"):format(ctx, label, shape, msg)
        end
        local stype, smsg = line:match("^@@STEPERR\t([^\t]*)\t?(.*)$")
        if stype then problems[#problems + 1] = "copas.step raised: " .. smsg end
      end
      assert.is_truthy(r.out:match("@@ALIVE\ttrue"), "copas could not run a new thread afterwards:\n" .. tail(r.out))
      assert.same({}, problems)
    end)
  end
end)

-- ---------------------------------------------------------------------------------------------
-- Part 2: exact errors and results
-- ---------------------------------------------------------------------------------------------

local run = helper.loop

-- wrong-typed values (name, value, type name)
local NON_FUNCTIONS = {
  { "nil", nil, "nil" }, { "true", true, "boolean" }, { "false", false, "boolean" },
  { "number", 42, "number" }, { "NaN", 0 / 0, "number" }, { "math.huge", math.huge, "number" },
  { "negative", -1, "number" }, { "string", "f", "string" }, { "table", {}, "table" },
  { "coroutine", coroutine.create(function() end), "thread" },
}

-- runs fn(...) inside a copas thread; returns "returned", results | "error", msg | "pending"
local function in_thread(copas, fn, ...)
  local args = { n = select("#", ...), ... }
  local unpack = unpack or table.unpack
  local outcome, value
  local co = copas.addthread(function()
    copas.seterrorhandler(function(msg) outcome, value = "error", msg end)
    local r = { fn(unpack(args, 1, args.n)) }
    outcome, value = "returned", r
  end)
  for _ = 1, 5 do
    local ok, err = pcall(copas.step, 0)
    if not ok then return "step raised", err end
  end
  copas.removethread(co)
  return outcome or "pending", value
end

describe("wrong argument types", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("addthread raises \"bad argument #1 to 'addthread' (function expected, got <type>)\"", function()
    for _, c in ipairs(NON_FUNCTIONS) do
      local ok, err = pcall(copas.addthread, c[2])
      assert.is_false(ok, c[1])
      assert.matches("bad argument #1 to 'addthread' %(function expected, got " .. c[3] .. "%)", err)
    end
    assert.equal(0, copas.status().active)
  end)

  it("addnamedthread raises \"bad argument #2 to 'addnamedthread' (function expected, got <type>)\"", function()
    for _, c in ipairs(NON_FUNCTIONS) do
      if c[3] ~= "nil" then
        local ok, err = pcall(copas.addnamedthread, "name", c[2])
        assert.is_false(ok, c[1])
        assert.matches("bad argument #2 to 'addnamedthread' %(function expected, got " .. c[3] .. "%)", err)
      end
    end
  end)

  it("addthread with a wrong type creates no thread", function()
    pcall(copas.addthread, 42)
    assert.is_true(copas.finished())
    assert.equal(0, copas.status().active)
  end)

  it("removethread(nil) raises", function()
    assert.has_error(function() copas.removethread(nil) end)
  end)

  it("pause raises inside the thread for non-numbers (false counts as nil)", function()
    for _, v in ipairs({ true, "abc", {}, print, coroutine.create(function() end) }) do
      local outcome, msg = in_thread(copas, copas.pause, v)
      assert.equal("error", outcome, tostring(v))
      assert.is_string(msg)
    end
    assert.equal("returned", (in_thread(copas, copas.pause, false)))
  end)

  it("pause with NaN or a negative number yields once and returns", function()
    assert.equal("returned", (in_thread(copas, copas.pause, 0 / 0)))
    assert.equal("returned", (in_thread(copas, copas.pause, -math.huge)))
  end)

  it("sleep raises inside the thread for non-numbers; copas.step never raises (bug fix)", function()
    for _, v in ipairs({ true, "abc", {}, print }) do
      local outcome, msg = in_thread(copas, copas.sleep, v)
      assert.equal("error", outcome, tostring(v) .. ": " .. tostring(msg))
      assert.is_string(msg)
    end
  end)

  it("timeout raises inside the thread for a non-number delay", function()
    for _, v in ipairs({ "1", true, {}, print }) do
      local outcome, msg = in_thread(copas, copas.timeout, v, function() end)
      assert.equal("error", outcome, tostring(v))
      assert.is_string(msg)
    end
    assert.equal(0, copas.gettimeouts())
  end)

  it("timeout raises for a positive delay without a callable callback", function()
    for _, v in ipairs({ "nil", 42, "cb", {} }) do
      local cb = (v ~= "nil") and v or nil
      local outcome = in_thread(copas, copas.timeout, 1, cb)
      assert.equal("error", outcome, tostring(v))
    end
    assert.equal(0, copas.gettimeouts())
  end)

  it("step raises for a non-number timeout", function()
    for _, v in ipairs({ "abc", true, {}, print }) do
      assert.has_error(function() copas.step(v) end, nil, tostring(v))
    end
  end)

  it("step with NaN, math.huge or 1e300 and a ready thread returns", function()
    for _, v in ipairs({ 0 / 0, math.huge, 1e300 }) do
      local ran = false
      copas.addthread(function() ran = true end)
      copas.step(v)
      assert.is_true(ran, tostring(v))
    end
  end)

  it("loop raises for a non-number, non-function first argument", function()
    for _, v in ipairs({ "abc", true, {} }) do
      local c = helper.fresh_copas()
      assert.has_error(function() c.loop(v) end, nil, tostring(v))
    end
  end)

  it("status accepts anything and returns the base table", function()
    for _, v in ipairs({ 1, "x", {}, print, 0 / 0 }) do
      local s = copas.status(v)
      assert.is_table(s)
      assert.is_number(s.active)
    end
  end)

  it("seterrorhandler keeps upstream's assert message", function()
    local ok, err = pcall(copas.seterrorhandler, 42)
    assert.is_false(ok)
    assert.matches("Expected the handler to be a function, or nil", err, 1, true)
  end)

  it("setthreadname/getthreadname/setsocketname/getsocketname keep upstream's assert messages", function()
    local function msg(f, ...)
      local ok, err = pcall(f, ...)
      assert.is_false(ok)
      return err
    end
    assert.matches("expected arg #1 to be a string", msg(copas.setthreadname, 1), 1, true)
    assert.matches("expected arg #2 to be a coroutine or nil", msg(copas.setthreadname, "n", 1), 1, true)
    assert.matches("expected arg #1 to be a coroutine or nil", msg(copas.getthreadname, 1), 1, true)
    assert.matches("expected arg #1 to be a string", msg(copas.setsocketname, {}, {}), 1, true)
    assert.matches("expected arg #2 to be a socket", msg(copas.setsocketname, "n", nil), 1, true)
    assert.matches("expected arg #1 to be a socket", msg(copas.getsocketname, nil), 1, true)
  end)

  it("gettraceback raises for a non-thread coroutine argument", function()
    for _, v in ipairs({ 1, "co", {}, true, print }) do
      local ok, err = pcall(copas.gettraceback, "m", v)
      assert.is_false(ok)
      assert.matches("expected arg #1 to be a coroutine or nil", err, 1, true)
    end
  end)

  it("settimeout returns nil, \"timeout must be 'nil' or a number\" for a non-number", function()
    for _, v in ipairs({ "1", true, {}, print }) do
      local r1, r2 = copas.settimeout({}, v)
      assert.is_nil(r1)
      assert.equal("timeout must be 'nil' or a number", r2)
    end
  end)

  it("settimeouts returns nil and a message naming the bad timeout", function()
    local r1, r2 = copas.settimeouts({}, "x")
    assert.is_nil(r1)
    assert.equal("connect timeout must be 'nil' or a number", r2)
    r1, r2 = copas.settimeouts({}, nil, true)
    assert.is_nil(r1)
    assert.equal("send timeout must be 'nil' or a number", r2)
    r1, r2 = copas.settimeouts({}, nil, nil, {})
    assert.is_nil(r1)
    assert.equal("read timeout must be 'nil' or a number", r2)
  end)

  it("wrap, close, sendto and removeserver raise for non-socket values", function()
    for _, v in ipairs({ 42, "s", {}, print, true }) do
      assert.has_error(function() copas.wrap(v) end, nil, "wrap " .. tostring(v))
      assert.has_error(function() copas.close(v) end, nil, "close " .. tostring(v))
      assert.has_error(function() copas.sendto(v, "x", "127.0.0.1", 9) end, nil, "sendto " .. tostring(v))
      assert.has_error(function() copas.removeserver(v) end, nil, "removeserver " .. tostring(v))
    end
  end)

  it("wrap names the bad argument in Lua's words", function()
    assert.has_error(function() copas.wrap(nil) end, "bad argument #1 to 'wrap' (socket expected, got nil)")
    assert.has_error(function() copas.wrap(42) end, "bad argument #1 to 'wrap' (socket expected, got number)")
  end)

  it("receive, send, connect and receivefrom on non-socket values end the thread with an error", function()
    for _, name in ipairs({ "receive", "receivepartial", "send", "connect", "receivefrom" }) do
      for _, v in ipairs({ 42, "s", {}, print, true }) do
        local outcome, msg = in_thread(copas, copas[name], v, "x", 1)
        assert.equal("error", outcome, name .. "(" .. tostring(v) .. ")")
        assert.is_string(msg)
      end
    end
  end)

  it("addserver raises for non-socket values and registers nothing", function()
    for _, v in ipairs({ 42, "s", {}, true }) do
      assert.has_error(function() copas.addserver(v, function() end) end, nil, tostring(v))
    end
    local s = copas.status()
    assert.equal(0, s.read)
    assert.equal(0, s.write)
  end)

  it("debug.start with a non-function logger raises at once or keeps the loop working", function()
    for _, v in ipairs({ 42, "log", {}, true }) do
      local c = helper.fresh_copas()
      local ok = pcall(c.debug.start, v)
      if ok then
        local loop_ok, err = pcall(run, c, 2, function() c.pause(0.01) end)
        c.debug.stop()
        assert.is_true(loop_ok, "debug.start(" .. tostring(v) .. ") broke the loop: " .. tostring(err))
      end
    end
  end)

  it("calls that ignore their arguments accept garbage", function()
    local g = { 42, "x", {}, print, 0 / 0 }
    local unpack = unpack or table.unpack
    assert.has_no.errors(function() copas.finished(unpack(g)) end)
    assert.has_no.errors(function() copas.gettimeouts(unpack(g)) end)
    assert.has_no.errors(function() copas.exiting(unpack(g)) end)
    assert.has_no.errors(function() copas.gettime(unpack(g)) end)
    assert.has_no.errors(function() copas.flush(unpack(g)) end)
    assert.has_no.errors(function() copas.debug.stop(unpack(g)) end)
  end)
end)

-- Fails before the fix (issue #9, defect 4): errors raised in the core reached Lua in mlua's
-- words, with a stack traceback inside the message.
describe("errors that come from the core", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("semaphore.destroy on another object raises \"bad argument #1 to 'destroy' "
    .. "(semaphore expected, got table)\"", function()
    local ok, err = pcall(copas.semaphore.destroy, {})
    assert.is_false(ok)
    assert.equal("string", type(err))
    assert.matches("bad argument #1 to 'destroy' (semaphore expected, got table)", err, 1, true)
  end)

  it("addserver accepts an object whose getfd is not an open descriptor, as upstream", function()
    local fake = {
      getfd = function() return 12345 end,
      settimeout = function() end,
      close = function() return true end,
    }
    local ok, err = pcall(copas.addserver, fake, function() end)
    assert.is_true(ok, err)
    assert.is_true(copas.removeserver(fake))
  end)

  it("reach Lua as strings without Rust wording or a traceback", function()
    local sched = getmetatable(copas).internal
    -- a core function given what no Lua caller of the shim passes
    local ok, err = pcall(require("copas.core").new().remove)
    assert.is_false(ok)
    assert.equal("string", type(err))
    assert.equal("bad argument #1 to 'remove' (number expected, got nil)", err)
    assert.is_nil(err:find("traceback", 1, true))
    assert.is_nil(err:find("i64", 1, true))
    assert.is_not_nil(sched)
  end)
end)
