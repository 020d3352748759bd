-- Specs for faulty peers: a peer that resets, half-closes, trickles or speaks garbage to a TLS
-- server costs only its own connection (behaviour contract §2.4, §4.7 autoclose, §8.5).
-- The server side is an echo server (copas.handler) on 127.0.0.1: a connection first sends
-- "HELLO <tag>\n", then everything it sends is echoed back; when the peer ends its sending
-- side the server answers "END <bytes echoed>\n" and returns (autoclose closes the socket).
local helper = require("spec.helper")
local socket = require("socket")
local clock = require("system").gettime

local GOOD = 20          -- concurrent well-behaved clients
local SIZE = 256 * 1024  -- bytes each of them sends and gets back
local TICK = 0.1

-- 256 KiB of numbered lines: any loss, duplication or reordering changes the content.
local function payload(id)
  local lines = {}
  for i = 1, SIZE / 16 do lines[i] = string.format("%02d:%012d\n", id, i) end
  return table.concat(lines)
end

-- A cheap position-dependent checksum (for the failure message only; content is compared).
local function checksum(s)
  local sum = 0
  for i = 1, #s, 97 do sum = (sum * 31 + s:byte(i)) % 2147483647 end
  return sum
end

local function echo_server(copas, outcomes)
  local srv = assert(socket.bind("127.0.0.1", 0, 64))
  local _, port = srv:getsockname()
  copas.addserver(srv, copas.handler(function(skt)
    local hello = skt:receive("*l")
    local tag = hello and hello:match("^HELLO (.+)$") or "?"
    local total, outcome = 0
    while true do
      local data, err, part = skt:receivepartial(65536)
      local chunk = data or part
      if chunk and #chunk > 0 then
        total = total + #chunk
        local ok, serr = skt:send(chunk)
        if not ok then
          outcome = serr
          break
        end
      end
      if not data and err ~= "timeout" then
        outcome = err
        break
      end
    end
    if outcome == "closed" then skt:send("END " .. total .. "\n") end
    outcomes[tag] = outcome
  end))
  return srv, tonumber(port)
end

local function connect(copas, port, tag)
  local c = copas.wrap(socket.tcp())
  assert(c:connect("127.0.0.1", port))
  assert(c:send("HELLO " .. tag .. "\n"))
  return c
end

