-- copas-rs, private: LuaSocket's protect/newtry/try replaced by ones a copas thread can yield
-- through, as upstream Copas 4.11 replaces them (../shared/docs/copas-behaviour.md §1.2;
-- beside this repository).
--
-- LuaSocket's are C functions built on lua_pcall: code they protect cannot yield on PUC 5.1, so
-- a copas socket call inside them would fail there. Copas replaces them in the shared `socket`
-- table with Lua versions (a failed try raises a table that protect turns back into nil,
-- message). An error that is not a try's is raised again as it was (upstream prefixes string
-- errors with its own position at every protect layer).
--
-- `require("copas.protect")(socket, pcall)` replaces them, with `pcall` one that may yield
-- (coxpcall's on PUC 5.1). copas.lua calls it at every load, as upstream patches at every load.

return function(socket, yieldable_pcall)
  local select, error, getmetatable, setmetatable = select, error, getmetatable, setmetatable

  local try_error_mt = {
    __tostring = function(e) return "Copas 'try' error intermediate table: '" .. e[1] .. "'" end,
  }

  socket.newtry = function(finalizer)
    return function(...)
      if (...) then return ... end
      if finalizer then yieldable_pcall(finalizer, select(2, ...)) end
      error(setmetatable({ (select(2, ...)) }, try_error_mt), 0)
    end
  end

  socket.try = socket.newtry()

  local function protected_results(ok, ...)
    if ok then return ... end
    local err = ...
    if getmetatable(err) == try_error_mt then return nil, err[1] end
    error(err, 0)
  end

  socket.protect = function(func)
    return function(...)
      return protected_results(yieldable_pcall(func, ...))
    end
  end
end
