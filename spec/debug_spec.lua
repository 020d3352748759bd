-- Specs for copas.debug with sockets (behaviour contract §2.9): debug.socket proxies and the
-- READ/WRITE lines of the debug logger.
local helper = require("spec.helper")
local net = require("spec.support.net")

-- Runs fn with the global print (which debug.socket writes through) collecting its lines.
local function capture_print(fn)
  local lines, original = {}, _G.print
  _G.print = function(...)
    local parts = { ... }
    for i = 1, select("#", ...) do parts[i] = tostring(parts[i]) end
    lines[#lines + 1] = table.concat(parts, "\t")
  end
  local ok, err = pcall(fn)
  _G.print = original
  assert(ok, err)
  return lines
end

describe("copas.debug.socket", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)
  after_each(function() net.closeall() end)

  it("returns a proxy that prints every call with its arguments and results, and still works", function()
    local a, b = net.pair()
    local proxy = copas.debug.socket(a)
    assert.equal(tostring(a), tostring(proxy))
    local got
    local lines = capture_print(function()
      b:send("hello\n")
      copas.addthread(function() got = copas.receive(proxy, "*l") end)
      helper.loop(copas, 3)
    end)
    assert.equal("hello", got)
    local text = table.concat(lines, "\n")
    assert.matches("%d+%-calling 'receive' with; ", text)
    assert.matches("%d+%-results 'receive' returned; ", text)
    assert.matches("'hello' %(string #5%)", text)
  end)

  it("given a wrapper, proxies its socket and returns the same wrapper", function()
    local a = net.pair()
    local w = copas.wrap(a)
    assert.equal(w, copas.debug.socket(w))
    assert.are_not.equal(a, w.socket)
    assert.equal(tostring(a), tostring(w.socket))
  end)
end)

describe("copas.debug.start", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)
  after_each(function()
    copas.debug.stop()
    net.closeall()
  end)

  it("logs a thread waiting to read with the socket's name", function()
    local a, b = net.pair()
    copas.setsocketname("my socket", a)
    local logged = {}
    copas.debug.start(function(...) logged[#logged + 1] = table.concat({ ... }) end)
    copas.addnamedthread("reader", function() copas.receive(a, "*l") end)
    copas.addthread(function()
      copas.pause(0.05)
      b:send("x\n")
    end)
    helper.loop(copas, 3)
    local text = table.concat(logged, "\n")
    assert.matches("yielding 'reader' to READ on 'my socket'", text, 1, true)
  end)

  it("logs a thread waiting to write with the socket's name", function()
    local a, b = net.pair()
    copas.setsocketname("my socket", a)
    copas.settimeouts(a, nil, 0.2, nil)
    local logged = {}
    copas.debug.start(function(...) logged[#logged + 1] = table.concat({ ... }) end)
    copas.addnamedthread("writer", function()
      copas.send(a, ("x"):rep(16 * 1024 * 1024))  -- nobody reads: it waits, then times out
    end)
    helper.loop(copas, 5)
    b:close()
    local text = table.concat(logged, "\n")
    assert.matches("yielding 'writer' to WRITE on 'my socket'", text, 1, true)
  end)
end)
