-- Specs for copas.connect and the TCP wrapper's connect (behaviour contract §2.4 copas.connect,
-- §2.10.2, §3.5; upstream tests/connecttwice.lua and tests/tcptimeout.lua, made local).
-- Lead decision: host names are resolved off the loop thread and connect tries every resolved
-- address in order, so "localhost" reaches a server listening on 127.0.0.1 only even when
-- ::1 comes first (upstream's non-blocking LuaSocket connect gives up after the first address).
local helper = require("spec.helper")
local socket = require("socket")
local clock = require("system").gettime

local here = (debug.getinfo(1, "S").source:match("^@(.*)[/\\]") or ".")
local support = here .. "/support"

local EPS = 0.002

-- A server on 127.0.0.1 (port 0) whose handler echoes one line.
local function echo_server(copas)
  local srv = assert(socket.bind("127.0.0.1", 0, 8))
  local _, port = srv:getsockname()
  copas.addserver(srv, copas.handler(function(skt)
    skt:settimeout(3)
    local line = skt:receive("*l")
    if line then skt:send(line .. "\n") end
  end))
  return srv, tonumber(port)
end

-- A port nothing listens on (bound, then closed).
local function closed_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

-- A listen(0) server that never accepts, with its backlog filled (the tcptimeout.lua trick),
-- so that a further connect stays in progress. Returns the server, its port and the fillers.
local function full_backlog()
  local srv = socket.tcp()
  assert(srv:bind("127.0.0.1", 0))
  assert(srv:listen(0))
  local _, port = srv:getsockname()
  local fillers = {}
  for _ = 1, 8 do
    local c = socket.tcp()
    c:settimeout(0.2)
    local ok = c:connect("127.0.0.1", port)
    fillers[#fillers + 1] = c
    if not ok then break end -- this one did not fit: the backlog is full
  end
  return srv, tonumber(port), fillers
end

describe("copas.connect", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("never resumes a thread removed while its host name is being looked up", function()
    local srv, port = echo_server(copas)
    local resumed = false
    local t0 = clock()
    local connector = copas.addthread(function()
      copas.connect(socket.tcp(), "localhost", port)   -- waits for the lookup thread
      resumed = true
    end)
    copas.addthread(function()
      copas.pause(0)              -- the connector has started its lookup by now
      copas.removethread(connector)
      copas.pause(0.2)            -- the lookup has long finished
      copas.removeserver(srv)
    end)
    helper.loop(copas, 5)
    assert.is_false(resumed)
    assert.is_true(clock() - t0 < 2)
  end)

  it("returns 1 (LuaSocket's success value) on success", function()
    local srv, port = echo_server(copas)
    local r, n
    helper.run(copas, function()
      local skt = socket.tcp()
      local res = { copas.connect(skt, "127.0.0.1", port) }
      r, n = res[1], #res
      skt:close()
      copas.removeserver(srv)
    end)
    assert.equal(1, r)
    assert.equal(1, n)
  end)

  it("returns nil, 'connection refused' for a port nothing listens on", function()
    local port = closed_port()
    local r
    helper.run(copas, function()
      local skt = socket.tcp()
      r = { copas.connect(skt, "127.0.0.1", port) }
      skt:close()
    end)
    assert.same({ nil, "connection refused" }, r)
  end)

  -- the local equivalent of upstream tests/connecttwice.lua (which uses google.com)
  it("returns nil, 'already connected' when the socket is already connected (host name)", function()
    local srv, port = echo_server(copas)
    local first, second, echo
    helper.run(copas, function()
      local c = copas.wrap(socket.tcp())
      c:settimeout(3)
      first = { c:connect("localhost", port) }
      second = { c:connect("localhost", port) }
      c:send("still fine\n")
      echo = c:receive("*l")
      c:close()
      copas.removeserver(srv)
    end)
    assert.same({ 1 }, first)
    assert.same({ nil, "already connected" }, second)
    assert.equal("still fine", echo)
  end)

  it("returns nil, 'timeout' after the connect timeout when the server's backlog is full", function()
    local srv, port, fillers = full_backlog()
    local r, elapsed
    helper.run(copas, function()
      local c = copas.wrap(socket.tcp())
      c:settimeout(0.3)
      local t0 = clock()
      r = { c:connect("127.0.0.1", port) }
      elapsed = clock() - t0
      c:close()
    end)
    for _, f in ipairs(fillers) do f:close() end
    srv:close()
    assert.same({ nil, "timeout" }, r)
    assert.is_true(elapsed >= 0.3 - EPS and elapsed < 1, "timed out after " .. elapsed)
  end)

  -- upstream tests/tcptimeout.lua connect_timeout_socket: the raw error of the last attempt
  it("returns the socket's own error 'Operation already in progress' with useSocketTimeoutErrors(true)", function()
    local srv, port, fillers = full_backlog()
    local r
    helper.run(copas, function()
      copas.useSocketTimeoutErrors(true)
      local c = copas.wrap(socket.tcp())
      c:settimeout(0.3)
      r = { c:connect("127.0.0.1", port) }
      c:close()
    end)
    for _, f in ipairs(fillers) do f:close() end
    srv:close()
    assert.same({ nil, "Operation already in progress" }, r)
  end)

  it("keeps other threads running while a connect is in progress", function()
    local srv, port, fillers = full_backlog()
    local ticks, r = 0, nil
    helper.run(copas, function()
      copas.addthread(function()
        while not r do
          copas.pause(0.05)
          ticks = ticks + 1
        end
      end)
      local c = copas.wrap(socket.tcp())
      c:settimeout(0.5)
      r = { c:connect("127.0.0.1", port) }
      c:close()
    end)
    for _, f in ipairs(fillers) do f:close() end
    srv:close()
    assert.equal("timeout", r[2])
    assert.is_true(ticks >= 5, ticks .. " ticks during a 0.5 s connect")
  end)
end)

describe("the TCP wrapper's connect", function()
  local copas
  before_each(function() copas = helper.fresh_copas() end)

  it("returns 1 on success", function()
    local srv, port = echo_server(copas)
    local r, echo
    helper.run(copas, function()
      local c = copas.wrap(socket.tcp())
      r = { c:connect("127.0.0.1", port) }
      c:send("hi\n")
      echo = c:receive("*l")
      c:close()
      copas.removeserver(srv)
    end)
    assert.same({ 1 }, r)
    assert.equal("hi", echo)
  end)
end)

describe("copas.connect with a name that resolves to several addresses", function()
  local interpreter, q = helper.interpreter, helper.shell_quote

  -- Runs localhost_child.lua with an /etc/hosts (bind-mounted in a private mount namespace,
  -- the real file is never written) listing ::1 before 127.0.0.1 for localhost.
  local function run_child()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -m 700 " .. q(dir)))
    local hosts = dir .. "/hosts"
    local f = assert(io.open(hosts, "w"))
    f:write("::1 localhost\n127.0.0.1 localhost\n")
    f:close()
    local inner = "mount --bind " .. q(hosts) .. " /etc/hosts && exec " .. q(interpreter()) .. " "
      .. q(support .. "/localhost_child.lua")
    local cmd = "timeout -k 5 20 unshare -m --propagation private sh -c " .. q(inner)
      .. " </dev/null 2>&1; echo \"__rc=$?\""
    local p = assert(io.popen(cmd, "r"))
    local output = p:read("*a")
    p:close()
    os.remove(hosts)
    os.remove(dir)
    local res = {}
    for k, v in output:gmatch("([%w_]+)=([^\n]*)") do res[k] = v end
    return res, output
  end

  -- upstream fails this too (its non-blocking LuaSocket connect stops at the first address:
  -- "connection refused" from ::1)
  it("tries every address: 'localhost' reaches a server on 127.0.0.1 only when ::1 comes first", function()
    local uok = os.execute("unshare -m true >/dev/null 2>&1")
    if uok ~= true and uok ~= 0 then
      pending("needs `unshare -m` (root) to give the child its own /etc/hosts")
    end
    local res, output = run_child()
    assert.equal("0", res.__rc, output)
    assert.equal("1", res.done, output)
    assert.equal(1, tonumber(res.connect), output)
    assert.equal("hello localhost", res.echo, output)
    assert.is_true(tonumber(res.elapsed) < 1, output)
  end)
end)
