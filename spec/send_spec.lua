-- Specs for copas.send on raw TCP sockets and the TCP wrapper's send (behaviour contract §2.4,
-- §2.10.2, §3.5). Everything here is kept upstream behaviour: these specs pass on upstream too.
local helper = require("spec.helper")
local net = require("spec.support.net")
local clock = require("system").gettime

-- Reads everything from `skt` in a copas thread until the peer closes; `pace` seconds of pause
-- after each chunk of `size` bytes (a slow reader). Calls done(data) at the end.
local function reader(copas, skt, size, pace, done)
  copas.addthread(function()
    local pieces = {}
    while true do
      local chunk, err, part = copas.receive(skt, size)
      if chunk then
        pieces[#pieces + 1] = chunk
      else
        if part and part ~= "" then pieces[#pieces + 1] = part end
        assert(err == "closed", "reader got " .. tostring(err))
        break
      end
      if pace then copas.pause(pace) end
    end
    done(table.concat(pieces))
  end)
end

describe("copas.send", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)
  after_each(function() net.closeall() end)

  it("returns the index of the last byte sent (the length of the data)", function()
    local a, b = net.pair()
    local r1, r2, got
    helper.run(copas, function()
      r1, r2 = copas.send(a, "hello\n")
      got = copas.receive(b)
    end, 3)
    assert.equal(6, r1)
    assert.is_nil(r2)
    assert.equal("hello", got)
  end)

  it("sends data:sub(i, j) and returns j", function()
    local a, b = net.pair()
    local r, got
    helper.run(copas, function()
      r = copas.send(a, "0123456789", 3, 6)
      got = copas.receive(b, 4)
    end, 3)
    assert.equal(6, r)
    assert.equal("2345", got)
  end)

  it("with only i sends from i to the end and returns the length of the data", function()
    local a, b = net.pair()
    local r, got
    helper.run(copas, function()
      r = copas.send(a, "0123456789", 8)
      got = copas.receive(b, 3)
    end, 3)
    assert.equal(10, r)
    assert.equal("789", got)
  end)

  it("accepts negative indexes as string.sub does", function()
    local a, b = net.pair()
    local r, got
    helper.run(copas, function()
      r = copas.send(a, "0123456789", -4, -2)
      got = copas.receive(b, 3)
    end, 3)
    assert.equal(9, r)
    assert.equal("678", got)
  end)

  it("completes a large send to a slow reader, waiting many times and resuming after the last byte sent", function()
    local a, b = net.pair()
    local proxy = net.recorder(a)
    local data = net.payload(6 * 1024 * 1024)
    local result, received, ticks_during = nil, nil, 0
    local sending = false
    reader(copas, b, 64 * 1024, 0.002, function(d) received = d end)
    copas.addthread(function()
      while result == nil do
        if sending then ticks_during = ticks_during + 1 end
        copas.pause(0.01)
      end
    end)
    helper.run(copas, function()
      sending = true
      result = copas.send(proxy, data)
      sending = false
      copas.close(a)
    end, 60)
    assert.equal(#data, result)
    assert.is_true(received == data, net.diff(data, received))
    local calls = proxy.calls
    assert.is_true(#calls >= 3, "only " .. #calls .. " send calls")
    assert.is_true(ticks_during >= 3, "the loop ticked " .. ticks_during .. " times during the send")
    -- every retry starts right after the last byte the previous call sent
    for k = 2, #calls do
      assert.equal(calls[k - 1].sent + 1, calls[k].i, "call " .. k)
    end
  end)

  it("completes a large send on a LuaSocket connection to a slow reader, every byte in order", function()
    local a, b = net.pair()
    local data = net.payload(6 * 1024 * 1024)
    local result, received, ticks_during = nil, nil, 0
    reader(copas, b, 64 * 1024, 0.002, function(d) received = d end)
    copas.addthread(function()
      while result == nil do
        ticks_during = ticks_during + 1
        copas.pause(0.01)
      end
    end)
    helper.run(copas, function()
      result = copas.send(a, data, 3, -3)
      copas.close(a)
    end, 60)
    assert.equal(#data - 2, result)
    assert.is_true(received == data:sub(3, -3), net.diff(data:sub(3, -3), received))
    assert.is_true(ticks_during >= 3, "the loop ticked " .. ticks_during .. " times during the send")
  end)

  it("returns nil, an error and the index of the last byte sent when the peer has closed", function()
    local a, b = net.pair()
    b:close()
    local data = net.payload(16 * 1024 * 1024)
    local r1, r2, r3
    helper.run(copas, function()
      copas.pause(0.1) -- let the close arrive
      r1, r2, r3 = copas.send(a, data)
    end, 10)
    assert.is_nil(r1)
    assert.is_string(r2)
    assert.not_equal("timeout", r2)
    assert.is_number(r3)
    assert.is_true(r3 >= 0 and r3 < #data, "last index " .. tostring(r3))
  end)

  it("returns nil, 'timeout' and the last index sent when the peer does not read within the send timeout", function()
    local a = net.pair()
    copas.settimeouts(a, nil, 0.5, nil)
    local data = net.payload(32 * 1024 * 1024)
    local r1, r2, r3, elapsed
    helper.run(copas, function()
      local t0 = clock()
      r1, r2, r3 = copas.send(a, data)
      elapsed = clock() - t0
    end, 10)
    assert.is_nil(r1)
    assert.equal("timeout", r2)
    assert.is_number(r3)
    assert.is_true(r3 > 0 and r3 < #data, "last index " .. tostring(r3))
    assert.is_true(elapsed >= 0.45 and elapsed < 2, "timed out after " .. elapsed)
  end)

  it("reports the last index sent as an absolute index into the data when starting at i", function()
    local a = net.pair()
    copas.settimeouts(a, nil, 0.3, nil)
    local data = net.payload(32 * 1024 * 1024)
    local first, r1, r2, r3
    helper.run(copas, function()
      -- fill the buffers first, so the second send cannot send anything at all
      first = select(3, copas.send(a, data))
      r1, r2, r3 = copas.send(a, data, 1000001)
    end, 10)
    assert.is_number(first)
    assert.is_nil(r1)
    assert.equal("timeout", r2)
    assert.is_number(r3)
    assert.is_true(r3 >= 1000000 and r3 < #data, "last index " .. tostring(r3))
  end)
end)

describe("the TCP wrapper's send", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)
  after_each(function() net.closeall() end)

  it("sends through copas.send: i and j work and the last index is returned", function()
    local a, b = net.pair()
    local w = copas.wrap(a)
    local r, got
    helper.run(copas, function()
      r = w:send("abcdef", 2, 4)
      got = copas.receive(b, 3)
    end, 3)
    assert.equal(4, r)
    assert.equal("bcd", got)
  end)

  it("returns nil, 'timeout' and the last index when its send timeout passes", function()
    local a = net.pair()
    local w = copas.wrap(a)
    w:settimeouts(nil, 0.3, nil)
    local data = net.payload(32 * 1024 * 1024)
    local r1, r2, r3
    helper.run(copas, function() r1, r2, r3 = w:send(data) end, 10)
    assert.is_nil(r1)
    assert.equal("timeout", r2)
    assert.is_true(type(r3) == "number" and r3 > 0 and r3 < #data, "last index " .. tostring(r3))
  end)
end)

-- Fails before the fix (issue #9, defect 2): the core took any userdata whose tostring began
-- with "tcp{client}" for a LuaSocket connection, read a descriptor out of its memory and wrote
-- to it directly (for a 0-byte userdata: past its end, into whatever descriptor was there).
describe("copas.send on an object that only claims to be a LuaSocket connection", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)
  after_each(function() net.closeall() end)

  it("goes through the object's own send method, never to the descriptor inside it", function()
    local a, b = net.pair()
    -- A real connection's userdata, with another metatable: same size, same descriptor inside.
    local calls = {}
    debug.setmetatable(b, {
      __tostring = function() return "tcp{client}: 0x1" end,
      __index = {
        send = function(_, data) calls[#calls + 1] = data; return #data end,
        getfd = function() return -1 end,
        settimeout = function() end,
      },
    })
    local ok, last
    helper.run(copas, function() ok, last = pcall(copas.send, b, "bytes\n") end, 3)
    assert.is_true(ok)
    assert.equal(6, last)
    assert.same({ "bytes\n" }, calls)
    a:settimeout(0.2)
    local data, err = a:receive(1)   -- nothing reached the real peer
    assert.is_nil(data)
    assert.equal("timeout", err)
  end)

  it("does not take a userdata without LuaSocket's class for one, and real connections keep working", function()
    local spoof = newproxy and newproxy(true) or io.tmpfile()
    if newproxy then getmetatable(spoof).__tostring = function() return "tcp{client}: x" end end
    local a, b = net.pair()
    local spoof_ok, line
    helper.run(copas, function()
      spoof_ok = pcall(copas.send, spoof, "bytes\n")
      assert(copas.send(a, "real\n"))
      line = copas.receive(b)
    end, 3)
    assert.is_false(spoof_ok)
    assert.equal("real", line)
  end)
end)
