-- Shared helpers for the busted specs.
local helper = {}

-- A yield-safe pcall: on PUC 5.1 the native one cannot carry a copas.pause (coxpcall's can).
helper.safe_pcall = (_VERSION == "Lua 5.1" and not jit) and require("coxpcall").pcall or pcall

local clock = require("system").gettime

-- The interpreter a child process of a spec should run: COPAS_TEST_LUA, or the one running
-- this spec (busted --lua=...).
function helper.interpreter()
  local lua = os.getenv("COPAS_TEST_LUA")
  if lua and lua ~= "" then return lua end
  if jit then return "luajit" end
  return "lua" .. _VERSION:match("(%d+%.%d+)")
end

-- `s` quoted for sh.
function helper.shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- A fresh, independent copas instance: drops every copas module from package.loaded and
-- requires copas again, so that the submodules (lock, semaphore, ...) bind to the new one too.
function helper.fresh_copas()
  for name in pairs(package.loaded) do
    if name == "copas" or (name:sub(1, 6) == "copas." and name ~= "copas.core") then
      package.loaded[name] = nil
    end
  end
  return require("copas")
end

-- Runs copas.loop(...) and returns how long it took, but fails the spec (instead of hanging)
-- when the loop runs longer than `limit` seconds (default 5). loop looks copas.step up
-- through the copas table (§1.3), so a wrapper bounds it.
function helper.loop(copas, limit, ...)
  limit = limit or 5
  local deadline = clock() + limit
  local step = copas.step
  copas.step = function(t)
    if clock() > deadline then error("copas.loop still running after " .. limit .. " s", 0) end
    if t == nil or t > 0.05 then t = 0.05 end -- keep the deadline check going
    return step(t)
  end
  local start = clock()
  local ok, err = pcall(copas.loop, ...)
  copas.step = step
  if not ok then error(err, 0) end
  return clock() - start
end

-- Runs `body` as the loop's initializer thread (bounded as helper.loop). An error in `body`
-- fails the spec; so does any error reported to the default Copas error handler, unless
-- `expect_errors` is set. Returns the reported errors.
function helper.run(copas, body, limit, expect_errors)
  local errors, failures = {}, {}
  copas.seterrorhandler(function(msg) errors[#errors + 1] = tostring(msg) end, true)
  helper.loop(copas, limit, function()
    local ok, err = helper.safe_pcall(body)
    if not ok then failures[#failures + 1] = tostring(err) end
  end)
  if not expect_errors then
    for _, e in ipairs(errors) do failures[#failures + 1] = e end
  end
  if failures[1] then error(table.concat(failures, "\n"), 0) end
  return errors
end

return helper
