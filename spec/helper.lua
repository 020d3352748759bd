-- Shared helpers for the busted specs: a fresh, independent copas instance per test.
local helper = {}

-- Drops every copas module from package.loaded and requires copas again, so that the
-- submodules (lock, semaphore, ...) bind to the new instance too.
function helper.fresh_copas()
  for name in pairs(package.loaded) do
    if name == "copas" or (name:sub(1, 6) == "copas." and name ~= "copas.core") then
      package.loaded[name] = nil
    end
  end
  return require("copas")
end

-- Runs `fn` as the loop's initializer thread and fails the test if the loop takes longer
-- than `limit` seconds (a guard thread calls copas.cancelall/exit in that case).
function helper.run(copas, fn, limit)
  limit = limit or 10
  local timed_out = false
  local guard = copas.addthread(function()
    copas.pause(limit)
    timed_out = true
    copas.cancelall()
  end)
  copas.loop(function()
    fn()
    copas.removethread(guard)
  end)
  assert(not timed_out, "loop did not finish within " .. limit .. " seconds")
end

return helper
