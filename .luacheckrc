-- luacheck configuration: `make lint` (luacheck lua/ bin/ spec/ fuzz/ bench/), part of `make test`.
--
-- The code runs unchanged on Lua 5.1, 5.2, 5.3, 5.4 and LuaJIT, so the standard globals are the
-- ones all five have ("min"); what only some of them have is read behind a check, and listed
-- below as read-only globals.

std = "min"
max_line_length = 100

read_globals = {
  "jit",          -- LuaJIT only: `if jit then`, `_VERSION == "Lua 5.1" and not jit`
  "newproxy",     -- 5.1/LuaJIT only: `if newproxy then` (a __gc on a userdata)
  "unpack",       -- 5.1/LuaJIT: `table.unpack or unpack`
  "loadstring",   -- 5.1/LuaJIT: `loadstring or load`
  table = { fields = { "unpack" } },                     -- 5.2+
  math = { fields = { "tointeger", "mininteger", "maxinteger" } },  -- 5.3+, read behind a check
  package = { fields = { "searchpath" } },              -- 5.2+/LuaJIT, read behind a check
}

ignore = {
  -- `not (x >= 0)` is how the argument checks reject NaN along with negative numbers
  -- (lua/copas/{lock,semaphore,queue}.lua); `x < 0` would let NaN through.
  "581",
}

-- The `copas` command sets the global `copas` for the scripts it runs (a documented contract).
files["bin/copas.lua"] = { globals = { "copas" } }

files["spec"] = {
  std = "+busted",
  -- The specs quote long error messages and name their cases in full; they keep to 120 columns.
  max_line_length = 120,
}
