-- Specs for the LuaSocket functions copas replaces on load (behaviour contract §1.1.7, §1.2):
-- socket.protect, socket.newtry and socket.try, in Lua so that protected code can yield to
-- copas on every Lua version.
local helper = require("spec.helper")
local socket = require("socket")

describe("socket.newtry / socket.try after require('copas')", function()
  setup(function() helper.fresh_copas() end)

  it("returns all its arguments when the first is truthy", function()
    assert.same({ 1, 2, 3 }, { socket.try(1, 2, 3) })
  end)

  it("raises a table carrying the first error value, which protect turns into nil, message", function()
    local f = socket.protect(function() socket.try(nil, "boom", "ignored") end)
    assert.same({ nil, "boom" }, { f() })
    assert.same({ nil, nil }, { socket.protect(function() socket.try(false) end)() })
  end)

  it("calls the finalizer with the error values before raising", function()
    local got
    local try = socket.newtry(function(...) got = { ... } end)
    local r = { socket.protect(function() try(nil, "bad", "more") end)() }
    assert.same({ "bad", "more" }, got)
    assert.same({ nil, "bad" }, r)
  end)

  it("raises an error object whose tostring names the message", function()
    local ok, err = pcall(socket.try, nil, "why")
    assert.is_false(ok)
    assert.equal("Copas 'try' error intermediate table: 'why'", tostring(err))
  end)
end)

describe("socket.protect after require('copas')", function()
  local copas
  setup(function() copas = helper.fresh_copas() end)

  it("returns everything the function returned", function()
    assert.same({ 1, "two", 3 }, { socket.protect(function() return 1, "two", 3 end)() })
  end)

  -- A deliberate difference (behaviour contract §16.2, "decide"): upstream raises string errors
  -- again with its own source position prefixed, once per protect layer.
  it("raises other errors again, unchanged", function()
    local obj = {}
    local ok, err = pcall(socket.protect(function() error(obj) end))
    assert.is_false(ok)
    assert.equal(obj, err)
    ok, err = pcall(socket.protect(function() error("plain", 0) end))
    assert.is_false(ok)
    assert.equal("plain", err)
  end)

  it("lets protected code yield to copas (a pause inside works on every Lua version)", function()
    local result
    copas.addthread(function()
      result = { socket.protect(function()
        copas.pause(0.01)
        socket.try(nil, "after the pause")
      end)() }
    end)
    helper.loop(copas, 3)
    assert.same({ nil, "after the pause" }, result)
  end)
end)
