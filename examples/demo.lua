-- examples/demo.lua: a small job-processing service on Copas (run it with `make demo`).
--
-- What happens:
--   * 3 producers submit 36 jobs, at their own pace, into a copas.queue;
--   * 4 queue workers process them; every job needs one of only 2 "database connections",
--     guarded by a copas.semaphore, so at most 2 jobs talk to the database at once;
--   * finished jobs go through a second queue to a collector that keeps the statistics;
--   * a crowd of 300 threads sleeps in short naps meanwhile, and a one-shot copas.timer adds
--     200 late joiners after 0.3 s;
--   * a recurring copas.timer prints a progress line every 0.25 s;
--   * a coordinator waits for the producers, drains both queues with queue:finish(), stops
--     the progress timer, and the loop ends by itself when nothing is left to do.
-- The program checks what it saw at the end and exits with 1 if something was wrong.

local copas = require("copas")

local T0 = copas.gettime()
local function log(fmt, ...)
  print(string.format("%6.3fs  " .. fmt, copas.gettime() - T0, ...))
end

------------------------------------------------------------------------------------------------
-- configuration

local PRODUCERS = { "alpha", "beta", "gamma" }
local JOBS_PER_PRODUCER = 12
local WORKERS = 4
local DB_CONNECTIONS = 2
local CROWD = 300
local LATE_JOINERS = 200
local NAPS = 5

------------------------------------------------------------------------------------------------
-- shared state

