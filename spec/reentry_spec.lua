-- Specs for calls into copas that arrive while the core is busy: from __gc finalizers (which
-- run inside any allocation the core makes) and from inside a running step.
-- Fails before the fix (issue #9, defect 1): on LuaJIT and 5.1 a finalizer that called
-- copas.addthread while the core registered a thread got the same slot, and a coroutine was
-- freed and later resumed (segfault, rc 139). A step inside a step resumed tasks the outer step
-- was handling (mismatched echo data on LuaJIT).
-- Each case runs in a child process, so that a crash fails the case instead of busted.
local helper = require("spec.helper")

local interpreter, q = helper.interpreter, helper.shell_quote

-- Runs Lua `source` in a child interpreter (the one under test, same LUA_PATH/LUA_CPATH);
-- returns its output and exit status.
local function run_child(source)
  local file = os.tmpname()
  local f = assert(io.open(file, "w"))
  f:write(source)
  f:close()
  local p = assert(io.popen("timeout -k 5 60 " .. q(interpreter()) .. " " .. q(file)
    .. " </dev/null 2>&1; echo \"__rc=$?\""))
  local output = p:read("*a")
  p:close()
  os.remove(file)
  local rc = tonumber(output:match("__rc=(%d+)%s*$"))
  return output:gsub("__rc=%d+%s*$", ""), rc
end

-- A finalizer, on every runtime: a newproxy's __gc on 5.1/LuaJIT, a table's on 5.2+.
local FINALIZER = [[
local function on_collect(f)
  if newproxy then getmetatable(newproxy(true)).__gc = f
  else setmetatable({}, { __gc = f }) end
end
]]

describe("a __gc finalizer that calls into copas", function()
  it("adds its thread while the core registers another: all 40,000 threads run", function()
    local output, rc = run_child(FINALIZER .. [[
local copas = require("copas")
local ran = 0
for i = 1, 20000 do
  on_collect(function() copas.addthread(function() ran = ran + 1 end) end)
  copas.addthread(function() ran = ran + 1 end)
end
collectgarbage() collectgarbage()
copas.loop()
print("ran=" .. ran)
]])
    assert.equal(0, rc, output)
    assert.equal("ran=40000\n", output)
  end)

  it("adds, wakes and removes threads while the loop runs: every thread ends once", function()
    local output, rc = run_child(FINALIZER .. [[
local copas = require("copas")
local started, ended = 0, 0
local sleepers = {}
local function body()
  started = started + 1
  copas.pause(0)
  ended = ended + 1
end
for i = 1, 3000 do
  copas.addthread(function()
    on_collect(function()
      copas.addthread(body)
      local s = table.remove(sleepers)
      if s then copas.wakeup(s) end
    end)
    sleepers[#sleepers + 1] = coroutine.running()
    started = started + 1
    copas.pauseforever()
    ended = ended + 1
  end)
  copas.addthread(body)
end
copas.addthread(function()
  for i = 1, 200 do collectgarbage() copas.pause(0) end
  for _, s in ipairs(sleepers) do copas.wakeup(s) end
end)
copas.loop()
print("started=" .. started, "ended=" .. ended)
]])
    assert.equal(0, rc, output)
    local started, ended = output:match("started=(%d+)%s+ended=(%d+)")
    assert.is_not_nil(started, output)
    assert.equal(started, ended, output)
    assert.is_true(tonumber(started) >= 9000, output)
  end)

  -- Fails before the fix on 5.1 (segfault, rc 139, in about half of the processes: where the
  -- collector's steps fall depends on the address layout). mlua hands each protected call its
  -- function through a registry slot, and 5.1 can run a finalizer between the store and the
  -- read; a copas call in that finalizer stored its own function there (protect_slots.rs).
  it("makes its own calls into the core while the core is inside one: no crash", function()
    for run = 1, 8 do
      local output, rc = run_child(FINALIZER .. [[
local copas = require("copas")
copas.status(true)
local refused = 0
copas.addthread(function()
  for i = 1, 30000 do
    on_collect(function() copas.status() end)
    if not pcall(copas.step) then refused = refused + 1 end
    if i % 10 == 0 then copas.pause(0) end
  end
end)
copas.loop()
print("refused=" .. refused)
]])
      assert.equal(0, rc, "process " .. run .. ": " .. output)
      assert.equal("refused=30000\n", output)
    end
  end)
end)

describe("a __gc finalizer that runs while the interpreter closes", function()
  -- Fails before the fix on LuaJIT (segfault, rc 139): LuaJIT unloads C modules among the first
  -- objects it finalizes, and the finalizer then called into unmapped code.
  it("can still add a thread and run the loop", function()
    local output, rc = run_child(FINALIZER .. [[
local copas = require("copas")
local ran = false
_G.keep = newproxy and newproxy(true) or setmetatable({}, {})
local function at_exit()
  copas.addthread(function() copas.pause(0) ran = true end)
  copas.loop()
  io.stdout:write("ran=", tostring(ran), "\n")
end
if newproxy then getmetatable(_G.keep).__gc = at_exit
else _G.keep = setmetatable({}, { __gc = at_exit }) end
]])
    assert.equal(0, rc, output)
    assert.equal("ran=true\n", output)
  end)
end)

describe("copas.cancelall while finalizers add threads and sockets", function()
  it("ends, and cancels everything that existed before it", function()
    local output, rc = run_child(FINALIZER .. [[
local copas = require("copas")
local socket = require("socket")
local added = 0
for round = 1, 20 do
  for i = 1, 300 do
    copas.addthread(function() copas.pause(60) end)
    on_collect(function()
      added = added + 1
      copas.addthread(function() end)
      copas.wrap(socket.tcp())
    end)
  end
  copas.addthread(function()
    copas.cancelall()
  end)
  copas.loop()
end
print("rounds=20", "finished=" .. tostring(copas.finished()))
-- LuaSocket's own functions are gone while the interpreter closes (LuaJIT unloads it early):
-- leave without running the finalizers left.
io.stdout:flush()
os.exit(0)
]])
    assert.equal(0, rc, output)
    assert.equal("rounds=20\tfinished=true\n", output)
  end)
end)

describe("copas.step and copas.loop inside a running step", function()
  it("raise a clear error from a copas thread, and the outer loop goes on", function()
    local copas = helper.fresh_copas()
    local step_ok, step_err, loop_ok, loop_err, after
    copas.addthread(function()
      step_ok, step_err = pcall(copas.step, 0)
      loop_ok, loop_err = pcall(copas.loop)
      copas.pause(0)
      after = true
    end)
    helper.loop(copas, 5)
    assert.is_false(step_ok)
    assert.matches("copas.step and copas.loop cannot run inside a step", step_err, 1, true)
    assert.is_false(loop_ok)
    assert.matches("copas.step and copas.loop cannot run inside a step", loop_err, 1, true)
    assert.is_nil(step_err:find("stack traceback", 1, true))
    assert.is_true(after)
  end)

  it("raise the same error from an error handler", function()
    local copas = helper.fresh_copas()
    local ok, err
    copas.setErrorHandler(function() ok, err = pcall(copas.step, 0) end, true)
    copas.addthread(function() error("boom") end)
    helper.loop(copas, 5)
    assert.is_false(ok)
    assert.matches("cannot run inside a step", err, 1, true)
  end)

  it("work again once the step is over", function()
    local copas = helper.fresh_copas()
    copas.addthread(function() pcall(copas.step, 0) end)
    helper.loop(copas, 5)
    local ran = false
    copas.addthread(function() ran = true end)
    assert.is_true(copas.step(0) ~= nil)
    assert.is_true(ran)
  end)
end)
