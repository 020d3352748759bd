-- copas-rs micro benchmarks.
--
-- Usage: lua micro.lua CASE [SCALE]
--   CASE  one of C0 C1 C2 F2 C3 C4a C4b C5 (see bench/README.md)
--   SCALE optional multiplier for the work size (default 1; e.g. 0.01 for a smoke test);
--         also read from the environment variable BENCH_SCALE.
--
-- A plain Lua program that uses only the public Copas API, so that it runs unchanged against
-- upstream Copas 4.11 and against copas-rs. Which implementation is loaded is decided only by
-- LUA_PATH / LUA_CPATH (bench/run sets them).
--
-- Every case checks its own result (counts, order, hand-offs) after copas.loop() returns and
-- exits non-zero with "CHECK FAILED" if it is wrong, so a broken implementation cannot look fast.
-- Output (stdout), one line each:
--   IMPL <copas._VERSION> | core=<yes|no> | file=<the copas.lua loaded> | <Lua version>
--   CASE <name> ok proc=<process CPU s> cpu=<case CPU s> wall=<case wall s> <details>

local case = arg[1]
local scale = tonumber(arg[2] or os.getenv("BENCH_SCALE") or "1") or 1

local copas = require("copas")
-- the submodules are loaded up front so that both implementations pay for loading outside the
-- timed part equally (they are tiny either way)
require("copas.semaphore")
require("copas.queue")
require("copas.timer")

---------------------------------------------------------------------------------------------------
-- which implementation is this?
---------------------------------------------------------------------------------------------------

print(dofile((arg[0]:match("^(.*)/") or ".") .. "/impl_line.lua")(copas))

---------------------------------------------------------------------------------------------------
-- helpers
---------------------------------------------------------------------------------------------------
local function n_of(base)
  local n = math.floor(base * scale + 0.5)
  if n < 2 then n = 2 end
  return n
end

