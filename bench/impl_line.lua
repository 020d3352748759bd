-- The IMPL line every bench program prints: which copas it loaded, from which file, on which
-- runtime. Loaded with dofile (the bench directory is not on LUA_PATH).
return function(copas)
  local file = debug.getinfo(copas.loop, "S").source:gsub("^@", "")
  return string.format("IMPL %s | core=%s | file=%s | %s", tostring(copas._VERSION),
    package.loaded["copas.core"] and "yes" or "no", file,
    (type(jit) == "table" and jit.version) or _VERSION)
end
