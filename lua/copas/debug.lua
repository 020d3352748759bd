-- copas-rs, private: copas.debug, upstream Copas 4.11's debug logging
-- (../shared/docs/copas-behaviour.md §2.9; beside this repository): the logger of what threads
-- do (fed by the core's tracer, src/hooks.rs) and debug.socket, a proxy that prints every call
-- made on a socket.
--
-- Loaded by copas.lua after the socket modules, once per load of copas:
-- `require("copas.debug")(copas, shared)` adds copas.debug.

return function(copas, shared)
  local core, sched = shared.core, shared.sched
  local fd_socket, is_wrapper = shared.fd_socket, shared.is_wrapper
  local check_socket = shared.check_socket
  local OP_PAUSE, OP_FOREVER = core.OP_PAUSE, core.OP_FOREVER
  local OP_READ, OP_RECEIVE = core.OP_READ, core.OP_RECEIVE
  local OP_WRITE, OP_SEND = core.OP_WRITE, core.OP_SEND
  local unpack = table.unpack or unpack
  local type, tostring, select = type, tostring, select
  -- `print` is looked up at each call: programs (and the specs) replace the global one.

  copas.debug = {}

  -- The yielded value as upstream logs it: pause(0) shows 0, not 0.0.
  local function as_logged(seconds)
    if seconds and math.tointeger then return math.tointeger(seconds) or seconds end
    return seconds or 0
  end

  local IO_DIRECTION = {
    [OP_READ] = "READ", [OP_RECEIVE] = "READ", [OP_WRITE] = "WRITE", [OP_SEND] = "WRITE",
  }

  local function trace_line(logger, with_core)
    return function(event, co, op, arg)
      local name = copas.getthreadname(co)
      if name == "copas_core_timer" and not with_core then return end
      if event == "resume" then
        logger("resuming '", name, "'")
      elseif event == "exit" then
        local traced = shared.traced_exits()
        if traced and traced[co] then logger("exiting '", name, "'") end
      elseif op == OP_PAUSE then
        logger("yielding '", name, "' to SLEEP for ", as_logged(arg), " seconds")
      elseif op == OP_FOREVER then
        logger("yielding '", name, "' to SLEEP for ", -1, " seconds")
      elseif IO_DIRECTION[op] then
        local skt = fd_socket[arg]   -- the first argument of an I/O wait is the descriptor
        logger("yielding '", name, "' to ", IO_DIRECTION[op], " on '",
               skt and copas.getsocketname(skt) or tostring(arg), "'")
      end
    end
  end

  function copas.debug.start(logger, core_timer_too)
    shared.set_traced_exits(shared.traced_exits() or setmetatable({}, { __mode = "k" }))
    sched.set_tracer(trace_line(logger or print, core_timer_too))
  end

  function copas.debug.stop()
    shared.set_traced_exits(nil)
    sched.set_tracer(nil)
  end

  -- Names for the arguments and results of the calls debug.socket prints; others are numbered.
  local CALL_LABELS = {
    settimeout_in = { "socket", "seconds", "mode" },
    connect_in = { "socket", "address", "port" },
    connect_out = { "success", "error" },
    send_in = { "socket", "data", "start index", "end index" },
    send_out = { "last index sent", "error", "last index sent on error" },
    receive_in = { "socket", "pattern", "prefix" },
    receive_out = { "received", "error", "partial data" },
    getfd_out = { "fd" },
    close_out = { "success", "error" },
  }

  local function print_call(labels, header, ...)
    print(header)
    local n = select("#", ...)
    labels = labels or {}
    for i = 1, math.max(n, #labels) do
      local v = select(i, ...)
      local label = labels[i] or i
      if type(v) == "string" then
        local shown = v:sub(1, 30)
        if shown ~= v then shown = shown .. "(...truncated)" end
        print(("\t%s: '%s' (string #%d)"):format(label, shown, #v))
      else
        print(("\t%s: '%s' (%s)"):format(label, tostring(v), type(v)))
      end
    end
  end

  local call_count = 0
  local debug_socket_mt = {
    __index = function(self, key)
      local original = self.__original_socket
      local value = original[key]
      if type(value) ~= "function" then return value end
      return function(this, ...)
        call_count = call_count + 1
        local id = call_count
        local target = this == self and original or this
        local k = tostring(key)
        print_call(CALL_LABELS[k .. "_in"], id .. "-calling '" .. k .. "' with; ", target, ...)
        local results = { n = 0 }
        local function keep(...) results = { n = select("#", ...), ... } end
        keep(value(target, ...))
        print_call(CALL_LABELS[k .. "_out"], id .. "-results '" .. k .. "' returned; ",
                   unpack(results, 1, results.n))
        return unpack(results, 1, results.n)
      end
    end,
    __tostring = function(self) return tostring(self.__original_socket) end,
  }

  -- A proxy that prints every call made on the socket (a wrapper gets its inner socket proxied).
  function copas.debug.socket(skt)
    if is_wrapper(skt) then
      skt.socket = copas.debug.socket(skt.socket)
      return skt
    end
    check_socket(skt, 1, "socket")
    return setmetatable({ __original_socket = skt }, debug_socket_mt)
  end
end
