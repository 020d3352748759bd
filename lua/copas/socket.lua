-- copas-rs, private: the low-level socket functions of the `copas` table (timeouts, waiting,
-- receive/send/connect/close, UDP's sendto) and the waits they share. The contract is
-- upstream Copas 4.11's (../shared/docs/copas-behaviour.md §2.4, §3; beside this repository);
-- readiness, deadlines and the reads of plain TCP connections are in the core (src/sockets.rs,
-- src/luasocket.rs).
--
-- Loaded by copas.lua, once per load of copas: `require("copas.socket")(copas, shared)` adds the
-- functions to `copas` and, for the other socket modules (copas/server.lua, copas/tls.lua,
-- copas/wrap.lua), its internals to `shared`. All state is made by that call, so a reloaded
-- copas starts afresh.

return function(copas, shared)
  local core, sched, socket = shared.core, shared.sched, shared.socket
  local running, argerror, task_ids = shared.running, shared.argerror, shared.task_ids

  local TOKEN, OP_READ, OP_WRITE = core.TOKEN, core.OP_READ, core.OP_WRITE
  local MODE_LINE, MODE_ALL = core.MODE_LINE, core.MODE_ALL
  local OP_RECEIVE, PATTERN_LINE, PATTERN_ALL = core.OP_RECEIVE, core.PATTERN_LINE, core.PATTERN_ALL
  local OP_SEND = core.OP_SEND
  local sched_recv, sched_send = sched.recv, sched.send
  local yield = coroutine.yield
  local type, tonumber, tostring, getmetatable, setmetatable =
    type, tonumber, tostring, getmetatable, setmetatable
  local concat = table.concat
  local huge = math.huge
  local UDP_DATAGRAM_MAX = socket and socket._DATAGRAMSIZE or 8192

  -- LuaSocket and LuaSec errors that mean "not now": wait and retry.
  local RETRY = { timeout = true, wantread = true, wantwrite = true }

  local function check_socket(skt, n, fname)
    local t = type(skt)
    if t ~= "userdata" and t ~= "table" then argerror(n, fname, "socket", skt) end
  end

  -- The wrapper's metatables are made here, so that every call below can tell a wrapper from a
  -- socket; copas/wrap.lua gives them their methods.
  local tcp_mt, udp_mt = {}, {}

  local function is_wrapper(skt)
    local mt = getmetatable(skt)
    return mt ~= nil and (mt == tcp_mt or mt == udp_mt)
  end

  -- A TCP object, LuaSocket's or LuaSec's (upstream tells them by name, and so does copas).
  local function is_tcp(skt)
    local kind = tostring(skt):sub(1, 3)
    return kind == "tcp" or kind == "SSL"
  end

  -- Upstream hangs when handed a wrapper here; the wrapper's socket is what is meant.
  local function unwrap(skt)
    if is_wrapper(skt) then return skt.socket end
    return skt
  end


  -----------------------------------------------------------------------------
  -- Timeouts
  -----------------------------------------------------------------------------

  -- Copas-level timeouts per socket (the real LuaSocket timeout is always 0). Missing means none.
  local connect_timeouts = setmetatable({}, { __mode = "k" })
  local send_timeouts = setmetatable({}, { __mode = "k" })
  local read_timeouts = setmetatable({}, { __mode = "k" })

  local function set_one(store, skt, value, what)
    if value == nil then return true end
    if type(value) ~= "number" then return nil, what .. " timeout must be 'nil' or a number" end
    if value < 0 or value == huge then value = nil end   -- both mean "no timeout": no entry
    store[skt] = value
    return true
  end

  -- Applied in order; an error leaves the earlier ones applied (as upstream).
  function copas.settimeouts(skt, connect, send, read)
    if skt == nil then argerror(1, "settimeouts", "socket", skt) end
    local ok, err = set_one(connect_timeouts, skt, connect, "connect")
    if ok then ok, err = set_one(send_timeouts, skt, send, "send") end
    if ok then ok, err = set_one(read_timeouts, skt, read, "read") end
    return ok, err
  end

  function copas.settimeout(skt, timeout)
    if skt == nil then argerror(1, "settimeout", "socket", skt) end
    timeout = timeout or -1
    if type(timeout) ~= "number" then return nil, "timeout must be 'nil' or a number" end
    return copas.settimeouts(skt, timeout, timeout, timeout)
  end

  -- A timeout of 0, like none, arms no timer (upstream: copas.timeout(0) cancels).
  local function deadline_for(timeout)
    if timeout and timeout > 0 and timeout ~= huge then return sched.now() + timeout end
    return nil
  end

  -- Per thread: report the socket's own error ("timeout", "wantread", ...) on a timeout.
  local raw_timeout_errors = setmetatable({}, { __mode = "k" })

  function copas.useSocketTimeoutErrors(bool)
    local co = running()
    if co == nil then error("table index is nil", 2) end   -- upstream, on 5.1's main thread
    raw_timeout_errors[co] = not not bool
  end
  copas.usesockettimeouterrors = copas.useSocketTimeoutErrors

  local function timeout_error(raw)
    local co = running()
    if co ~= nil and raw_timeout_errors[co] then return raw end
    return "timeout"
  end


  -----------------------------------------------------------------------------
  -- Fairness and waiting
  -----------------------------------------------------------------------------

  -- A deterministic fairness budget (upstream pauses at random after 10% of I/O calls): every
  -- IO_BUDGET-th socket call that does not wait yields once, so a socket that always has data
  -- cannot starve timers or other threads, and math.random is left alone. A call about to wait
  -- is not counted: its wait yields anyway, and a pause between its failed try and its wait
  -- would let the readiness it waits for go by unseen (edge-triggered: it would wait for ever).
  local IO_BUDGET = 32
  local io_budget = IO_BUDGET

  local function budget_spent()
    io_budget = IO_BUDGET
    local co, main = coroutine.running()
    if co ~= nil and not main then copas.pause() end
  end

  local function spend(err)
    if RETRY[err] then return end
    io_budget = io_budget - 1
    if io_budget <= 0 then budget_spent() end
  end

  -- The descriptor each socket object was added to epoll with, and the object of each
  -- descriptor (for debug output and cancelall).
  local watched_fd = setmetatable({}, { __mode = "k" })
  local fd_socket = setmetatable({}, { __mode = "v" })

  local function current_fd(skt)
    local getfd = skt.getfd
    if getfd == nil then return nil end
    local fd = getfd(skt)
    if type(fd) ~= "number" or fd < 0 or fd ~= fd then return nil end
    return fd
  end

  local function watch(skt)
    local fd = watched_fd[skt]
    if fd then return fd end
    fd = current_fd(skt)
    if fd == nil or not sched.watch(fd) then return nil end
    watched_fd[skt], fd_socket[fd] = fd, skt
    return fd
  end

  -- The one wait of every retry loop (try; "not now"; wait here; try again), after a try that
  -- said `err`. `ready` is what the previous wait returned, true before the first; `op` is the
  -- direction unless LuaSec asked for the other one; `fd` is passed when already known.
  -- Returns true (ready) or false (out of time: the call makes one last try), to try again; or
  -- nil, the error to end the call with and whether that is a timeout: the last try failed
  -- too, or the object has no usable descriptor ("closed").
  local function wait_again(skt, op, deadline, ready, err, fd)
    if not ready then return nil, timeout_error(err), true end
    if err == "wantwrite" then op = OP_WRITE elseif err == "wantread" then op = OP_READ end
    fd = fd or watch(skt)
    if fd == nil then return nil, "closed", false end
    return yield(TOKEN, op, fd, deadline) == 1
  end


  -----------------------------------------------------------------------------
  -- Receiving and sending
  -----------------------------------------------------------------------------

  -- Collects received pieces so that a long "*a" or "*l" costs linear time: each retry asks for
  -- the rest only, and the pieces are joined once (upstream re-copies everything per retry).
  local function join(pieces, n)
    if n <= 1 then return pieces[1] end
    return concat(pieces, "", 1, n)
  end

  local function receive_waiting(skt, pattern, err, part)
    local count = tonumber(pattern)
    local pieces, n = { part }, part ~= nil and 1 or 0
    local got = type(part) == "string" and #part or 0
    local deadline = deadline_for(read_timeouts[skt])
    local ready, failed, data = true
    while true do
      ready, failed = wait_again(skt, OP_READ, deadline, ready, err)
      if failed then return nil, failed, join(pieces, n) end
      data, err, part = skt:receive(count and count - got or pattern)
      spend(err)
      if data then
        n = n + 1
        pieces[n] = data
        return join(pieces, n), nil, nil
      end
      if type(part) == "string" and part ~= "" then
        n = n + 1
        pieces[n] = part
        got = got + #part
      end
      if not RETRY[err] then return nil, err, join(pieces, n) end
    end
  end

  -- Plain LuaSocket TCP connections are read and written by the core on the descriptor, with
  -- copas's own buffer (src/luasocket.rs): no failed recv before a wait, no per-call clock reads.
  -- A connection is taken over only while LuaSocket's own buffer is empty, so no data is
  -- reordered; other objects (LuaSec, proxies, UDP) go through their own methods.
  local adopted = setmetatable({}, { __mode = "k" })   -- connection -> its descriptor
  -- LuaSocket TCP connections, as the core recognises them: by their class's metatable and
  -- size, never by tostring (the core reads the descriptor out of the object). Only true is
  -- kept: a socket becomes a connection when it connects.
  local clients = setmetatable({}, { __mode = "k" })

  local function is_client(skt)
    if clients[skt] then return true end
    if type(skt) ~= "userdata" or not sched.is_tcp_client(skt) then return false end
    clients[skt] = true
    return true
  end

  local function adopt(skt)
    if not is_client(skt) or skt:dirty() then return nil end
    local fd = current_fd(skt)
    if fd == nil or not sched.read_directly(skt, fd) then return nil end
    adopted[skt], watched_fd[skt], fd_socket[fd] = fd, fd, skt
    return fd
  end

  -- The core's code for a receive pattern (and prefix); nil for what only LuaSocket knows how
  -- to refuse.
  local function mode_of(pattern, prefix)
    if prefix ~= nil and type(prefix) ~= "string" then return nil end
    if pattern == "*l" then return MODE_LINE end
    if pattern == "*a" then return MODE_ALL end
    if type(pattern) == "number" and pattern >= 0 then return 0 end
    return nil
  end

  -- The rest of a receive on an adopted connection after the first try said "timeout".
  -- The rest of a receive on a connection the core reads, after the first try said "timeout":
  -- one yield, and the core resumes this thread once the receive is complete (or its deadline
  -- passed), with LuaSocket's results less the prefix. Woken with a number instead (the socket
  -- was closed meanwhile), it tries once more itself.
  local function receive_adopted(skt, fd, mode, pattern, prefix)
    local deadline = deadline_for(read_timeouts[skt])
    local wanted = mode == MODE_LINE and PATTERN_LINE or mode == MODE_ALL and PATTERN_ALL or pattern
    local have = type(prefix) == "string" and #prefix or 0
    local data, err, part = yield(TOKEN, OP_RECEIVE, fd, deadline, wanted, have, skt)
    if type(data) == "number" then
      data, err, part = sched_recv(skt, mode, pattern, prefix, data == 0)
      spend(err)
      if data or err ~= "timeout" then return data, err, part end
      return nil, timeout_error(err), part
    end
    if have > 0 then
      if data then return prefix .. data end
      part = prefix .. part
    end
    if data then return data end
    if err == "timeout" then err = timeout_error(err) end
    return nil, err, part
  end

  function copas.receive(skt, pattern, prefix)
    -- the first lines are the hot path of every server: a connection copas reads itself
    local fd = adopted[skt]
    if fd == nil then
      check_socket(skt, 1, "receive")
      skt = unwrap(skt)
      fd = adopted[skt] or adopt(skt)
    end
    pattern = pattern or "*l"
    local mode = fd and mode_of(pattern, prefix)
    if mode then
      local data, err, part = sched_recv(skt, mode, pattern, prefix, false)
      if data or err ~= "timeout" then
        io_budget = io_budget - 1
        if io_budget <= 0 then budget_spent() end
        return data, err, part
      end
      return receive_adopted(skt, fd, mode, pattern, prefix)
    end
    local data, err, part = skt:receive(pattern, prefix)
    spend(err)
    if data or not RETRY[err] then return data, err, part end
    return receive_waiting(skt, pattern, err, part)
  end

  -- Like receive, but returns as soon as any new data arrived (with the socket's own error).
  function copas.receivepartial(skt, pattern, prefix)
    check_socket(skt, 1, "receivepartial")
    skt = unwrap(skt)
    pattern = pattern or "*l"
    local mode = (adopted[skt] or adopt(skt)) and mode_of(pattern, prefix)
    local known = type(prefix) == "string" and #prefix or 0
    local deadline, ready, failed
    while true do
      local data, err, part
      if mode then
        data, err, part = sched_recv(skt, mode, pattern, prefix, true)
      else
        data, err, part = skt:receive(pattern, prefix)
      end
      spend(err)
      if data or not RETRY[err] then return data, err, part end
      if type(part) == "string" and #part > known then
        spend()  -- it returns without waiting after all
        return data, err, part
      end
      -- the deadline is armed at the first wait: a call that never waits reads no clock
      if ready == nil then deadline, ready = deadline_for(read_timeouts[skt]), true end
      ready, failed = wait_again(skt, OP_READ, deadline, ready, err)
      if failed then return nil, failed, part end
    end
  end
  copas.receivePartial = copas.receivepartial

  function copas.receivefrom(skt, size)
    check_socket(skt, 1, "receivefrom")
    skt = unwrap(skt)
    size = size or UDP_DATAGRAM_MAX
    local deadline, ready, failed
    while true do
      local data, err, port = skt:receivefrom(size)
      spend(err)
      if data or err ~= "timeout" then return data, err, port end
      if ready == nil then deadline, ready = deadline_for(read_timeouts[skt]), true end
      ready, failed = wait_again(skt, OP_READ, deadline, ready, err)
      if failed then return nil, failed, nil end
    end
  end

  local function is_index(i)
    return i == nil or type(i) == "number"
  end

  -- The rest of a send on a LuaSocket connection after the first try said "timeout", from
  -- byte `sent + 1` on: one yield, and the core resumes this thread once all of it went out
  -- (`true, last`), or an error, a close or the deadline stopped it (`false, err, last`).
  local function send_directly(skt, data, sent, j, deadline)
    local fd = watch(skt)
    if fd == nil then return nil, "closed", sent end
    local sent_all, result, last = yield(TOKEN, OP_SEND, fd, deadline, sent + 1, j, skt, data)
    if sent_all then return result end
    if result == "timeout" then result = timeout_error(result) end
    return nil, result, last
  end

  function copas.send(skt, data, i, j)
    check_socket(skt, 1, "send")
    skt = unwrap(skt)
    local direct = is_client(skt) and type(data) == "string" and is_index(i) and is_index(j)
    local send = direct and sched_send or skt.send
    local last, err, sent = send(skt, data, i or 1, j)
    spend(err)
    if last or not RETRY[err] then return last, err, sent end
    local deadline = deadline_for(send_timeouts[skt])
    if direct then return send_directly(skt, data, sent, j, deadline) end
    local ready, failed = true
    while true do
      ready, failed = wait_again(skt, OP_WRITE, deadline, ready, err)
      if failed then return nil, failed, sent end
      local start = (sent or (i or 1) - 1) + 1
      last, err, sent = send(skt, data, start, j)
      spend(err)
      if last or not RETRY[err] then return last, err, sent end
    end
  end

  function copas.flush()
  end


  -----------------------------------------------------------------------------
  -- Connecting, and UDP's addresses
  -----------------------------------------------------------------------------

  local dns = require("copas.dns")(core, sched)
  local addresses, address_for, address_of = dns.addresses, dns.address_for, dns.address_of

  -- Tries one address until connected, failed or out of time (the third result tells).
  local function connect_to(skt, host, port, deadline)
    local tries, ready, failed, timed_out = 0, true
    while true do
      local ok, err = skt:connect(host, port)
      tries = tries + 1
      if ok or (err ~= "timeout" and err ~= "Operation already in progress") then
        if err == "already connected" and tries > 1 then return 1 end   -- an async connect done
        return ok, err
      end
      -- LuaSocket makes the descriptor on the first connect (of the address's family).
      if watched_fd[skt] ~= current_fd(skt) then watched_fd[skt] = nil end
      ready, failed, timed_out = wait_again(skt, OP_WRITE, deadline, ready, err)
      if failed then return nil, failed, timed_out end
    end
  end

  function copas.connect(skt, host, port)
    check_socket(skt, 1, "connect")
    skt = unwrap(skt)
    skt:settimeout(0)
    local deadline = deadline_for(connect_timeouts[skt])
    local list, err = addresses(host, deadline)
    if not list then return nil, err end
    local ok, timed_out
    for i = 1, #list do
      ok, err, timed_out = connect_to(skt, address_for(skt, list[i], i), port, deadline)
      if ok or timed_out or err == "already connected" then break end
    end
    return ok, err
  end

  function copas.sendto(skt, data, ip, port)
    check_socket(skt, 1, "sendto")
    skt = unwrap(skt)
    local address, err = address_of(skt, ip)
    if address == nil and err then return nil, err end
    return skt:sendto(data, address, port)
  end

  -- The UDP wrapper's setpeername (copas has no function of that name).
  local function setpeername(skt, host, ...)
    local address, err = address_of(skt, host)
    if address == nil and err then return nil, err end
    return skt:setpeername(address, ...)
  end


  -----------------------------------------------------------------------------
  -- Closing
  -----------------------------------------------------------------------------

  -- Every thread waiting on the socket wakes and sees "closed"; the descriptor leaves epoll
  -- first.
  local function forget_socket(skt)
    local fd = watched_fd[skt] or current_fd(skt)
    watched_fd[skt], adopted[skt] = nil, nil
    if fd then sched.close_fd(fd) end
  end

  function copas.close(skt, ...)
    check_socket(skt, 1, "close")
    if not is_wrapper(skt) then forget_socket(skt) end
    return skt:close(...)
  end


  -- Upstream's tests/tcptimeout.lua checks, with _TEST set, that a thread that timed out on a
  -- socket is not kept in upstream's per-thread socket registers. Here a thread's socket state
  -- is its wait in the core; these views show a thread for as long as it waits on a socket.
  if _G._TEST then
    local waiting_view = setmetatable({}, {
      __index = function(_, co)
        local id = task_ids[co]
        if id and sched.io_waiting(id) then return true end
        return nil
      end,
    })
    copas._socket_register = waiting_view
    copas._operation_register = waiting_view
    copas._timeout_flags = waiting_view
  end


  shared.UDP_DATAGRAM_MAX = UDP_DATAGRAM_MAX
  shared.check_socket, shared.is_wrapper, shared.unwrap = check_socket, is_wrapper, unwrap
  shared.is_tcp = is_tcp
  shared.tcp_mt, shared.udp_mt = tcp_mt, udp_mt
  shared.connect_timeouts, shared.send_timeouts, shared.read_timeouts =
    connect_timeouts, send_timeouts, read_timeouts
  shared.deadline_for, shared.wait_again = deadline_for, wait_again
  shared.watched_fd, shared.fd_socket, shared.current_fd = watched_fd, fd_socket, current_fd
  shared.forget_socket, shared.setpeername = forget_socket, setpeername
end
