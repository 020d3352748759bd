-- copas-rs, private: TLS through LuaSec, as upstream Copas 4.11 does it
-- (../shared/docs/copas-behaviour.md §8; beside this repository): the sslparams of copas.wrap
-- and copas.handler, the wrapping of a socket by `ssl.wrap` and copas.dohandshake. LuaSec is
-- required only when a socket is wrapped.
--
-- Loaded by copas.lua after copas/socket.lua and copas/server.lua, once per load of copas:
-- `require("copas.tls")(copas, shared)` adds copas.dohandshake and, for copas/wrap.lua,
-- `normalize_sslt` and `ssl_wrap` to `shared`.

return function(copas, shared)
  local names = shared.names
  local check_socket, unwrap = shared.check_socket, shared.unwrap
  local connect_timeouts, send_timeouts, read_timeouts =
    shared.connect_timeouts, shared.send_timeouts, shared.read_timeouts
  local watched_fd, autoclose_moved = shared.watched_fd, shared.autoclose_moved
  local deadline_for, wait_again = shared.deadline_for, shared.wait_again
  local OP_READ = shared.core.OP_READ
  local type, tostring, error, assert, setmetatable = type, tostring, error, assert, setmetatable

  local ssl_params_mt = {
    __index = function(_, key)
      error("accessing unknown 'ssl_params' table key: " .. tostring(key), 2)
    end,
  }

  -- The wrapper's `ssl_params`: `wrap` (LuaSec parameters or context) and `sni`, false if none.
  local function normalize_sslt(sslt)
    local t = type(sslt)
    local r = setmetatable({ wrap = false, sni = false }, ssl_params_mt)
    if sslt == nil then
      return r
    elseif t == "table" then
      if sslt.mode or sslt.protocol then
        r.wrap = sslt
      else
        r.wrap = sslt.wrap or false
        r.sni = sslt.sni or false
      end
    elseif t == "userdata" then
      r.wrap = sslt
    else
      error("ssl parameters; did not expect type " .. tostring(sslt), 3)
    end
    return r
  end

  -- The TLS socket over `skt`; it inherits the socket's timeouts, name and autoclose.
  local function ssl_wrap(skt, params)
    if tostring(skt):sub(1, 3) == "SSL" then return skt end
    if not params then
      error("cannot wrap socket into a secure socket (using 'ssl.wrap()') without "
        .. "parameters/context", 3)
    end
    local ssl = require("ssl")
    local nskt = assert(ssl.wrap(skt, params))
    nskt:settimeout(0)
    connect_timeouts[nskt], send_timeouts[nskt], read_timeouts[nskt] =
      connect_timeouts[skt], send_timeouts[skt], read_timeouts[skt]
    autoclose_moved(skt, nskt)
    local name = names[skt]
    if name ~= nil and name ~= tostring(skt) then names[nskt] = name end
    -- LuaSec took over the descriptor: the raw object must not answer for it any more.
    watched_fd[skt] = nil
    return nskt
  end

  function copas.dohandshake(skt, wrap_params)
    check_socket(skt, 1, "dohandshake")
    skt = unwrap(skt)
    local nskt = ssl_wrap(skt, wrap_params)
    local deadline = deadline_for(connect_timeouts[nskt])
    local ready, failed, timed_out = true
    while true do
      local ok, err = nskt:dohandshake()
      if ok then return nskt end
      if err ~= "wantread" and err ~= "wantwrite" then
        error("TLS/SSL handshake failed: " .. tostring(err), 2)
      end
      ready, failed, timed_out = wait_again(nskt, OP_READ, deadline, ready, err)
      if failed then
        if timed_out then return nil, failed end
        error("TLS/SSL handshake failed: " .. failed, 2)
      end
    end
  end

  shared.normalize_sslt, shared.ssl_wrap = normalize_sslt, ssl_wrap
end