local jobs = copas.queue.new({ name = "jobs" })
local results = copas.queue.new({ name = "results" })
local db = copas.semaphore.new(DB_CONNECTIONS, DB_CONNECTIONS, math.huge)
local producers_done = copas.semaphore.new(#PRODUCERS, 0, math.huge)

local stats = {
  submitted = 0,
  processed = 0,
  seen = {}, -- job id -> times processed
  per_worker = {},
  db_in_use = 0,
  db_peak = 0,
  db_wait_total = 0,
  crowd_done = 0,
  late_done = 0,
  naps = 0,
  oversleep_max = 0,
  progress_ticks = 0,
}

------------------------------------------------------------------------------------------------
-- the pipeline

-- A producer submits its jobs with a pause between them; a job's "cost" is the time it spends
-- being computed by a worker.
local function producer(name, index)
  for n = 1, JOBS_PER_PRODUCER do
    local id = (index - 1) * JOBS_PER_PRODUCER + n
    assert(jobs:push({ id = id, from = name, cost = 0.01 * ((id * 7) % 5 + 1), queued = copas.gettime() }))
    stats.submitted = stats.submitted + 1
    copas.pause(0.02 * index)
  end
  log("producer %-5s submitted its %d jobs", name, JOBS_PER_PRODUCER)
  producers_done:give(1)
end

-- A worker computes (pauses for the job's cost), then does its database part holding one of
-- the DB connections, then hands the result to the collector.
local function worker(job)
  local me = copas.getthreadname()
  copas.pause(job.cost)

  local asked = copas.gettime()
  assert(db:take(1)) -- waits while both connections are in use
  local waited = copas.gettime() - asked
  stats.db_in_use = stats.db_in_use + 1
  if stats.db_in_use > stats.db_peak then stats.db_peak = stats.db_in_use end
  copas.pause(0.04) -- the query
  stats.db_in_use = stats.db_in_use - 1
  db:give(1)

  results:push({ job = job, worker = me, db_wait = waited, done = copas.gettime() })
end

local function collector(r)
  stats.processed = stats.processed + 1
  stats.seen[r.job.id] = (stats.seen[r.job.id] or 0) + 1
  stats.per_worker[r.worker] = (stats.per_worker[r.worker] or 0) + 1
  stats.db_wait_total = stats.db_wait_total + r.db_wait
  log("job %2d from %-5s done by %s after %.3fs (%.3fs waiting for the db)",
    r.job.id, r.job.from, r.worker, r.done - r.job.queued, r.db_wait)
end

------------------------------------------------------------------------------------------------
-- the crowd: many threads sleeping in short naps

local function napper(i)
  for n = 1, NAPS do
    local want = 0.03 * ((i + n) % 6 + 1)
    local before = copas.gettime()
    copas.pause(want)
    local late = copas.gettime() - before - want
    if late > stats.oversleep_max then stats.oversleep_max = late end
    stats.naps = stats.naps + 1
  end
  stats.crowd_done = stats.crowd_done + 1
end

local function late_joiner()
  copas.pause(0.2)
  stats.late_done = stats.late_done + 1
end

------------------------------------------------------------------------------------------------
-- the program

local progress
local errors = 0

copas.loop(function()
  -- every thread without its own handler reports here; the self-check counts them
  copas.seterrorhandler(function(err, co, skt)
    errors = errors + 1
    io.stderr:write(copas.gettraceback(err, co, skt), "\n")
  end, true)

  log("starting: %d producers, %d workers, %d db connections, %d sleepers",
    #PRODUCERS, WORKERS, DB_CONNECTIONS, CROWD)

  for _ = 1, WORKERS do jobs:add_worker(worker) end
  results:add_worker(collector)

  for i = 1, CROWD do
    copas.addnamedthread("napper_" .. i, napper, i)
  end

  for i, name in ipairs(PRODUCERS) do
    copas.addnamedthread("producer_" .. name, producer, name, i)
  end

  progress = copas.timer.new({
    name = "progress",
    recurring = true,
    delay = 0.25,
    callback = function()
      stats.progress_ticks = stats.progress_ticks + 1
      local st = copas.status()
      log("progress: %2d/%d jobs done, %d queued, crowd %3d/%d, late joiners %3d/%d, %d tasks ready, %d sleeping",
        stats.processed, #PRODUCERS * JOBS_PER_PRODUCER, jobs:get_size() or 0, -- nil once drained
        stats.crowd_done, CROWD, stats.late_done, LATE_JOINERS, st.active or 0, st.timer or 0)
    end,
  })

  copas.timer.new({
    name = "late_joiners",
    delay = 0.3,
    callback = function()
      log("one-shot timer: %d late joiners arrive", LATE_JOINERS)
      for i = 1, LATE_JOINERS do
        copas.addnamedthread("late_" .. i, late_joiner)
      end
    end,
  })

  copas.addnamedthread("coordinator", function()
    assert(producers_done:take(#PRODUCERS))
    log("coordinator: all producers finished, draining the job queue")
    assert(jobs:finish(30))
    log("coordinator: job queue drained, draining the result queue")
    assert(results:finish(30))
    log("coordinator: done; stopping the progress timer")
    progress:cancel()
  end)
end)

------------------------------------------------------------------------------------------------
-- summary and self-check

local elapsed = copas.gettime() - T0
local total_jobs = #PRODUCERS * JOBS_PER_PRODUCER
print()
print(string.format("summary after %.2fs (%s)", elapsed, _VERSION .. (jit and (" / " .. jit.version) or "")))
print(string.format("  jobs: %d submitted, %d processed", stats.submitted, stats.processed))
local names = {}
for name in pairs(stats.per_worker) do names[#names + 1] = name end
table.sort(names)
for _, name in ipairs(names) do
  print(string.format("    %-16s %2d jobs", name, stats.per_worker[name]))
end
print(string.format("  database: at most %d of %d connections in use at once, %.3fs waited in total",
  stats.db_peak, DB_CONNECTIONS, stats.db_wait_total))
print(string.format("  crowd: %d/%d sleepers finished %d naps, worst oversleep %.1f ms; %d/%d late joiners",
  stats.crowd_done, CROWD, stats.naps, stats.oversleep_max * 1000, stats.late_done, LATE_JOINERS))
print(string.format("  progress timer fired %d times", stats.progress_ticks))

-- Part two: sockets. An upper-casing line server on 127.0.0.1 and CLIENTS clients that reach it
-- by the name "localhost" (looked up off the loop thread), each sending LINES lines.
local socket = require("socket")
local CLIENTS, LINES = 200, 20
local net = { served = 0, replies = 0, wrong = 0, peak = 0, open = 0, ticks = 0 }
local server = assert(socket.bind("127.0.0.1", 0, 1024))
local _, port = server:getsockname()
local net_t0 = copas.gettime()

copas.addserver(server, copas.handler(function(conn)
  net.open = net.open + 1
  net.peak = math.max(net.peak, net.open)
  while true do
    local line = conn:receive("*l")
    if not line then break end
    conn:send(line:upper() .. "\n")
  end
  net.open = net.open - 1
  net.served = net.served + 1
end), nil, "upper")

copas.loop(function()
  local done = 0
  copas.addthread(function()   -- the loop keeps ticking while clients talk
    while done < CLIENTS do
      copas.pause(0.01)
      net.ticks = net.ticks + 1
    end
  end)
  for c = 1, CLIENTS do
    copas.addthread(function()
      local client = copas.wrap(socket.tcp())
      client:settimeout(10)
      assert(client:connect("localhost", port))
      for i = 1, LINES do
        local text = ("client %d line %d"):format(c, i)
        client:send(text .. "\n")
        if client:receive("*l") == text:upper() then
          net.replies = net.replies + 1
        else
          net.wrong = net.wrong + 1
        end
      end
      client:close()
      done = done + 1
      if done == CLIENTS then copas.removeserver(server) end
    end)
  end
end)
local net_elapsed = copas.gettime() - net_t0
print(string.format("  sockets: %d clients reached %q by name, %d/%d replies right, %d wrong, " ..
  "%d connections open at peak, %d loop ticks meanwhile, %.3fs",
  CLIENTS, "localhost", net.replies, CLIENTS * LINES, net.wrong, net.peak, net.ticks, net_elapsed))

local problems = {}
local function check(ok, what)
  if not ok then problems[#problems + 1] = what end
end
check(stats.submitted == total_jobs, "not every job was submitted")
check(stats.processed == total_jobs, "not every job was processed")
for id = 1, total_jobs do
  check((stats.seen[id] or 0) == 1, "job " .. id .. " was processed " .. (stats.seen[id] or 0) .. " times")
end
check(stats.db_peak >= 1 and stats.db_peak <= DB_CONNECTIONS, "the semaphore let too many jobs in")
check(stats.crowd_done == CROWD and stats.naps == CROWD * NAPS, "not every sleeper finished")
check(stats.late_done == LATE_JOINERS, "not every late joiner finished")
check(stats.progress_ticks >= 1, "the progress timer never fired")
check(errors == 0, errors .. " thread(s) raised an error")
check(#names == WORKERS, "expected all " .. WORKERS .. " workers to get jobs")
check(net.replies == CLIENTS * LINES and net.wrong == 0, "not every socket reply came back right")
check(net.served == CLIENTS, "the server did not finish every connection")

if #problems > 0 then
  print("demo FAILED:")
  for _, p in ipairs(problems) do print("  - " .. p) end
  os.exit(1)
end
print("demo OK")
