-- Writes one fuzz program to stdout: `count` calls of the public copas API with hostile
-- arguments, the same for the same seed and chunk.
--
--   lua fuzz/gen.lua <seed> <chunk> <count> [upto <k> | only <k> | last <n> <k>]
--
-- Call numbers run from chunk*count+1. `upto k` keeps calls up to k, `only k` just call k,
-- `last n k` calls k-n+1..k: the shorter programs a reproducer is cut down to.
-- The targets are read from the copas in LUA_PATH, so a new function is fuzzed as it appears.
local copas = require("copas")
local socket = require("socket")

local seed, chunk, count = tonumber(arg[1]), tonumber(arg[2]), tonumber(arg[3])
local mode, a, b = arg[4], tonumber(arg[5]), tonumber(arg[6])
assert(seed and chunk and count,
  "usage: gen.lua <seed> <chunk> <count> [upto k | only k | last n k]")
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "fuzz"
if here:sub(1, 1) ~= "/" then here = os.getenv("PWD") .. "/" .. here end

-- Park-Miller: exact in doubles, so every runtime draws the same numbers.
local state = (seed * 7919 + chunk * 104729 + 1) % 2147483647
if state == 0 then state = 1 end
local function rand(n)   -- 1..n
  state = state * 48271 % 2147483647
  return state % n + 1