local failures = {}
local function check(cond, fmt, ...)
  if not cond then
    failures[#failures + 1] = string.format(fmt, ...)
  end
end

local thread_errors = 0
copas.seterrorhandler(function(err)
  thread_errors = thread_errors + 1
  if thread_errors <= 5 then
    io.stderr:write("thread error: ", tostring(err), "\n")
  end
end, true)

math.randomseed(12345)

local cases = {}

---------------------------------------------------------------------------------------------------
-- C0: baseline. Loads copas and runs a loop with a single trivial thread. Its max RSS is the
-- base that C2's per-thread memory is computed from.
---------------------------------------------------------------------------------------------------
function cases.C0()
  local ran = 0
  copas.addthread(function() ran = ran + 1 end)
  copas.loop()
  check(ran == 1, "thread ran %d times, expected 1", ran)
  return "threads=1"
end

---------------------------------------------------------------------------------------------------
-- C1: two threads ping-ponging with copas.pause(0); N switches in total (N/2 per thread).
-- Checks: every pause returned to the other thread first (strict alternation).
---------------------------------------------------------------------------------------------------
function cases.C1()
  local N = n_of(1000000)
  local per = math.floor(N / 2)
  local done = { 0, 0 }
  local last, alternations = nil, 0
  local function player(id)
    for _ = 1, per do
      if last ~= id then alternations = alternations + 1 end
      last = id
      done[id] = done[id] + 1
      copas.pause(0)
    end
  end
  copas.addthread(player, 1)
  copas.addthread(player, 2)
  copas.loop()
  check(done[1] == per and done[2] == per, "switches %d+%d, expected %d each",
    done[1], done[2], per)
  check(alternations == 2 * per,
    "alternations %d, expected %d (pause(0) must let the other thread run)", alternations, 2 * per)
  return string.format("switches=%d alternations=%d", done[1] + done[2], alternations)
end

---------------------------------------------------------------------------------------------------
-- C2: N threads each copas.pause(math.random()) (0..1 s); all complete.
-- Max RSS of this process (all N threads paused at once) is the memory figure.
---------------------------------------------------------------------------------------------------
function cases.C2()
  local N = n_of(100000)
  local completed, early = 0, 0
  local gettime = copas.gettime
  local function sleeper()
    local d = math.random()
    local t0 = gettime()
    copas.pause(d)
    if gettime() - t0 < d - 0.002 then early = early + 1 end
    completed = completed + 1
  end
  for _ = 1, N do
    copas.addthread(sleeper)
  end
  copas.loop()
  check(completed == N, "completed %d, expected %d", completed, N)
  check(early == 0, "%d threads woke up before their pause ended", early)
  return string.format("threads=%d completed=%d", N, completed)
end

---------------------------------------------------------------------------------------------------
-- F2: C2's floor in this Lua VM: the same N coroutines with the same body, created, resumed
-- once, then resumed again in the order of their deadlines (table.sort of encoded numbers,
-- the cheapest ordering there is), by a plain loop: no scheduler, no timer structure, no
-- sleeping. No Copas can do C2 for less; upstream's C2 divided by this bounds any speed-up.
---------------------------------------------------------------------------------------------------
function cases.F2()
  local N = n_of(100000)
  local completed = 0
  local gettime = copas.gettime
  local function sleeper()
    local d = math.random()
    local t0 = gettime()
    coroutine.yield(d)
    if gettime() - t0 < 0 then completed = -1 end
    completed = completed + 1
  end
  local threads, order = {}, {}
  for i = 1, N do
    local co = coroutine.create(sleeper)
    threads[i] = co
    local _, d = coroutine.resume(co)
    order[i] = math.floor(d * 1e6) * 1e6 + i  -- the deadline in microseconds, then the index
  end
  table.sort(order)
  for k = 1, N do
    local i = order[k] % 1e6
    coroutine.resume(threads[i])
    threads[i] = nil
  end
  check(completed == N, "completed %d, expected %d", completed, N)
  return string.format("coroutines=%d completed=%d", N, completed)
end

---------------------------------------------------------------------------------------------------
-- C3: N semaphore round trips between two threads. The producer gives `ping` and takes `pong`;
-- the consumer takes `ping` and gives `pong`. Each side finds its semaphore empty every time
-- and has to wait for the other, so every give/take is a real hand-off between the threads.
---------------------------------------------------------------------------------------------------
function cases.C3()
  local N = n_of(200000)
  local ping = copas.semaphore.new(1, 0, math.huge)
  local pong = copas.semaphore.new(1, 0, math.huge)
  local given, taken, cons_waits, prod_waits = 0, 0, 0, 0
  copas.addthread(function() -- consumer
    for _ = 1, N do
      if ping:get_count() == 0 then cons_waits = cons_waits + 1 end
      assert(ping:take(1))
      taken = taken + 1
      assert(pong:give(1))
    end
  end)
  copas.addthread(function() -- producer
    for _ = 1, N do
      assert(ping:give(1))
      given = given + 1
      if pong:get_count() == 0 then prod_waits = prod_waits + 1 end
      assert(pong:take(1))
    end
  end)
  copas.loop()
  check(given == N and taken == N, "given %d taken %d, expected %d", given, taken, N)
  check(cons_waits == N and prod_waits == N,
    "waits consumer %d producer %d, expected %d each (not a hand-off)", cons_waits, prod_waits, N)
  check(ping:get_count() == 0 and pong:get_count() == 0, "semaphores not empty at the end")
  return string.format("round_trips=%d waits=%d", taken, cons_waits + prod_waits)
end

---------------------------------------------------------------------------------------------------
-- C4: N items through one copas.queue worker.
--   C4a: the items are pushed in one batch (no yield in between), then queue:finish().
--   C4b: the items are pushed one at a time, with a copas.pause(0) after each push.
-- Checks: every item arrives once, in order; in C4b the worker keeps up (queue never > 1 item).
---------------------------------------------------------------------------------------------------
local function queue_case(one_at_a_time)
  local N = n_of(200000)
  local q = copas.queue.new({ name = "bench" })
  local got, next_expected, out_of_order, max_size = 0, 1, 0, 0
  q:add_worker(function(item)
    if item ~= next_expected then out_of_order = out_of_order + 1 end
    next_expected = item + 1
    got = got + 1
  end)
  local finished
  copas.addthread(function()
    if one_at_a_time then
      for i = 1, N do
        assert(q:push(i))
        local size = q:get_size()
        if size > max_size then max_size = size end
        copas.pause(0)
      end
    else
      for i = 1, N do
        assert(q:push(i))
      end
      max_size = q:get_size()
    end
    finished = q:finish(math.huge)
  end)
  copas.loop()
  check(finished == true, "queue:finish() returned %s", tostring(finished))
  check(got == N, "worker got %d items, expected %d", got, N)
  check(out_of_order == 0, "%d items out of order", out_of_order)
  if one_at_a_time then
    check(max_size <= 1, "queue held %d items; the worker did not keep up", max_size)
  else
    check(max_size == N, "queue held %d items after the batch, expected %d", max_size, N)
  end
  return string.format("items=%d max_queued=%d", got, max_size)
end

function cases.C4a() return queue_case(false) end
function cases.C4b() return queue_case(true) end

---------------------------------------------------------------------------------------------------
-- C5: N one-shot copas.timer objects with delays 0.01 .. 0.5 s; all must fire, once, and not
-- before their delay.
---------------------------------------------------------------------------------------------------
function cases.C5()
  local N = n_of(10000)
  local fired, early, twice = 0, 0, 0
  local gettime = copas.gettime
  local seen = {}
  for i = 1, N do
    local delay = 0.01 + math.random() * 0.49
    local t0 = gettime()
    copas.timer.new({
      delay = delay,
      recurring = false,
      params = i,
      callback = function(_, id)
        if seen[id] then twice = twice + 1 end
        seen[id] = true
        fired = fired + 1
        if gettime() - t0 < delay - 0.002 then early = early + 1 end
      end,
    })
  end
  copas.loop()
  check(fired == N and twice == 0, "fired %d (%d twice), expected %d", fired, twice, N)
  check(early == 0, "%d timers fired before their delay", early)
  return string.format("timers=%d fired=%d", N, fired)
end

---------------------------------------------------------------------------------------------------
local fn = cases[case or ""]
if not fn then
  io.stderr:write("usage: micro.lua C0|C1|C2|F2|C3|C4a|C4b|C5 [scale]\n")
  os.exit(2)
end

local t_wall = copas.gettime()
local t_cpu = os.clock()
local detail = fn()
local cpu = os.clock() - t_cpu
local wall = copas.gettime() - t_wall

check(thread_errors == 0, "%d copas threads raised an error", thread_errors)
if #failures > 0 then
  for _, f in ipairs(failures) do
    io.stderr:write("CHECK FAILED ", case, ": ", f, "\n")
  end
  print(string.format("CASE %s FAILED proc=%.4f cpu=%.4f wall=%.3f %s", case, os.clock(), cpu, wall,
    tostring(detail)))
  os.exit(1)
end
-- proc: CPU time of the whole process so far (os.clock() = clock(), user+sys, fine-grained);
-- cpu: of the case alone (after loading copas); wall: of the case alone
print(string.format("CASE %s ok proc=%.4f cpu=%.4f wall=%.3f %s",
  case, os.clock(), cpu, wall, detail))
os.exit(0)
