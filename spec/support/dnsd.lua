-- A tiny DNS server for the tests (spec/dns_spec.lua), in plain Lua over LuaSocket UDP.
-- Runs on lua5.1 .. lua5.4 and luajit; needs only LuaSocket (Debian's lua-socket).
--
--   lua dnsd.lua [port [lifetime [name=delay[:nx] ...]]]
--
-- Listens on 127.0.0.1:<port> (default 53), prints "ready" on stdout once bound, and exits by
-- itself after <lifetime> seconds (default 30), so it never lingers. It is meant to run inside
-- the private network namespace that spec/support/with_dns.sh sets up; it only ever talks to
-- the loopback address and never forwards anything.
--
-- Answers (class IN, one question; the question section is echoed as received):
--   * a configured name:
--       A     -> 127.0.0.1 (TTL 0), after the name's delay
--       other -> NOERROR, no answer, at once (so AAAA gives "no IPv6 address")
--     or, for a name configured with ":nx", NXDOMAIN to every query type after the delay;
--   * any other name -> NXDOMAIN at once;
--   * a malformed query or one that is not a standard query -> FORMERR / NOTIMP at once.
-- A delayed answer does not hold up others: queries wait in a pending list and the loop
-- (socket.select with the time to the next due answer) sends each one when it falls due.
--
-- Default names (extra name=delay arguments add to / override them):
--   stall.copas.test     A 127.0.0.1 after 2 s
--   fast.copas.test      A 127.0.0.1 at once
--   stall-nx.copas.test  NXDOMAIN after 2 s
-- Set DNSD_LOG=1 to log each query to stderr.
local socket = require("socket")

local port = tonumber(arg[1]) or 53
local lifetime = tonumber(arg[2]) or 30
local names = {
  ["stall.copas.test"] = { delay = 2 },
  ["fast.copas.test"] = { delay = 0 },
  ["stall-nx.copas.test"] = { delay = 2, nx = true },
}
for i = 3, #arg do
  local name, delay, nx = arg[i]:match("^([^=]+)=([%d.]+)(.*)$")
  if not name or (nx ~= "" and nx ~= ":nx") then
    io.stderr:write("dnsd: bad argument '", arg[i], "' (want name=delay or name=delay:nx)\n")
    os.exit(2)
  end
  names[name:lower()] = { delay = tonumber(delay), nx = (nx == ":nx") }
end

local log = os.getenv("DNSD_LOG") and os.getenv("DNSD_LOG") ~= "" and os.getenv("DNSD_LOG") ~= "0"
local function logf(...)
  if log then io.stderr:write(string.format("dnsd %.3f: ", socket.gettime()), string.format(...), "\n") end
end

local QTYPE_A, CLASS_IN = 1, 1
local RCODE_NOERROR, RCODE_FORMERR, RCODE_NXDOMAIN, RCODE_NOTIMP = 0, 1, 3, 4

local function u16(s, i) -- big-endian 16-bit at byte i
  local a, b = s:byte(i, i + 1)
  if not b then return nil end
  return a * 256 + b
end

local function be16(n) return string.char(math.floor(n / 256) % 256, n % 256) end

-- Parses the question of a query. Returns a table {id, flags, name, qtype, qclass, question}
-- (question: the raw bytes of the question section), or nil and an rcode (with the id when
-- there is one).
local function parse(q)
  if #q < 12 then return nil, nil end
  local id, flags, qdcount = u16(q, 1), u16(q, 3), u16(q, 5)
  if math.floor(flags / 32768) == 1 then return nil, nil end -- a response: ignore
  local opcode = math.floor(flags / 2048) % 16
  if opcode ~= 0 then return nil, RCODE_NOTIMP, id, flags end
  if qdcount ~= 1 then return nil, RCODE_FORMERR, id, flags end
  local pos, labels = 13, {}
  while true do
    local len = q:byte(pos)
    if not len or len >= 64 then return nil, RCODE_FORMERR, id, flags end -- no compression in queries
    pos = pos + 1
    if len == 0 then break end
    if pos + len - 1 > #q then return nil, RCODE_FORMERR, id, flags end
    labels[#labels + 1] = q:sub(pos, pos + len - 1)
    pos = pos + len
  end
  local qtype, qclass = u16(q, pos), u16(q, pos + 2)
  if not qclass then return nil, RCODE_FORMERR, id, flags end
  return {
    id = id,
    flags = flags,
    name = table.concat(labels, "."):lower(),
    qtype = qtype,
    qclass = qclass,
    question = q:sub(13, pos + 3),
  }
end

-- Builds a response: header (QR, opcode 0, AA, RD copied, RA, rcode), the question echoed,
-- and the answer records given (already encoded).
local function response(id, qflags, rcode, question, answers)
  local rd = math.floor(qflags / 256) % 2
  local flags = 32768 + 1024 + rd * 256 + 128 + rcode
  local qd = question and 1 or 0
  return be16(id) .. be16(flags) .. be16(qd) .. be16(#answers) .. be16(0) .. be16(0)
    .. (question or "") .. table.concat(answers)
end

local function answer_for(query)
  local entry = names[query.name]
  if query.qclass ~= CLASS_IN or not entry then
    return 0, response(query.id, query.flags, RCODE_NXDOMAIN, query.question, {}), "NXDOMAIN"
  end
  if entry.nx then
    return entry.delay, response(query.id, query.flags, RCODE_NXDOMAIN, query.question, {}), "NXDOMAIN"
  end
  if query.qtype ~= QTYPE_A then
    return 0, response(query.id, query.flags, RCODE_NOERROR, query.question, {}), "NOERROR, no answer"
  end
  -- name: pointer to the question's name (offset 12); type A, class IN, TTL 0, 4 bytes
  local a = "\192\12" .. be16(QTYPE_A) .. be16(CLASS_IN) .. "\0\0\0\0" .. be16(4) .. "\127\0\0\1"
  return entry.delay, response(query.id, query.flags, RCODE_NOERROR, query.question, { a }), "127.0.0.1"
end

local udp = assert(socket.udp())
local ok, err = udp:setsockname("127.0.0.1", port)
if not ok then
  io.stderr:write("dnsd: cannot bind 127.0.0.1:", tostring(port), ": ", tostring(err), "\n")
  os.exit(1)
end
udp:settimeout(0)
io.stdout:write("ready\n")
io.stdout:flush()

local deadline = socket.gettime() + lifetime
local pending = {} -- { due = time, data = packet, ip = ..., port = ... }, in arrival order

while true do
  local now = socket.gettime()
  if now >= deadline then break end
  -- send whatever fell due
  local i = 1
  while i <= #pending do
    local p = pending[i]
    if p.due <= now then
      udp:sendto(p.data, p.ip, p.port)
      logf("sent %s", p.what)
      table.remove(pending, i)
    else
      i = i + 1
    end
  end
  local wake = deadline
  for _, p in ipairs(pending) do
    if p.due < wake then wake = p.due end
  end
  socket.select({ udp }, nil, math.max(0, wake - now))
  -- read every query waiting
  while true do
    local data, ip, rport = udp:receivefrom()
    if not data then break end
    local query, rcode, id, qflags = parse(data)
    local delay, packet, what = 0, nil, nil
    if query then
      delay, packet, what = answer_for(query)
      what = string.format("%s type %d -> %s", query.name, query.qtype, what)
    elseif rcode then
      packet, what = response(id, qflags, rcode, nil, {}), "malformed query -> rcode " .. rcode
    end
    if packet then
      logf("query from %s:%s: %s (in %g s)", ip, tostring(rport), what, delay)
      pending[#pending + 1] = { due = socket.gettime() + delay, data = packet, ip = ip, port = rport, what = what }
    end
  end
end
udp:close()
