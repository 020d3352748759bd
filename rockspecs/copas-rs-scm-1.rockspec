-- copas-rs: Copas 4.11 with its scheduler, timers and reactor in Rust.
--
-- Install from a checkout (needs cargo; builds for the interpreter luarocks targets):
--   luarocks make --deps-mode=none rockspecs/copas-rs-scm-1.rockspec
-- `--deps-mode=none` is needed with Debian's lua-socket (and lua-coxpcall), which luarocks does
-- not know about because they are apt packages, not rocks. Add `--tree DIR` (or `--local`) to
-- install elsewhere than the system tree; `luarocks --lua-version=5.4 make ...` targets Lua 5.4.
rockspec_format = "3.0"
package = "copas-rs"
version = "scm-1"

source = {
  -- `luarocks make` builds the checkout it is run from and never fetches this.
  url = "git+file:///dev/null/copas-rs",
}

description = {
  summary = "Coroutine Oriented Portable Asynchronous Services, with a Rust core",
  detailed = [[
    A drop-in replacement for Copas 4.11: the same `copas` module and API (threads, sleeping,
    timers, locks, semaphores, queues, futures, socket wrappers), with the scheduler, the
    timers and an epoll reactor implemented in Rust (module copas.core).
  ]],
  license = "MIT",
  labels = { "copas", "coroutines", "async", "network" },
}

dependencies = {
  "lua >= 5.1, < 5.5",
  "luasocket >= 3.0",
}

build = {
  type = "command",
  build_command = [[sh scripts/rock.sh build "$(LUA)"]],
  install_command = [[sh scripts/rock.sh install "$(LUA)" "$(LUADIR)" "$(LIBDIR)"]],
  install = {
    bin = {
      copas = "bin/copas.lua",
    },
  },
}
