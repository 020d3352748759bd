-- Specs for copas.close and for several threads waiting on one socket (behaviour contract
-- §2.4 copas.close, §3.3, §4.2, §15.8, §16.2; issues #104, #165, #208 in copas-issues.md).
-- Lead decisions: copas.close wakes every waiter on the socket at once with "closed" (upstream
-- wakes one reader and one writer); every waiter on a ready socket is woken and retries in
-- order (upstream wakes the first, strands the rest); a timed-out waiter leaves the socket's
-- wait list (upstream leaves it there and resumes it on the next readiness).
local helper = require("spec.helper")
local socket = require("socket")
local clock = require("system").gettime

local EPS = 0.002

-- A server whose handler holds each accepted client (wrapped) until `release()` is called or
-- 5 s pass, calling `on_client(skt)` first (it may send or receive). Returns the server, its
-- port and the release function.
local function holding_server(copas, on_client)
  local srv = assert(socket.bind("127.0.0.1", 0, 8))
  local _, port = srv:getsockname()
  local released = false
  copas.addserver(srv, copas.handler(function(skt)
    if on_client then on_client(skt) end
    local t0 = clock()
    while not released and clock() - t0 < 5 do copas.pause(0.02) end
  end))
  return srv, tonumber(port), function()
    released = true
    copas.removeserver(srv)
  end
end

describe("copas.close", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  -- upstream tests/close.lua with two readers and a writer. FAILS on upstream 4.11: its closed
  -- list wakes one waiter per direction, the second reader is never resumed (#104 / §15.8).
  it("from another thread wakes every reader and writer blocked on the socket at once with 'closed'", function()
    local _, port, release = holding_server(copas) -- never reads nor writes
    local results, close_time = {}, nil
    local function done(name, r)
      r.after = clock() - close_time
      results[name] = r
    end
    helper.run(copas, function()
      local client = copas.wrap(socket.tcp())
      assert(client:connect("127.0.0.1", port))
      for _, name in ipairs({ "reader 1", "reader 2" }) do
        copas.addthread(function()
          local data, err = client:receive(1)
          done(name, { data, err })
        end)
      end
      copas.addthread(function()
        local ok, err = true, nil
        local chunk = ("hello world"):rep(1000)
        while ok do -- fill the buffers until the send blocks
          ok, err = client:send(chunk)
        end
        done("writer", { ok, err })
      end)
      copas.pause(0.5) -- everyone is blocked by now
      close_time = clock()
      client:close()
      local t0 = clock()
      while not (results["reader 1"] and results["reader 2"] and results.writer) and clock() - t0 < 2 do
        copas.pause(0.01)
      end
      release()
    end, 10)
    for _, name in ipairs({ "reader 1", "reader 2", "writer" }) do
      local r = results[name]
      assert.is_table(r, name .. " was never resumed")
      assert.is_nil(r[1], name)
      assert.equal("closed", r[2], name)
      assert.is_true(r.after < 0.2, name .. " returned " .. r.after .. " s after the close")
    end
  end)
end)

describe("several threads receiving on one socket", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  -- #165. FAILS on upstream 4.11: only the first waiter is woken, the second is stranded and
  -- the loop ends without it (§16.2).
  it("are each served in order as data arrives", function()
    local sender
    local _, port, release = holding_server(copas, function(skt)
      sender = skt
    end)
    local got = {}
    helper.run(copas, function()
      local client = copas.wrap(socket.tcp())
      client:settimeout(3)
      assert(client:connect("127.0.0.1", port))
      for i = 1, 3 do
        copas.addthread(function()
          local line, err = client:receive("*l")
          got[#got + 1] = { i, line or err }
        end)
      end
      copas.pause(0.2) -- all three are waiting
      for i = 1, 3 do
        assert(sender:send("line " .. i .. "\n"))
        copas.pause(0.2)
      end
      local t0 = clock()
      while #got < 3 and clock() - t0 < 2 do copas.pause(0.01) end
      client:close()
      release()
    end, 10)
    assert.same({ { 1, "line 1" }, { 2, "line 2" }, { 3, "line 3" } }, got)
  end)

  -- #165. FAILS on upstream 4.11: the first waiter reads both lines into LuaSocket's buffer,
  -- the second is never woken, and the loop ends with it stranded.
  it("leaves none stranded when one read leaves the next line buffered", function()
    local sender
    local _, port, release = holding_server(copas, function(skt)
      sender = skt
    end)
    local got = {}
    helper.run(copas, function()
      local client = copas.wrap(socket.tcp())
      assert(client:connect("127.0.0.1", port))
      for i = 1, 2 do
        copas.addthread(function()
          local line, err = client:receive("*l") -- no timeout: a stranded thread waits for ever
          got[#got + 1] = { i, line or err }
        end)
      end
      copas.pause(0.2)
      assert(sender:send("one\ntwo\n")) -- both lines in one segment
      copas.pause(0.3)
      release() -- the handler ends; the loop then ends when nothing else waits
    end, 10)
    assert.same({ { 1, "one" }, { 2, "two" } }, got)
  end)

  -- #208. FAILS on upstream 4.11: the timed-out thread stays in the socket's wait list; the
  -- next readiness resumes it (cutting its pause short) instead of the real waiter, which is
  -- stranded (§16.2).
  it("after one timed out, the next receiver gets the data and the timed-out one is never resumed", function()
    local sender
    local _, port, release = holding_server(copas, function(skt)
      sender = skt
    end)
    local a_res, a_slept, b_res
    helper.run(copas, function()
      local client = copas.wrap(socket.tcp())
      assert(client:connect("127.0.0.1", port))
      local a_done = false
      copas.addthread(function()
        client:settimeout(0.2)
        local t0 = clock()
        a_res = { client:receive("*l") }
        a_res.elapsed = clock() - t0
        a_done = true
        a_slept = copas.pause(1) -- a stale resume would cut this short
      end)
      while not a_done do copas.pause(0.01) end
      client:settimeout(3) -- the socket stays open and is used again
      copas.addthread(function()
        b_res = { client:receive("*l") }
      end)
      copas.pause(0.2)
      assert(sender:send("after the timeout\n"))
      local t0 = clock()
      while not b_res and clock() - t0 < 2 do copas.pause(0.01) end
      while not a_slept and clock() - t0 < 3 do copas.pause(0.01) end
      client:close()
      release()
    end, 10)
    assert.same({ nil, "timeout", "" }, { a_res[1], a_res[2], a_res[3] })
    assert.is_true(a_res.elapsed >= 0.2 - EPS and a_res.elapsed < 0.6, "timed out after " .. a_res.elapsed)
    assert.same({ "after the timeout" }, b_res)
    assert.is_number(a_slept, "the timed-out thread's pause never returned")
    assert.is_true(a_slept >= 1 - EPS, "the timed-out thread was resumed after " .. a_slept .. " s")
  end)
end)
