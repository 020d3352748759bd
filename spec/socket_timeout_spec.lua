-- Specs for the socket operation timeouts: copas.settimeout, copas.settimeouts,
-- copas.useSocketTimeoutErrors and how the timeouts apply to receive, receivepartial,
-- receivefrom, send and connect (behaviour contract §3.1-§3.5, §4.7, §15.4-§15.6).
-- All of this is kept upstream behaviour: these specs pass on upstream too (its 0.1 s timer
-- wheel included: the bounds are generous).
local helper = require("spec.helper")
local net = require("spec.support.net")
local socket = net.socket
local clock = require("system").gettime

-- Sends `data` on `skt` from a copas thread after `delay` seconds.
local function later(copas, skt, delay, data)
  copas.addthread(function()
    copas.pause(delay)
    assert(copas.send(skt, data))
  end)
end

-- Calls fn(...) and returns the elapsed seconds followed by its results (as a table with n).
local function timed(fn, ...)
  local t0 = clock()
  local r = { fn(...) }
  return clock() - t0, r
end

local function fired_in(elapsed, t)
  return elapsed >= t - 0.05 and elapsed < t + 1.2
end

local BIG = 32 * 1024 * 1024 -- more than the loopback buffers take: a send to a non-reader waits

describe("copas.settimeout", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)
  after_each(function() net.closeall() end)

  it("returns true", function()
    local a = net.pair()
    assert.is_true(rawequal(true, copas.settimeout(a, 1)))
    assert.is_true(rawequal(true, copas.settimeout(a, nil)))
  end)

  it("with a number t sets the connect, send and read timeouts to t", function()
    local a = net.pair()
    local port = net.full_listener()
    local c = net.track(socket.tcp())
    for _, s in ipairs({ a, c }) do copas.settimeout(s, 0.3) end
    local data = net.payload(BIG)
    local rt, rr, st, sr, ct, cr
    helper.run(copas, function()
      rt, rr = timed(copas.receive, a)
      st, sr = timed(copas.send, a, data)
      ct, cr = timed(copas.connect, c, "127.0.0.1", port)
    end, 10)
    assert.same({ nil, "timeout", "" }, { rr[1], rr[2], rr[3] })
    assert.is_true(fired_in(rt, 0.3), "receive timed out after " .. rt)
    assert.equal("timeout", sr[2])
    assert.is_true(fired_in(st, 0.3), "send timed out after " .. st)
    assert.same({ nil, "timeout" }, { cr[1], cr[2] })
    assert.is_true(fired_in(ct, 0.3), "connect timed out after " .. ct)
  end)

  it("with nil removes the timeout: the operation waits as long as it takes", function()
    local a, b = net.pair()
    copas.settimeout(b, 0.2)
    assert.is_true(copas.settimeout(b, nil))
    local t, r
    later(copas, a, 0.6, "late\n")
    helper.run(copas, function() t, r = timed(copas.receive, b) end, 3)
    assert.equal("late", r[1])
    assert.is_true(t >= 0.5, "returned after " .. t)
  end)

  it("with a negative number removes the timeout", function()
    local a, b = net.pair()
    copas.settimeout(b, 0.2)
    assert.is_true(copas.settimeout(b, -1))
    local t, r
    later(copas, a, 0.6, "late\n")
    helper.run(copas, function() t, r = timed(copas.receive, b) end, 3)
    assert.equal("late", r[1])
    assert.is_true(t >= 0.5, "returned after " .. t)
  end)

  it("with 0 arms no timer: a raw receive waits until the data arrives", function()
    local a, b = net.pair()
    assert.is_true(copas.settimeout(b, 0))
    local t, r
    later(copas, a, 0.6, "zero\n")
    helper.run(copas, function() t, r = timed(copas.receive, b) end, 3)
    assert.equal("zero", r[1])
    assert.is_true(t >= 0.5, "returned after " .. t)
  end)

  it("with 0 arms no timer: a raw send to a slow reader waits until done", function()
    local a, b = net.pair()
    assert.is_true(copas.settimeout(a, 0))
    local data = net.payload(8 * 1024 * 1024)
    local sent, received
    copas.addthread(function()
      copas.pause(0.5)
      local r = { copas.receive(b, #data) }
      received = r[1]
    end)
    helper.run(copas, function() sent = copas.send(a, data) end, 20)
    assert.equal(#data, sent)
    assert.is_true(received == data, net.diff(data, received))
  end)

  it("returns nil, \"timeout must be 'nil' or a number\" for anything else and changes nothing", function()
    local a, b = net.pair()
    copas.settimeout(b, 0.3)
    local r1, r2 = copas.settimeout(b, "5")
    assert.is_nil(r1)
    assert.equal("timeout must be 'nil' or a number", r2)
    local t, r
    later(copas, a, 1.5, "too late\n")
    helper.run(copas, function() t, r = timed(copas.receive, b) end, 4)
    assert.equal("timeout", r[2])
    assert.is_true(fired_in(t, 0.3), "timed out after " .. t)
  end)
end)

describe("copas.settimeouts", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)
  after_each(function() net.closeall() end)

  it("returns true when all arguments are valid", function()
    local a = net.pair()
    assert.is_true(rawequal(true, copas.settimeouts(a, 1, 2, 3)))
    assert.is_true(rawequal(true, copas.settimeouts(a)))
  end)

  it("sets the send and read timeouts separately", function()
    local a, b = net.pair()
    copas.settimeouts(a, nil, 0.3, nil)
    local data = net.payload(BIG)
    local st, sr, rt, rr
    later(copas, b, 0.8, "read ok\n")
    copas.addthread(function() rt, rr = timed(copas.receive, a) end)
    helper.run(copas, function() st, sr = timed(copas.send, a, data) end, 5)
    assert.equal("timeout", sr[2])
    assert.is_true(fired_in(st, 0.3), "send timed out after " .. st)
    assert.equal("read ok", rr[1])
    assert.is_true(rt >= 0.7, "receive returned after " .. rt)
  end)

  it("leaves a timeout unchanged for nil", function()
    local a, b = net.pair()
    copas.settimeout(b, 0.3)
    assert.is_true(copas.settimeouts(b, nil, nil, nil))
    local t, r
    later(copas, a, 1.5, "too late\n")
    helper.run(copas, function() t, r = timed(copas.receive, b) end, 4)
    assert.equal("timeout", r[2])
    assert.is_true(fired_in(t, 0.3), "timed out after " .. t)
  end)

  it("removes a timeout for a negative value", function()
    local a, b = net.pair()
    copas.settimeouts(b, nil, nil, 0.2)
    assert.is_true(copas.settimeouts(b, nil, nil, -1))
    local t, r
    later(copas, a, 0.6, "late\n")
    helper.run(copas, function() t, r = timed(copas.receive, b) end, 3)
    assert.equal("late", r[1])
    assert.is_true(t >= 0.5, "returned after " .. t)
  end)

  it("returns nil and a message naming the connect, send or read timeout that is not a number", function()
    local a = net.pair()
    assert.same({ nil, "connect timeout must be 'nil' or a number" }, { copas.settimeouts(a, "1") })
    assert.same({ nil, "send timeout must be 'nil' or a number" }, { copas.settimeouts(a, nil, {}) })
    assert.same({ nil, "read timeout must be 'nil' or a number" }, { copas.settimeouts(a, nil, nil, true) })
  end)

  it("applies its arguments in order: those before a bad one are applied", function()
    local a = net.pair()
    local r1, r2 = copas.settimeouts(a, nil, 0.3, "x")
    assert.is_nil(r1)
    assert.equal("read timeout must be 'nil' or a number", r2)
    local data = net.payload(BIG)
    local t, r
    helper.run(copas, function() t, r = timed(copas.send, a, data) end, 5)
    assert.equal("timeout", r[2])
    assert.is_true(fired_in(t, 0.3), "send timed out after " .. t)
  end)

  it("applies its arguments in order: those after a bad one are not applied", function()
    local a, b = net.pair()
    local r1, r2 = copas.settimeouts(b, "x", nil, 0.2)
    assert.is_nil(r1)
    assert.equal("connect timeout must be 'nil' or a number", r2)
    local t, r
    later(copas, a, 0.6, "late\n")
    helper.run(copas, function() t, r = timed(copas.receive, b) end, 3)
    assert.equal("late", r[1])
    assert.is_true(t >= 0.5, "returned after " .. t)
  end)
end)

describe("a socket operation timeout", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)
  after_each(function() net.closeall() end)

  it("is per call, not per chunk: 1 byte every 0.3 s does not keep receive(10) with 1 s alive", function()
    local a, b = net.pair()
    copas.settimeout(b, 1)
    local stop = false
    copas.addthread(function()
      while not stop do
        copas.pause(0.3)
        if not stop then copas.send(a, "x") end
      end
    end)
    local t, r
    helper.run(copas, function()
      t, r = timed(copas.receive, b, 10)
      stop = true
    end, 5)
    assert.is_nil(r[1])
    assert.equal("timeout", r[2])
    assert.matches("^x+$", r[3])
    assert.is_true(#r[3] >= 2 and #r[3] <= 4, "partial " .. r[3]) -- "xxx" when on time
    assert.is_true(t >= 0.95 and t < 2.2, "timed out after " .. t)
  end)

  it("makes receive return nil, 'timeout' and the partial data, the prefix included", function()
    local a, b = net.pair()
    copas.settimeout(b, 0.3)
    local t, r
    later(copas, a, 0.05, "cd")
    helper.run(copas, function() t, r = timed(copas.receive, b, 10, "ab") end, 3)
    assert.same({ nil, "timeout", "abcd" }, { r[1], r[2], r[3] })
    assert.is_true(fired_in(t, 0.3), "timed out after " .. t)
  end)

  it("makes receivepartial without new data return nil, 'timeout' and the prefix", function()
    local _, b = net.pair()
    copas.settimeout(b, 0.3)
    local t, r
    helper.run(copas, function() t, r = timed(copas.receivepartial, b, 10, "ab") end, 3)
    assert.same({ nil, "timeout", "ab" }, { r[1], r[2], r[3] })
    assert.is_true(fired_in(t, 0.3), "timed out after " .. t)
  end)

  it("makes receivefrom return nil, 'timeout', nil", function()
    local u = net.udp()
    copas.settimeout(u, 0.3)
    local t, r
    helper.run(copas, function() t, r = timed(copas.receivefrom, u) end, 3)
    assert.is_nil(r[1])
    assert.equal("timeout", r[2])
    assert.is_nil(r[3])
    assert.is_true(fired_in(t, 0.3), "timed out after " .. t)
  end)

  it("makes send return nil, 'timeout' and the index of the last byte sent", function()
    local a = net.pair()
    copas.settimeouts(a, nil, 0.3, nil)
    local data = net.payload(BIG)
    local t, r
    helper.run(copas, function() t, r = timed(copas.send, a, data) end, 5)
    assert.is_nil(r[1])
    assert.equal("timeout", r[2])
    assert.is_true(type(r[3]) == "number" and r[3] > 0 and r[3] < #data, "last index " .. tostring(r[3]))
    assert.is_true(fired_in(t, 0.3), "timed out after " .. t)
  end)

  it("makes connect return nil, 'timeout'", function()
    local port = net.full_listener()
    local c = net.track(socket.tcp())
    copas.settimeouts(c, 0.3, nil, nil)
    local t, r
    helper.run(copas, function() t, r = timed(copas.connect, c, "127.0.0.1", port) end, 3)
    assert.is_nil(r[1])
    assert.equal("timeout", r[2])
    assert.is_true(fired_in(t, 0.3), "timed out after " .. t)
  end)

  it("makes the wrapper's receive return nil, 'timeout' and the partial data", function()
    local a, b = net.pair()
    local w = copas.wrap(b)
    w:settimeout(0.3)
    local t, r
    later(copas, a, 0.05, "part")
    helper.run(copas, function() t, r = timed(w.receive, w, "*l") end, 3)
    assert.same({ nil, "timeout", "part" }, { r[1], r[2], r[3] })
    assert.is_true(fired_in(t, 0.3), "timed out after " .. t)
  end)

  it("set on a wrapper with copas.settimeout is not used (the wrapper's methods use the inner socket's)", function()
    local a, b = net.pair()
    local w = copas.wrap(b)
    copas.settimeout(w, 0.2)
    local t, r
    later(copas, a, 0.6, "late\n")
    helper.run(copas, function() t, r = timed(w.receive, w) end, 3)
    assert.equal("late", r[1])
    assert.is_true(t >= 0.5, "returned after " .. t)
  end)
end)

describe("copas.useSocketTimeoutErrors", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)
  after_each(function() net.closeall() end)

  -- a LuaSec-like socket: "wantread"/"wantwrite" where LuaSocket says "timeout"
  local function tls_like(skt, err)
    return net.recorder(skt, function(e) if e == "timeout" then return err end return e end)
  end

  it("with true makes receive return the socket's own error on a timeout", function()
    local a, b = net.pair()
    local p = tls_like(b, "wantread")
    copas.settimeout(p, 0.3)
    local r
    later(copas, a, 0.05, "par")
    helper.run(copas, function()
      copas.useSocketTimeoutErrors(true)
      r = { copas.receive(p, 10) }
    end, 3)
    assert.same({ nil, "wantread", "par" }, { r[1], r[2], r[3] })
  end)

  it("is off by default: the error is normalised to 'timeout'", function()
    local _, b = net.pair()
    local p = tls_like(b, "wantread")
    copas.settimeout(p, 0.3)
    local r
    helper.run(copas, function() r = { copas.receive(p, 10) } end, 3)
    assert.same({ nil, "timeout", "" }, { r[1], r[2], r[3] })
  end)

  it("with false switches the raw errors off again", function()
    local _, b = net.pair()
    local p = tls_like(b, "wantread")
    copas.settimeout(p, 0.3)
    local r
    helper.run(copas, function()
      copas.useSocketTimeoutErrors(true)
      copas.useSocketTimeoutErrors(false)
      r = { copas.receive(p, 10) }
    end, 3)
    assert.equal("timeout", r[2])
  end)

  it("applies per coroutine", function()
    local _, b1 = net.pair()
    local _, b2 = net.pair()
    local p1, p2 = tls_like(b1, "wantread"), tls_like(b2, "wantread")
    copas.settimeout(p1, 0.3)
    copas.settimeout(p2, 0.3)
    local raw, plain
    copas.addthread(function() plain = { copas.receivepartial(p2, 10) } end)
    helper.run(copas, function()
      copas.useSocketTimeoutErrors(true)
      raw = { copas.receivepartial(p1, 10) }
    end, 3)
    assert.equal("wantread", raw[2])
    assert.equal("timeout", plain[2])
  end)

  it("with true makes send return the socket's own error on a timeout", function()
    local a = net.pair()
    local p = tls_like(a, "wantwrite")
    copas.settimeouts(p, nil, 0.3, nil)
    local data = net.payload(BIG)
    local r
    helper.run(copas, function()
      copas.useSocketTimeoutErrors(true)
      r = { copas.send(p, data) }
    end, 5)
    assert.is_nil(r[1])
    assert.equal("wantwrite", r[2])
    assert.is_number(r[3])
  end)

  it("with true makes connect return LuaSocket's own error on a timeout", function()
    local port = net.full_listener()
    local c = net.track(socket.tcp())
    copas.settimeouts(c, 0.3, nil, nil)
    local r
    helper.run(copas, function()
      copas.useSocketTimeoutErrors(true)
      r = { copas.connect(c, "127.0.0.1", port) }
    end, 3)
    assert.is_nil(r[1])
    assert.is_true(r[2] == "timeout" or r[2] == "Operation already in progress", tostring(r[2]))
  end)

  it("with true makes receivefrom return 'timeout' (its only timeout error)", function()
    local u = net.udp()
    copas.settimeout(u, 0.3)
    local r
    helper.run(copas, function()
      copas.useSocketTimeoutErrors(true)
      r = { copas.receivefrom(u) }
    end, 3)
    assert.is_nil(r[1])
    assert.equal("timeout", r[2])
  end)

  if _VERSION == "Lua 5.1" then
    it("raises 'table index is nil' from the main thread on Lua 5.1 and LuaJIT", function()
      local ok, err = pcall(copas.useSocketTimeoutErrors, true)
      assert.is_false(ok)
      assert.matches("table index is nil", tostring(err))
    end)
  end
end)

describe("timeouts of accepted clients", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)
  after_each(function() net.closeall() end)

  -- Connects a client to `port` from a copas thread and keeps it open (silent) until `hold`
  -- returns true.
  local function silent_client(port, hold)
    copas.addthread(function()
      local c = copas.wrap(net.track(socket.tcp()))
      assert(c:connect("127.0.0.1", port))
      while hold() do copas.pause(0.05) end
      c:close()
    end)
  end

  it("are inherited from addserver's timeout argument", function()
    local server, port = net.server()
    local t, r
    copas.addserver(server, function(skt)
      t, r = timed(copas.receive, skt)
      copas.removeserver(server)
    end, 0.4)
    silent_client(port, function() return r == nil end)
    helper.run(copas, function() end, 5)
    assert.is_table(r, "the handler did not finish")
    assert.same({ nil, "timeout" }, { r[1], r[2] })
    assert.is_true(fired_in(t, 0.4), "timed out after " .. t)
  end)

  it("are inherited from copas.settimeouts on the server, each kind separately", function()
    local server, port = net.server()
    copas.settimeouts(server, nil, 0.3, 0.6)
    local data = net.payload(BIG)
    local st, sr, rt, rr
    copas.addserver(server, function(skt)
      rt, rr = timed(copas.receive, skt)
      st, sr = timed(copas.send, skt, data)
      copas.removeserver(server)
    end)
    silent_client(port, function() return sr == nil end)
    helper.run(copas, function() end, 5)
    assert.is_table(sr, "the handler did not finish")
    assert.equal("timeout", rr[2])
    assert.is_true(fired_in(rt, 0.6), "receive timed out after " .. rt)
    assert.equal("timeout", sr[2])
    assert.is_true(fired_in(st, 0.3), "send timed out after " .. st)
  end)

  it("are unset (wait as long as it takes) when the server has none", function()
    local server, port = net.server()
    local t, r
    copas.addserver(server, function(skt)
      t, r = timed(copas.receive, skt)
      copas.removeserver(server)
    end)
    copas.addthread(function()
      local c = copas.wrap(net.track(socket.tcp()))
      assert(c:connect("127.0.0.1", port))
      copas.pause(0.8)
      c:send("finally\n")
      while r == nil do copas.pause(0.05) end
      c:close()
    end)
    helper.run(copas, function() end, 5)
    assert.is_table(r, "the handler did not finish")
    assert.equal("finally", r[1])
    assert.is_true(t >= 0.7, "returned after " .. t)
  end)
end)
