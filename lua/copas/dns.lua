-- copas-rs, private: host names looked up off the loop thread, for copas.connect and UDP's
-- sendto/setpeername (copas/socket.lua). The lookups run on a thread each in the core
-- (src/dns.rs); a copas thread waits for one as it waits for a socket.
--
-- `require("copas.dns")(core, sched)` returns the functions; it holds no state of its own.

return function(core, sched)
  local TOKEN, OP_LOOKUP = core.TOKEN, core.OP_LOOKUP
  local yield = coroutine.yield
  local type, pcall = type, pcall

  local function is_ipv4(host)
    return host:match("^%d+%.%d+%.%d+%.%d+$") ~= nil
  end

  local function is_numeric_host(host)
    return is_ipv4(host) or host:find(":", 1, true) ~= nil
  end

  local function in_copas_thread()
    local co, main = coroutine.running()
    return co ~= nil and not main
  end

  -- The addresses of `host`, resolved on another thread while the loop goes on. Outside a copas
  -- thread (nothing could run meanwhile) and for numeric addresses, LuaSocket resolves as usual.
  local function addresses(host, deadline)
    if type(host) ~= "string" or is_numeric_host(host) or host == "*" or not in_copas_thread() then
      return { host }
    end
    local id = sched.resolve(host)
    local ready = yield(TOKEN, OP_LOOKUP, id, deadline) == 1
    local list, err = sched.lookup_result(id)
    if list then return list end
    if not ready then return nil, "timeout" end
    return nil, err
  end

  -- LuaSocket ties a socket to the address family of its first connect. After an IPv6 address
  -- failed, an IPv4 address is reached through the same socket as an IPv4-mapped IPv6 address.
  local function address_for(skt, address, attempt)
    if attempt == 1 or not is_ipv4(address) then return address end
    local ok, family = pcall(skt.getfamily, skt)
    if ok and family == "inet6" and skt:setoption("ipv6-v6only", false) then
      return "::ffff:" .. address
    end
    return address
  end

  -- The first address of `host` in the family of the (UDP) socket, which cannot change it.
  local function address_of(skt, host)
    local list, err = addresses(host, nil)
    if not list then return nil, err end
    local ok, family = pcall(skt.getfamily, skt)
    local v6 = ok and family == "inet6"
    for i = 1, #list do
      local a = list[i]
      if type(a) == "string" and (a:find(":", 1, true) ~= nil) == v6 then return a end
    end
    return list[1]
  end

  return { addresses = addresses, address_for = address_for, address_of = address_of }
end
