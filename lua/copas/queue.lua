--- A FIFO queue for Copas threads, with optional worker threads.
-- Compatible with Copas 4.11's `copas.queue`: the contract is ../shared/docs/copas-behaviour.md
-- §9.3 (beside this repository); README.md lists the upstream bug fixed here, with its
-- regression spec (spec/queue_spec.lua).
-- @module copas.queue
local copas = require("copas")

local gettime = copas.gettime    -- captured once, like upstream
local Semaphore = copas.semaphore
local Lock = copas.lock

-- Tells when a worker thread ends, however it ends (it returns, raises or is removed).
local on_exit = getmetatable(copas).internal.on_exit

local Queue = {}
Queue.__index = Queue


local new_name do
  local count = 0

  function new_name()
    count = count + 1
    return "copas_queue_" .. count
  end
end


-- True when the worker thread will never run again.
local is_gone = getmetatable(copas).internal.isgone

-- Every method, and any other missing key, of a destroyed object answers nil, "destroyed".
local destroyed_mt = getmetatable(copas).internal.destroyed_mt


-- Drops the workers that will never run again; returns true if any are left.
local function has_live_workers(self)
  for co in pairs(self.workers) do
    if is_gone(co) then
      self.workers[co] = nil
    end
  end
  return next(self.workers) ~= nil
end


--- Creates a new queue. Works as `Queue.new(opts)` and as `Queue:new()`.
-- @param opts (optional) table; `opts.name` names the queue and its workers
-- @return the queue object
function Queue.new(opts)
  if opts == nil then
    opts = {}
  elseif type(opts) ~= "table" then
    error("expected options (1st argument) to be a table, got: " .. tostring(opts), 2)
  end
  local name = opts.name
  if name ~= nil and type(name) ~= "string" and type(name) ~= "number" then
    error("expected options.name to be a string, got: " .. tostring(name), 2)
  end

  return setmetatable({
    name = name or new_name(),
    sema = Semaphore.new(10^9),   -- counts the items; its default timeout (10 s) is pop's
    head = 1,                     -- position for the next item pushed
    tail = 1,                     -- position of the next item popped
    list = {},
    workers = setmetatable({}, { __mode = "k" }),
    stopping = false,
    worker_id = 0,
    exit_semaphore = Semaphore.new(10^9),  -- given once by every exiting worker
  }, Queue)
end


--- A queue, as `new` returns it.
-- @type Queue

--- Pushes an item (which may be nil).
-- @return true, or nil + "stopping"/"destroyed"
function Queue:push(item)
  if self.stopping then
    return nil, "stopping"
  end
  self.list[self.head] = item
  self.head = self.head + 1
  self.sema:give()
  return true
end


--- Pops the oldest item, waiting for one if the queue is empty.
-- @param timeout (optional) seconds to wait (default 10); `0` never yields,
-- `math.huge` waits forever
-- @return the item (possibly nil), or nil + "timeout"/"destroyed"
function Queue:pop(timeout)
  if timeout ~= nil and (type(timeout) ~= "number" or not (timeout >= 0)) then
    error("expected timeout (1st argument) to be a number greater than or equal to 0, got: "
          .. tostring(timeout), 2)
  end
  local ok, err = self.sema:take(1, timeout)
  if not ok then
    return ok, err
  end

  local list, tail = self.list, self.tail
  local item = list[tail]
  list[tail] = nil
  self.tail = tail + 1

  if self.tail == self.head then
    -- every popped position was cleared: start over in the same table
    self.head = 1
    self.tail = 1
    if self.stopping then
      self:destroy()  -- the last item is out: a stopping queue is done
    end
  end
  return item
end


--- @return the number of items in the queue
function Queue:get_size()
  return self.head - self.tail
end


--- Stops accepting pushes; the queue destroys itself once it runs empty.
-- @return true
function Queue:stop()
  if not self.stopping then
    self.stopping = true
    -- `finish` waits on this lock, which is never released, only destroyed together
    -- with the queue
    self.lock = Lock.new(nil, true)
    self.lock:get()
    if self:get_size() == 0 then
      self:destroy()  -- no pop will come to see the last item go
    end
  end
  return true
end


-- Destroys the queue after a failed `finish`, unless asked not to.
local function finish_timeout(self, no_destroy_on_timeout)
  if not no_destroy_on_timeout then
    self:destroy()
  end
  return nil, "timeout"
end


--- Stops the queue, then waits until it ran empty and every worker has finished
-- handling its last item.
-- @param timeout (optional) seconds to wait (default 10, the lock's default)
-- @param no_destroy_on_timeout (optional) if truthy, a timeout leaves the queue intact
-- @return true, or nil + "timeout"
function Queue:finish(timeout, no_destroy_on_timeout)
  if timeout ~= nil and (type(timeout) ~= "number" or not (timeout >= 0)) then
    error("expected timeout (1st argument) to be a number greater than or equal to 0, got: "
          .. tostring(timeout), 2)
  end
  self:stop()
  timeout = timeout or self.lock.timeout  -- a raw field, readable after destruction
  local endtime = gettime() + timeout

  local _, err = self.lock:get(timeout)
  if err == "timeout" then
    return finish_timeout(self, no_destroy_on_timeout)
  end

  -- the queue is destroyed (empty); now the workers must exit. Several threads may
  -- be finishing at once, so each counts exits one by one.
  while has_live_workers(self) do
    _, err = self.exit_semaphore:take(1, math.max(0, endtime - gettime()))
    if err == "destroyed" then
      return true  -- another finisher saw the last worker go
    end
    if err == "timeout" then
      return finish_timeout(self, no_destroy_on_timeout)
    end
  end
  self.exit_semaphore:destroy()
  return true
end


--- Destroys the queue at once, dropping its items; waiting `pop` calls return
-- nil + "destroyed", and the workers exit.
-- @return true
function Queue:destroy()
  if self.lock then
    self.lock:destroy()
  end
  self.sema:destroy()
  setmetatable(self, destroyed_mt)
  for key in pairs(self.list) do
    self.list[key] = nil
  end
  return true
end


-- The body of a worker thread: handles items until the queue is destroyed.
local function work(self, handler)
  while true do
    local item, err = self:pop(math.huge)
    if err then
      break
    end
    -- unprotected, as documented: an error ends this worker through the Copas
    -- error handler
    handler(item)
  end
end


--- Adds a worker thread that calls `handler(item)` for every item popped.
-- @param handler the function
-- @return the worker's coroutine
function Queue:add_worker(handler)
  if type(handler) ~= "function" then
    error("expected worker to be a function", 2)
  end
  self.worker_id = self.worker_id + 1
  local co = copas.addnamedthread(self.name .. ":worker_" .. self.worker_id, work, self, handler)
  self.workers[co] = true
  -- The watcher must not hold `co`: on 5.1/LuaJIT a weak-keyed table whose value refers to
  -- its key keeps the key alive.
  on_exit(co, function(ended)
    self.workers[ended] = nil
    self.exit_semaphore:give(1)
  end)
  return co
end


--- @return an array of the worker coroutines still active (order unspecified)
function Queue:get_workers()
  local list = {}
  for co in pairs(self.workers) do
    if not is_gone(co) then
      list[#list + 1] = co
    end
  end
  return list
end


return Queue