end
local function pick(list) return list[rand(#list)] end
for _ = 1, 10 do rand(2) end

local function sorted_functions(t)
  local names = {}
  for k, v in pairs(t) do
    if type(k) == "string" and type(v) == "function" then names[#names + 1] = k end
  end
  table.sort(names)
  return names
end

-- Argument values, by the name env.lua gives them.
local VALUES = { "nil", "(coroutine.running())" }
do
  local names = { "zero", "one", "negone", "half", "ms", "three", "port_max", "nan", "inf",
    "neginf", "big", "negbig", "e308", "negzero", "minint", "maxint", "t", "f", "empty", "ip",
    "ip6", "localhost", "bin", "mib", "line", "all", "star", "text", "fn", "fn_err",
    "fn_errtbl", "fn_echo", "fn_yield", "fn_pause", "fn_forever", "callable", "tbl", "evil",
    "opts", "sslparams", "stdout", "dead_co", "new_co", "yielded_co", "server", "client", "peer",
    "udp", "closed", "master", "fake", "spoof", "port" }
  if newproxy then names[#names + 1] = "proxy" end
  for _, n in ipairs(names) do VALUES[#VALUES + 1] = "V." .. n end
end
local SLOTS = { "lock", "sem", "queue", "timer", "future", "wtcp", "wpeer", "wudp", "wclosed",
  "wfake", "handler", "thread" }
for _, s in ipairs(SLOTS) do VALUES[#VALUES + 1] = "O." .. s end

-- Argument kinds: a call draws an argument of the kind its signature asks for 60% of the time,
-- anything otherwise. A host name always comes from HOSTS: values that never reach a DNS
-- resolver ("localhost" is in /etc/hosts; the binary strings start with a NUL, so C sees "").
local KINDS = {
  host = { "nil", "V.empty", "V.ip", "V.ip6", "V.localhost", "V.bin", "V.mib", "V.zero", "V.one",
    "V.tbl", "V.evil", "V.t", "V.fn" },
  sock = { "V.server", "V.client", "V.peer", "V.udp", "V.closed", "V.master", "V.fake",
    "V.spoof", "V.stdout", "O.wtcp", "O.wpeer", "O.wudp", "O.wclosed", "O.wfake" },
  fn = { "V.fn", "V.fn_err", "V.fn_errtbl", "V.fn_echo", "V.fn_yield", "V.fn_pause",
    "V.fn_forever", "V.callable", "O.handler", "V.evil" },
  num = { "V.zero", "V.one", "V.negone", "V.half", "V.ms", "V.three", "V.port_max", "V.nan",
    "V.inf", "V.neginf", "V.big", "V.negbig", "V.e308", "V.negzero", "V.minint", "V.maxint" },
  str = { "V.empty", "V.bin", "V.mib", "V.line", "V.all", "V.star", "V.text", "V.ip" },
  pat = { "V.line", "V.all", "V.star", "V.text", "V.mib", "V.one", "V.three", "V.zero",
    "V.negone", "V.nan", "V.inf", "V.big" },
  port = { "V.port", "V.port", "V.zero", "V.port_max", "V.negone", "V.nan", "V.inf", "V.big" },
  co = { "O.thread", "V.dead_co", "V.new_co", "V.yielded_co", "(coroutine.running())" },
  tbl = { "V.tbl", "V.opts", "V.sslparams", "V.evil", "V.callable" },
  any = VALUES,
}
if newproxy then table.insert(KINDS.sock, "V.proxy") end
-- What a method gets as self when not its own object.
local WRONG_SELF = { "nil", "V.tbl", "V.evil", "V.one", "V.fn", "V.client", "V.fake", "V.spoof",
  "O.lock", "O.sem", "O.queue", "O.timer", "O.future", "O.wtcp", "O.wudp" }

-- Signatures: the kind of each argument (a method's self not counted). Unknown: none.
local SIG = {
  copas = { "fn", "num" }, addnamedthread = { "str", "fn", "any", "any" },
  addserver = { "sock", "fn", "num", "str" }, addthread = { "fn", "any", "any" },
  close = { "sock" }, connect = { "sock", "host", "port" }, dohandshake = { "sock", "tbl" },
  pause = { "num" }, geterrorhandler = { "co" }, getsocketname = { "sock" },
  getthreadname = { "co" }, gettraceback = { "str", "co", "sock" }, handler = { "fn", "tbl" },
  loop = { "fn", "num" }, receive = { "sock", "pat", "str" },
  receivePartial = { "sock", "pat", "str" }, receivepartial = { "sock", "pat", "str" },
  receivefrom = { "sock", "num" }, removeserver = { "sock", "any" }, removethread = { "co" },
  send = { "sock", "str", "num", "num" }, sendto = { "sock", "str", "host", "port" },
  setErrorHandler = { "fn", "any" }, seterrorhandler = { "fn", "any" },
  setsocketname = { "str", "sock" }, setthreadname = { "str", "co" },
  settimeout = { "sock", "num" }, settimeouts = { "sock", "num", "num", "num" },
  sleep = { "num" }, status = { "any" }, step = { "num" }, timeout = { "num", "fn" },
  useSocketTimeoutErrors = { "any" }, usesockettimeouterrors = { "any" }, wakeup = { "co" },
  wrap = { "sock", "tbl" }, ["debug.start"] = { "fn", "any" }, ["debug.socket"] = { "sock" },
  ["lock.new"] = { "num", "any" }, ["lock.get"] = { "num" },
  ["semaphore.new"] = { "num", "num", "num" }, ["semaphore.give"] = { "num" },
  ["semaphore.take"] = { "num", "num" }, ["queue.new"] = { "tbl" }, ["queue.push"] = { "any" },
  ["queue.pop"] = { "num" }, ["queue.finish"] = { "num", "any" },
  ["queue.add_worker"] = { "fn" }, ["timer.new"] = { "tbl" }, ["timer.arm"] = { "num" },
  ["future.addthread"] = { "fn", "any" }, ["future.addnamedthread"] = { "str", "fn", "any" },
  ["tcp.send"] = { "str", "num", "num" }, ["tcp.receive"] = { "pat", "str" },
  ["tcp.receivepartial"] = { "pat", "str" }, ["tcp.settimeout"] = { "num" },
  ["tcp.settimeouts"] = { "num", "num", "num" }, ["tcp.connect"] = { "host", "port" },
  ["tcp.bind"] = { "host", "port" }, ["tcp.listen"] = { "num" }, ["tcp.shutdown"] = { "str" },
  ["tcp.setstats"] = { "num", "num", "num" }, ["tcp.setoption"] = { "str", "any" },
  ["tcp.getoption"] = { "str" }, ["tcp.sni"] = { "str", "any" }, ["tcp.dohandshake"] = { "tbl" },
  ["udp.sendto"] = { "str", "host", "port" }, ["udp.receive"] = { "num" },
  ["udp.receivefrom"] = { "num" }, ["udp.setpeername"] = { "host", "port" },
  ["udp.setsockname"] = { "host", "port" }, ["handler()"] = { "sock" },
}
-- A udp wrapper has the tcp methods too.
for k, v in pairs(SIG) do
  local m = k:match("^tcp%.(.*)$")
  if m and not SIG["udp." .. m] then SIG["udp." .. m] = v end
end

-- Targets: name, the function or method, its signature, and where its result goes.
local targets = {}
local function add(t)
  t.sig = SIG[t.key] or {}
  targets[#targets + 1] = t
end

local RESULT_SLOT = { addthread = "thread", addnamedthread = "thread", handler = "handler" }
add({ name = "copas", key = "copas", expr = "copas" })
for _, n in ipairs(sorted_functions(copas)) do
  add({ name = "copas." .. n, key = n, expr = "copas." .. n, slot = RESULT_SLOT[n] })
end
for _, n in ipairs(sorted_functions(copas.debug)) do
  add({ name = "copas.debug." .. n, key = "debug." .. n, expr = "copas.debug." .. n })
end

local MODULES = { lock = "lock", semaphore = "sem", queue = "queue", timer = "timer",
  future = "future" }
local CONSTRUCTORS = { new = true, addthread = true, addnamedthread = true }
for _, m in ipairs({ "future", "lock", "queue", "semaphore", "timer" }) do
  local slot = MODULES[m]
  for _, n in ipairs(sorted_functions(copas[m])) do
    local name = "copas." .. m .. "." .. n
    if CONSTRUCTORS[n] then
      add({ name = name, key = m .. "." .. n, expr = name, slot = slot })
    else
      add({ name = name, key = m .. "." .. n, method = n, self = { "O." .. slot },
            class = name:match("^(.*)%.") })
    end
  end
end

-- The future's methods are not on copas.future; the wrappers' live in their metatables.
for _, n in ipairs({ "get", "try", "cancel" }) do
  add({ name = "future:" .. n, key = "future:" .. n, method = n, self = { "O.future" },
        class = "getmetatable(O.future).__index" })
end
add({ name = "future()", key = "future()", expr = "O.future" })
add({ name = "handler()", key = "handler()", expr = "O.handler" })

local function wrapper_targets(kind, sample, receivers)
  for _, n in ipairs(sorted_functions(getmetatable(sample).__index)) do
    add({ name = kind .. ":" .. n, key = kind .. "." .. n, method = n, self = receivers,
          class = "getmetatable(" .. receivers[1] .. ").__index" })
  end
end
wrapper_targets("tcp", copas.wrap(socket.tcp()), { "O.wtcp", "O.wpeer", "O.wclosed", "O.wfake" })
wrapper_targets("udp", copas.wrap(socket.udp()), { "O.wudp" })

local CONTEXTS = { "main", "main", "main", "main", "main", "main", "main", "main",
  "thread", "thread", "thread", "thread", "thread", "errorhandler", "errorhandler",
  "timeout", "timeout", "timer", "gc", "gc" }

local function args(sig, n)
  local list = {}
  for i = 1, n do
    local kind = sig[i]
    if kind == "host" then
      list[i] = pick(KINDS.host)
    elseif kind and rand(10) <= 6 then
      list[i] = pick(KINDS[kind])
    else
      list[i] = pick(VALUES)
    end
  end
  return table.concat(list, ", ")
end

local function call_source(k)
  local t = pick(targets)
  local ctx = pick(CONTEXTS)
  local n = math.max(0, #t.sig - 2 + rand(4))   -- #sig-1 .. #sig+2
  local call
  if t.method then
    if rand(10) <= 7 then
      call = ("%s:%s(%s)"):format(pick(t.self), t.method, args(t.sig, n))
    else   -- a value of the wrong class (or no object at all) as self
      local rest = args(t.sig, n)
      call = ("%s.%s(%s%s)"):format(t.class, t.method, pick(WRONG_SELF),
                                    rest ~= "" and ", " .. rest or "")
    end
  else
    call = ("%s(%s)"):format(t.expr, args(t.sig, n))
  end
  local slot = t.slot and (", %q"):format(t.slot) or ""
  return ("C(%d, %q, %q, function() return %s end%s)"):format(k, ctx, t.name, call, slot)
end

local first = chunk * count + 1
local last = first + count - 1
local lo, hi = first, last
if mode == "upto" then hi = a elseif mode == "only" then lo, hi = a, a
elseif mode == "last" then lo, hi = math.max(first, b - a + 1), b end

local lines = {
  ("-- copas-rs fuzz program: seed %d, chunk %d, calls %d..%d (%s)"):format(seed, chunk, lo, hi,
    _VERSION .. (jit and " / " .. jit.version or "")),
  ("local F = dofile(%q)"):format(here .. "/env.lua"),
  "local copas, V, O, C = F.copas, F.V, F.O, F.call",
}
for k = first, last do
  local src = call_source(k)   -- drawn for every k, so a cut program keeps the same calls
  if k >= lo and k <= hi then lines[#lines + 1] = src end
end
lines[#lines + 1] = "F.done()"
io.write(table.concat(lines, "\n"), "\n")