describe("a faulty peer", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("(reset, half-close, trickle) costs only its own connection", function()
    local outcomes = {}
    local srv, port = echo_server(copas, outcomes)
    local results = {}  -- good client id -> true or a failure message
    local half, trickle = nil, {}
    local max_late, ticks = 0, 0
    local good_done = 0

    helper.run(copas, function()
      -- well-behaved clients: send 256 KiB (sender thread), read the echo (receiver thread)
      for id = 1, GOOD do
        local data = payload(id)
        local expected = data .. "END " .. #data .. "\n"
        local c = copas.wrap(socket.tcp())
        c:settimeout(15)
        copas.addthread(function()
          local ok, err = c:connect("127.0.0.1", port)
          if not ok then
            results[id] = "connect: " .. tostring(err)
            good_done = good_done + 1
            return
          end
          copas.addthread(function()
            assert(c:send("HELLO good" .. id .. "\n"))
            local sent, serr = c:send(data)
            if not sent then results[id] = "send: " .. tostring(serr) end
            c:shutdown("send")
          end)
          local got, err2, part = c:receive(#expected)
          got = got or part or ""
          if got == expected then
            results[id] = results[id] or true
          else
            results[id] = ("got %d bytes (checksum %d), want %d (checksum %d); %s"):format(
              #got, checksum(got), #expected, checksum(expected), tostring(err2))
          end
          c:close()
          good_done = good_done + 1
        end)
      end

      -- resetting peers: send a little, then close with SO_LINGER 0 (RST)
      for k = 1, 5 do
        copas.addthread(function()
          local c = connect(copas, port, "reset" .. k)
          assert(c:send(("x"):rep(4096)))
          copas.pause(0.05 * k)
          assert(c:setoption("linger", { on = true, timeout = 0 }))
          c:close()
        end)
      end

      -- a half-closing peer: sends a request, shuts its sending side, reads the answer later
      copas.addthread(function()
        local c = connect(copas, port, "half")
        c:settimeout(10)
        assert(c:send("abc"))
        assert(c:shutdown("send"))
        copas.pause(0.3)
        local data, err, part = c:receive("*a")
        half = data or (err == "closed" and part) or ("error: " .. tostring(err))
        c:close()
      end)

      -- a trickling peer: one byte every 0.1 s, reading each echo
      copas.addthread(function()
        local c = connect(copas, port, "trickle")
        c:settimeout(5)
        for i = 1, 15 do
          local b = string.char(64 + i)
          assert(c:send(b))
          trickle[#trickle + 1] = c:receive(1) or "?"
          copas.pause(0.1)
        end
        c:close()
      end)

      -- the ticker: runs on schedule while all of this goes on
      local t0 = clock()
      while (good_done < GOOD or #trickle < 15 or half == nil) and clock() - t0 < 20 do
        local t = clock()
        copas.pause(TICK)
        local late = clock() - t - TICK
        if late > max_late then max_late = late end
        ticks = ticks + 1
      end
      copas.removeserver(srv)
    end, 30)

    for id = 1, GOOD do
      assert.is_true(results[id] == true, "client " .. id .. ": " .. tostring(results[id]))
      assert.equal("closed", outcomes["good" .. id]) -- each ended by its own half-close
    end
    assert.equal("abcEND 3\n", half)
    assert.equal("ABCDEFGHIJKLMNO", table.concat(trickle))
    for k = 1, 5 do
      assert.is_string(outcomes["reset" .. k], "the server handler for reset" .. k .. " never ended")
    end
    assert.is_true(ticks >= 10, ticks .. " ticks")
    assert.is_true(max_late < 0.2, "a tick woke " .. max_late .. " s late")
  end)
end)

describe("a misbehaving peer of a TLS server", function()
  local copas, dir
  local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

  setup(function()
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -m 700 " .. q(dir)))
    local cmd = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
      .. " -keyout " .. q(dir .. "/key.pem") .. " -out " .. q(dir .. "/cert.pem")
      .. " -days 2 -subj /CN=localhost >/dev/null 2>&1"
    local ok = os.execute(cmd)
    assert(ok == true or ok == 0, "openssl could not make a certificate")
  end)

  teardown(function()
    if dir then
      os.remove(dir .. "/key.pem")
      os.remove(dir .. "/cert.pem")
      os.remove(dir)
    end
  end)

  before_each(function() copas = helper.fresh_copas() end)

  it("sending garbage fails only that handshake (error handler called) while a good TLS client succeeds", function()
    local srv = assert(socket.bind("127.0.0.1", 0, 8))
    local _, port = srv:getsockname()
    local server_params = {
      mode = "server", protocol = "any", verify = "none", options = "all",
      key = dir .. "/key.pem", certificate = dir .. "/cert.pem",
    }
    local client_params = { mode = "client", protocol = "any", verify = "none", options = "all" }
    local served = 0
    copas.addserver(srv, copas.handler(function(skt)
      skt:settimeout(5)
      local line = skt:receive("*l")
      if line then skt:send("tls " .. line .. "\n") end
      served = served + 1
    end, server_params))

    local bad, good = nil, nil
    local errors = helper.run(copas, function()
      local done = 0
      copas.addthread(function()
        local c = copas.wrap(socket.tcp())
        c:settimeout(5)
        assert(c:connect("127.0.0.1", port))
        copas.pause(0.1) -- the good client is connecting meanwhile
        assert(c:send("GET / HTTP/1.0\r\n\r\nthis is not a TLS client hello\r\n"))
        local data, err = c:receive("*a")
        bad = { data ~= nil or err == "closed", err }
        c:close()
        done = done + 1
      end)
      copas.addthread(function()
        local c = copas.wrap(socket.tcp(), client_params)
        c:settimeout(5)
        local ok, err = c:connect("127.0.0.1", port)
        if ok then
          c:send("hello\n")
          good = { c:receive("*l") }
        else
          good = { nil, err }
        end
        c:close()
        done = done + 1
      end)
      local t0 = clock()
      while done < 2 and clock() - t0 < 8 do copas.pause(0.02) end
      copas.removeserver(srv)
    end, 15, true)
    assert.same({ "tls hello" }, good)
    assert.is_table(bad, "the garbage peer never returned")
    assert.is_true(bad[1], "the garbage peer's connection was not closed: " .. tostring(bad[2]))
    assert.equal(1, served) -- only the good client reached the handler
    assert.equal(1, #errors, table.concat(errors, "\n"))
    assert.is_truthy(errors[1]:find("handshake failed", 1, true), errors[1])
  end)

  -- FAILS on upstream 4.11: copas.handler ignores dohandshake's timeout and runs the handler
  -- on the un-handshaken socket (behaviour contract §16.2, security).
  it("stalling in the handshake past the connect timeout never reaches the handler", function()
    local srv = assert(socket.bind("127.0.0.1", 0, 8))
    local _, port = srv:getsockname()
    local server_params = {
      mode = "server", protocol = "any", verify = "none", options = "all",
      key = dir .. "/key.pem", certificate = dir .. "/cert.pem",
    }
    local served = 0
    copas.addserver(srv, copas.handler(function() served = served + 1 end, server_params), 0.3)
    local result, elapsed
    helper.run(copas, function()
      local c = copas.wrap(socket.tcp())
      c:settimeout(5)
      assert(c:connect("127.0.0.1", port))
      local t0 = clock()
      result = { c:receive("*a") }   -- says nothing: the server's handshake waits for a hello
      elapsed = clock() - t0
      c:close()
      copas.removeserver(srv)
    end, 10)
    assert.equal(0, served)
    assert.is_nil(result[1])
    assert.equal("closed", result[2])
    assert.is_true(elapsed >= 0.25 and elapsed < 3, "closed after " .. tostring(elapsed) .. " s")
  end)
end)
