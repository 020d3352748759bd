-- copas-rs, private: the socket wrapper, copas.wrap: `{socket = skt, ssl_params = ...}` with
-- upstream Copas 4.11's TCP and UDP method sets (../shared/docs/copas-behaviour.md §2.10;
-- beside this repository). Its I/O methods call the low-level functions through the `copas`
-- table, as upstream's do, so a program that replaces copas.receive also changes them.
--
-- Loaded by copas.lua last of the socket modules, once per load of copas:
-- `require("copas.wrap")(copas, shared)` gives the metatables made by copas/socket.lua their
-- methods and adds copas.wrap.

return function(copas, shared)
  local tcp_mt, udp_mt = shared.tcp_mt, shared.udp_mt
  local check_socket, is_wrapper, is_tcp = shared.check_socket, shared.is_wrapper, shared.is_tcp
  local read_timeouts, setpeername = shared.read_timeouts, shared.setpeername
  local normalize_sslt, ssl_wrap = shared.normalize_sslt, shared.ssl_wrap
  local UDP_DATAGRAM_MAX = shared.UDP_DATAGRAM_MAX
  local pcall, pairs, tostring, setmetatable = pcall, pairs, tostring, setmetatable

  -- A method of the inner socket under pcall: at most `n` results, or nil and `fallback` when
  -- it fails (LuaSec objects lack some of LuaSocket's methods).
  local function protected(name, n, fallback)
    return function(self, ...)
      local inner = self.socket
      local ok, a, b, c = pcall(inner[name], inner, ...)
      if not ok then return nil, fallback end
      if n == 2 then return a, b end
      return a, b, c
    end
  end

  local function forwarded(name)
    return function(self, ...)
      local inner = self.socket
      return inner[name](inner, ...)
    end
  end

  local tcp_methods = {
    send = function(self, data, i, j) return copas.send(self.socket, data, i, j) end,
    receive = function(self, pattern, prefix)
      if read_timeouts[self.socket] == 0 then
        return copas.receivepartial(self.socket, pattern, prefix)
      end
      return copas.receive(self.socket, pattern, prefix)
    end,
    receivepartial = function(self, pattern, prefix)
      return copas.receivepartial(self.socket, pattern, prefix)
    end,
    flush = function(self) copas.flush(self.socket) end,
    settimeout = function(self, t) return copas.settimeout(self.socket, t) end,
    settimeouts = function(self, c, s, r) return copas.settimeouts(self.socket, c, s, r) end,
    connect = function(self, ...)
      local res, err = copas.connect(self.socket, ...)
      if res then
        if self.ssl_params.sni then self:sni() end
        if self.ssl_params.wrap then res, err = self:dohandshake() end
      end
      return res, err
    end,
    close = function(self, ...) return copas.close(self.socket, ...) end,
    bind = forwarded("bind"),
    listen = forwarded("listen"),
    accept = forwarded("accept"),
    shutdown = forwarded("shutdown"),
    getstats = forwarded("getstats"),
    setstats = forwarded("setstats"),
    getsockname = protected("getsockname", 3, "not implemented by LuaSec"),
    getpeername = protected("getpeername", 3, "not implemented by LuaSec"),
    setoption = protected("setoption", 2, "not implemented by LuaSec"),
    getoption = protected("getoption", 2, "not implemented by LuaSec"),
    getalpn = protected("getalpn", 2, "not a tls socket"),
    getsniname = protected("getsniname", 2, "not a tls socket"),
    sni = function(self, names_, strict)
      local sslp = self.ssl_params
      self.socket = ssl_wrap(self.socket, sslp.wrap)
      if names_ == nil then
        names_ = sslp.sni.names
        strict = sslp.sni.strict
      end
      return self.socket:sni(names_, strict)
    end,
    dohandshake = function(self, wrap_params)
      local nskt, err = copas.dohandshake(self.socket, wrap_params or self.ssl_params.wrap)
      if not nskt then return nskt, err end
      self.socket = nskt
      return self
    end,
  }

  local function wrapped_tostring(self)
    return tostring(self.socket) .. " (copas wrapped)"
  end

  tcp_mt.__index, tcp_mt.__tostring = tcp_methods, wrapped_tostring

  local udp_methods = {}
  for k, v in pairs(tcp_methods) do udp_methods[k] = v end
  udp_methods.send = function(self, ...) return self.socket:send(...) end
  udp_methods.sendto = function(self, data, ip, port)
    return copas.sendto(self.socket, data, ip, port)
  end
  udp_methods.receive = function(self, size)
    return copas.receive(self.socket, size or UDP_DATAGRAM_MAX)
  end
  udp_methods.receivefrom = function(self, size)
    return copas.receivefrom(self.socket, size or UDP_DATAGRAM_MAX)
  end
  udp_methods.setpeername = function(self, ...) return setpeername(self.socket, ...) end
  udp_methods.setsockname = forwarded("setsockname")
  -- A UDP server's "client" is the server socket itself: closing it here would end the server.
  udp_methods.close = function() return true end

  udp_mt.__index, udp_mt.__tostring = udp_methods, wrapped_tostring

  function copas.wrap(skt, sslt)
    check_socket(skt, 1, "wrap")
    if is_wrapper(skt) then return skt end
    skt:settimeout(0)
    if is_tcp(skt) then
      return setmetatable({ socket = skt, ssl_params = normalize_sslt(sslt) }, tcp_mt)
    end
    return setmetatable({ socket = skt }, udp_mt)
  end
end
