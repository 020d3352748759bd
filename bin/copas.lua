#!/usr/bin/env lua
-- The `copas` runtime: like the `lua` command, but everything runs inside a Copas loop.
--
--   copas [options]... [script [args]...]
--
-- The options are handled in order, inside the loop's initializer thread, so scripts and -e
-- chunks may call copas.pause(), use wrapped sockets and add threads. The loop then runs until
-- nothing is left to do. An error in that thread prints a traceback on stderr and exits with 1.

copas = require("copas") -- the global `copas` is part of the contract (see .luacheckrc)

local compile = loadstring or load -- a string chunk: loadstring on 5.1/LuaJIT, load on 5.2+
local unpack = table.unpack or unpack
local args = arg or {}

local USAGE = [[
usage: copas [options]... [script [args]...].
Available options are:
  -e chunk  Execute string 'chunk'.
  -l name   Require library 'name'.
  -v        Show version information.
  --        Stop handling options.
  -         Execute stdin and stop handling options.]]

local function fatal(err, co, skt)
  io.stderr:write(copas.gettraceback(err, co, skt), "\n")
  os.exit(1)
end

local function usage()
  print(USAGE)
  os.exit(1)
end

local function version()
  print(copas._VERSION, copas._COPYRIGHT)
  print(copas._DESCRIPTION)
  print("Lua VM:", _VERSION)
end

local function option_value(i, opt)
  local value = args[i]
  if value == nil then
    io.stderr:write("copas: '", opt, "' needs an argument\n")
    usage()
  end
  return value
end

-- Runs the script at args[pos]: the arguments are renumbered so that the script is arg[0],
-- its first argument arg[1] and the interpreter and options negative, as `lua` does. The
-- script also receives its arguments as `...`.
local function run_script(pos)
  local first = 0
  for k in pairs(args) do
    if type(k) == "number" and k < first then first = k end
  end
  local last = #args
  local shifted = {}
  for k = first, last do
    shifted[k - pos] = args[k]
  end
  for k = first, last do
    args[k] = nil
  end
  for k, v in pairs(shifted) do
    args[k] = v
  end
  local chunk = assert(loadfile(args[0]))
  return chunk(unpack(args, 1, #args))
end

local function run_stdin()
  local chunk = assert(loadfile()) -- loadfile() with no name reads stdin
  return chunk()
end

copas(function()
  copas.seterrorhandler(fatal) -- for this initializer thread only

  if #args == 0 then
    return run_stdin()
  end

  local i = 1
  while i <= #args do
    local opt = args[i]
    if opt == "-v" then
      version()
    elseif opt == "-l" then
      i = i + 1
      require(option_value(i, opt))
    elseif opt == "-e" then
      i = i + 1
      assert(compile(option_value(i, opt), "command line"))()
    elseif opt == "--" then
      return
    elseif opt == "-" then
      return run_stdin()
    elseif opt:sub(1, 1) == "-" then
      return usage()
    else
      return run_script(i)
    end
    i = i + 1
  end
end)
