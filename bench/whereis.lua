-- Prints where each named module would be loaded from under the current LUA_PATH/LUA_CPATH,
-- one "name<TAB>file" line each ("-" when not found). Used by bench/run to prove that a run
-- loads the implementation it claims to (upstream's src, or our build) and nothing else.
-- Usage: lua whereis.lua MOD...

local function search(name, path)
  if package.searchpath then
    return package.searchpath(name, path)
  end
  local fname = name:gsub("%.", "/")
  for template in path:gmatch("[^;]+") do
    local file = template:gsub("%?", fname)
    local f = io.open(file, "r")
    if f then
      f:close()
      return file
    end
  end
  return nil
end

for _, name in ipairs(arg) do
  local file = search(name, package.path) or search(name, package.cpath)
  print(name .. "\t" .. (file or "-"))
end
