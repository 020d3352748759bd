-- Specs for copas.setthreadname / getthreadname / setsocketname / getsocketname, used with
-- coroutines and non-socket objects (behaviour contract §6, §12, §15.13).
local helper = require("spec.helper")

local run = helper.loop

local lua51 = _VERSION == "Lua 5.1"

describe("copas.setthreadname / copas.getthreadname", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("names a given coroutine", function()
    local co = coroutine.create(function() end)
    assert.equal(0, select("#", copas.setthreadname("alpha", co)))
    assert.equal("alpha", copas.getthreadname(co))
  end)

  it("defaults to tostring(co)", function()
    local co = coroutine.create(function() end)
    assert.equal(tostring(co), copas.getthreadname(co))
  end)

  it("can rename a thread", function()
    local co = coroutine.create(function() end)
    copas.setthreadname("one", co)
    copas.setthreadname("two", co)
    assert.equal("two", copas.getthreadname(co))
  end)

  it("defaults to the running thread inside a copas thread", function()
    local before, after
    local co = copas.addthread(function()
      before = copas.getthreadname()
      copas.setthreadname("self-named")
      after = copas.getthreadname()
    end)
    run(copas, 2)
    assert.equal(tostring(co), before)
    assert.equal("self-named", after)
    assert.equal("self-named", copas.getthreadname(co))
  end)

  it("keeps names per coroutine", function()
    local a, b = coroutine.create(function() end), coroutine.create(function() end)
    copas.setthreadname("a", a)
    copas.setthreadname("b", b)
    assert.equal("a", copas.getthreadname(a))
    assert.equal("b", copas.getthreadname(b))
  end)

  it("accepts the empty string as a name", function()
    local co = coroutine.create(function() end)
    copas.setthreadname("", co)
    assert.equal("", copas.getthreadname(co))
  end)

  it("on the main thread: works on 5.2+, raises the coroutine assertion on 5.1/LuaJIT", function()
    if lua51 then
      local ok, err = pcall(copas.getthreadname)
      assert.is_false(ok)
      assert.matches("expected arg #1 to be a coroutine or nil", err, 1, true)
      ok, err = pcall(copas.setthreadname, "main")
      assert.is_false(ok)
      assert.matches("expected arg #2 to be a coroutine or nil", err, 1, true)
    else
      local main = coroutine.running()
      assert.equal(tostring(main), copas.getthreadname())
      copas.setthreadname("the main thread")
      assert.equal("the main thread", copas.getthreadname())
      assert.equal("the main thread", copas.getthreadname(main))
    end
  end)

  it("setthreadname raises 'expected arg #1 to be a string' for a non-string name", function()
    local co = coroutine.create(function() end)
    for _, v in ipairs({ 42, {}, true, print, co }) do
      local ok, err = pcall(copas.setthreadname, v, co)
      assert.is_false(ok)
      assert.matches("expected arg #1 to be a string", err, 1, true)
    end
    local ok, err = pcall(copas.setthreadname, nil, co)
    assert.is_false(ok)
    assert.matches("expected arg #1 to be a string", err, 1, true)
  end)

  it("setthreadname raises 'expected arg #2 to be a coroutine or nil' for a non-thread", function()
    for _, v in ipairs({ 42, {}, true, print, "co" }) do
      local ok, err = pcall(copas.setthreadname, "n", v)
      assert.is_false(ok)
      assert.matches("expected arg #2 to be a coroutine or nil", err, 1, true)
    end
  end)

  it("getthreadname raises 'expected arg #1 to be a coroutine or nil' for a non-thread", function()
    for _, v in ipairs({ 42, {}, true, print, "co" }) do
      local ok, err = pcall(copas.getthreadname, v)
      assert.is_false(ok)
      assert.matches("expected arg #1 to be a coroutine or nil", err, 1, true)
    end
  end)

  it("reports the names copas gives: copas_initializer", function()
    local name
    run(copas, 2, function() name = copas.getthreadname() end)
    assert.equal("copas_initializer", name)
  end)

  it("does not keep a named coroutine alive", function()
    local weak = setmetatable({}, { __mode = "k" })
    local co = coroutine.create(function() end)
    copas.setthreadname("gone soon", co)
    weak[co] = true
    co = nil -- luacheck: ignore
    collectgarbage()
    collectgarbage()
    assert.is_nil(next(weak))
  end)
end)

describe("copas.setsocketname / copas.getsocketname with non-socket objects", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("names any object used as a socket", function()
    local objects = { {}, setmetatable({}, {}), print, coroutine.create(function() end), io.stdout }
    for i, obj in ipairs(objects) do
      assert.equal(0, select("#", copas.setsocketname("object " .. i, obj)))
    end
    for i, obj in ipairs(objects) do
      assert.equal("object " .. i, copas.getsocketname(obj))
    end
  end)

  it("defaults to tostring(obj)", function()
    local obj = {}
    assert.equal(tostring(obj), copas.getsocketname(obj))
    assert.equal(tostring(print), copas.getsocketname(print))
  end)

  it("freezes the default name at the first lookup", function()
    local label = "first"
    local obj = setmetatable({}, { __tostring = function() return "fake{" .. label .. "}" end })
    assert.equal("fake{first}", copas.getsocketname(obj))
    label = "second"
    assert.equal("fake{second}", tostring(obj))
    assert.equal("fake{first}", copas.getsocketname(obj))
  end)

  it("shares one name table with threads", function()
    local co = coroutine.create(function() end)
    copas.setsocketname("shared", co)
    assert.equal("shared", copas.getthreadname(co))
    copas.setthreadname("back", co)
    assert.equal("back", copas.getsocketname(co))
  end)

  it("setsocketname raises 'expected arg #1 to be a string' for a non-string name", function()
    for _, v in ipairs({ 42, {}, true, print }) do
      local ok, err = pcall(copas.setsocketname, v, {})
      assert.is_false(ok)
      assert.matches("expected arg #1 to be a string", err, 1, true)
    end
  end)

  it("setsocketname raises 'expected arg #2 to be a socket' for nil or false", function()
    for _, v in ipairs({ "nil", false }) do
      local ok, err = pcall(copas.setsocketname, "n", (v ~= "nil") and v or nil)
      assert.is_false(ok)
      assert.matches("expected arg #2 to be a socket", err, 1, true)
    end
  end)

  it("getsocketname raises 'expected arg #1 to be a socket' for nil or false", function()
    local ok, err = pcall(copas.getsocketname)
    assert.is_false(ok)
    assert.matches("expected arg #1 to be a socket", err, 1, true)
    ok, err = pcall(copas.getsocketname, false)
    assert.is_false(ok)
    assert.matches("expected arg #1 to be a socket", err, 1, true)
  end)

  it("is used for the socket part of gettraceback", function()
    local obj = {}
    copas.setsocketname("the socket", obj)
    assert.matches("^m %(coroutine: nil, socket: the socket%)", copas.gettraceback("m", nil, obj))
  end)

  it("does not keep a named object alive", function()
    local weak = setmetatable({}, { __mode = "k" })
    local obj = {}
    copas.setsocketname("gone soon", obj)
    weak[obj] = true
    obj = nil -- luacheck: ignore
    collectgarbage()
    collectgarbage()
    assert.is_nil(next(weak))
  end)
end)
