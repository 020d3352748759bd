-- copas-rs, private: servers (copas.addserver, removeserver, handler), accepting and the
-- autoclose of accepted connections. The contract is upstream Copas 4.11's
-- (../shared/docs/copas-behaviour.md §4.7; beside this repository); the core watches the
-- servers and calls back here to accept (src/sockets.rs).
--
-- Loaded by copas.lua after copas/socket.lua, once per load of copas:
-- `require("copas.server")(copas, shared)` adds the functions to `copas` and `close_autoclosed`,
-- `autoclose_moved` and `server_at` to `shared`. All state is made by that call.

return function(copas, shared)
  local sched = shared.sched
  local ACCEPTED, NOTHING_TO_ACCEPT, ACCEPT_FAILED =
    shared.core.ACCEPTED, shared.core.NOTHING_TO_ACCEPT, shared.core.ACCEPT_FAILED
  local names, name_of, task_ids = shared.names, shared.name_of, shared.task_ids
  local traced = shared.traced
  local argerror, is_callable = shared.argerror, shared.is_callable
  local check_socket, unwrap, is_tcp = shared.check_socket, shared.unwrap, shared.is_tcp
  local current_fd, watched_fd, fd_socket = shared.current_fd, shared.watched_fd, shared.fd_socket
  local forget_socket = shared.forget_socket
  local connect_timeouts, send_timeouts, read_timeouts =
    shared.connect_timeouts, shared.send_timeouts, shared.read_timeouts
  local type, pcall, setmetatable = type, pcall, setmetatable
  local huge = math.huge

  local servers = setmetatable({}, { __mode = "k" })   -- server socket -> { handler, fd, count }
  local server_at = {}                                  -- fd -> server socket

  local autoclose = setmetatable({}, { __mode = "k" })     -- handler coroutine -> client socket
  local autoclose_of = setmetatable({}, { __mode = "k" })  -- client socket -> handler coroutine

  -- The core calls this for a server whose accept may succeed: ACCEPTED (try again next step),
  -- NOTHING_TO_ACCEPT, or ACCEPT_FAILED (e.g. no descriptors left: retried a bit later).
  local function accept_one(fd)
    local server = server_at[fd]
    local srv = server and servers[server]
    if not srv then return NOTHING_TO_ACCEPT end
    local ok, client, err = pcall(server.accept, server)
    if not (ok and client) then
      return ok and err == "timeout" and NOTHING_TO_ACCEPT or ACCEPT_FAILED
    end
    srv.count = srv.count + 1
    local base = name_of(server)
    names[client] = base .. ":client_" .. srv.count
    client:settimeout(0)
    copas.settimeouts(client, connect_timeouts[server] or huge, send_timeouts[server] or huge,
                      read_timeouts[server] or huge)
    local co = coroutine.create(srv.handler)
    names[co] = base .. ":handler_" .. srv.count
    traced(co)
    local id = sched.attach(co)
    task_ids[co] = id
    if copas.autoclose then
      autoclose[co], autoclose_of[client] = client, co
      sched.watch_exit(id)
    end
    sched.run_now(id, client)
    return ACCEPTED
  end
  sched.set_accept_hook(accept_one)

  -- Only an accepted client is closed when its handler ends (upstream issue #122). Called by
  -- copas.lua's exit hook.
  local function close_autoclosed(co)
    local skt = autoclose[co]
    if skt == nil then return end
    autoclose[co], autoclose_of[skt] = nil, nil
    forget_socket(skt)
    skt:close()
  end

  -- An accepted client was wrapped into a TLS socket (copas/tls.lua): that one is closed now.
  local function autoclose_moved(skt, nskt)
    local co = autoclose_of[skt]
    if co then
      autoclose[co], autoclose_of[nskt], autoclose_of[skt] = nskt, co, nil
    end
  end

  local function as_function(handler)
    if type(handler) == "function" then return handler end
    return function(...) return handler(...) end
  end

  function copas.addserver(server, handler, timeout, name)
    check_socket(server, 1, "addserver")
    if not is_callable(handler) then argerror(2, "addserver", "function", handler) end
    if name ~= nil and type(name) ~= "string" then argerror(4, "addserver", "string", name) end
    server:settimeout(0)
    if name then names[server] = name end
    local fd = current_fd(server)
    if fd == nil then error("bad argument #1 to 'addserver' (socket has no descriptor)", 2) end
    if is_tcp(server) then
      servers[server] = { handler = as_function(handler), fd = fd, count = 0 }
      server_at[fd] = server
      sched.add_server(fd, false)
      watched_fd[server], fd_socket[fd] = fd, server
      -- a non-number timeout is ignored, as upstream
      if timeout then copas.settimeout(server, timeout) end
    else
      local co = coroutine.create(as_function(handler))
      names[co] = name_of(server) .. ":handler"
      sched.add_server(fd, true)
      watched_fd[server], fd_socket[fd] = fd, server
      if timeout then copas.settimeout(server, timeout) end
      local id = sched.attach(co)
      task_ids[co] = id
      sched.run_now(id, server)
    end
  end

  function copas.removeserver(server, keep_open)
    check_socket(server, 1, "removeserver")
    local skt = unwrap(server)
    local srv = servers[skt]
    local fd = srv and srv.fd or watched_fd[skt]
    servers[skt] = nil
    if fd then
      if server_at[fd] == skt then server_at[fd] = nil end
      sched.remove_server(fd)
    end
    if keep_open then return true end
    return server:close()
  end

  function copas.handler(handler, sslparams)
    if not is_callable(handler) then argerror(1, "handler", "function", handler) end
    return function(skt, ...)
      skt = copas.wrap(skt, sslparams)
      local sslp = skt.ssl_params
      if sslp.sni then skt:sni(sslp.sni.names, sslp.sni.strict) end
      if sslp.wrap then
        -- Upstream runs the handler even after a handshake timeout, on a socket that is not TLS.
        if not skt:dohandshake(sslp.wrap) then return end
      end
      return handler(skt, ...)
    end
  end

  shared.close_autoclosed, shared.autoclose_moved, shared.server_at =
    close_autoclosed, autoclose_moved, server_at
end
