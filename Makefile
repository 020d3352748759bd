# copas-rs: one build of the Rust core per Lua runtime, assembled into a ready tree per runtime.
#
#   make build [LUA=5.4]     build one runtime (5.1 5.2 5.3 5.4 jit), or all five without LUA
#   make demo  [LUA=5.4]     install missing packages, build, run examples/demo.lua (Lua 5.4)
#   make test                everything CI runs: deps, builds, fmt, clippy, unit, busted x5,
#                            fuzz, luarocks
#   make unit                the Rust unit tests (cargo test; pure Rust, one runtime's build)
#   make conformance UPSTREAM=/path/to/copas   upstream's tests against our build
#   make bench UPSTREAM=/path/to/copas         bench/run and bench/net/run, side by side with upstream
#   make fuzz [SEED=1] [COUNT=10000] [LUA="5.4 jit"]   the seeded fuzzer of the public API
#   make memcheck [LUA=5.4]                    socket specs under valgrind
#   make lint                                  luacheck over the Lua code (.luacheckrc)
#   make docs                                  the LDoc API reference in build/docs/ (config.ld)
#   make clean
#
# After `make build LUA=5.4` a program needs only
#   LUA_PATH="build/lua5.4/?.lua;build/lua5.4/?/init.lua;;" LUA_CPATH="build/lua5.4/?.so;;"
# (`make env LUA=5.4` prints these lines with absolute paths, ready for eval).

SHELL := /bin/bash
.DEFAULT_GOAL := build

ALL_LUA := 5.1 5.2 5.3 5.4 jit
LUA ?=
UPSTREAM ?=
CARGO ?= cargo
# cargo from rustup lives in ~/.cargo/bin, which a non-login shell (CI, sudo, luarocks) may lack.
export PATH := $(PATH):$(HOME)/.cargo/bin

# Helpers: $(call feature,5.4) = lua54, $(call feature,jit) = luajit;
# $(call tree,5.4) = build/lua5.4, $(call tree,jit) = build/luajit;
# $(call interp,5.4) = lua5.4, $(call interp,jit) = luajit.
feature = $(if $(filter jit,$(1)),luajit,lua$(subst .,,$(1)))
interp  = $(if $(filter jit,$(1)),luajit,lua$(1))
tree    = build/$(call interp,$(1))

LUAS := $(or $(LUA),$(ALL_LUA))
BAD_LUA := $(filter-out $(ALL_LUA),$(LUAS))
ifneq ($(BAD_LUA),)
$(error LUA=$(BAD_LUA) is not one of: $(ALL_LUA))
endif

DEMO_LUA := $(or $(LUA),5.4)

.PHONY: all build $(addprefix build-,$(ALL_LUA)) demo test deps conformance bench env clean \
	fmt clippy unit check-cargo fuzz memcheck lint docs

all: build

build: $(addprefix build-,$(LUAS))

# Cargo decides itself what is up to date, so these always ask it; copying the tree is cheap.
# The tree is assembled in a private directory and renamed into place, so that two builds
# running at once (or a program using the tree) never see a half-copied tree.
$(addprefix build-,$(ALL_LUA)): build-%: check-cargo
	$(CARGO) build --release --features $(call feature,$*) --target-dir target/$(call feature,$*)
	@test -f lua/copas.lua || { echo "lua/copas.lua is missing" >&2; exit 1; }
	@set -e; mkdir -p build; tmp=$$(mktemp -d build/.$(call interp,$*).XXXXXX); \
	mkdir -p $$tmp/copas; \
	cp lua/copas.lua $$tmp/; \
	for f in lua/copas/*.lua; do if [ -e "$$f" ]; then cp "$$f" $$tmp/copas/; fi; done; \
	cp target/$(call feature,$*)/release/libcopas_core.so $$tmp/copas/core.so; \
	chmod 755 $$tmp; \
	old=$$(mktemp -d build/.old.XXXXXX); \
	if [ -e $(call tree,$*) ]; then mv $(call tree,$*) $$old/; fi; \
	mv $$tmp $(call tree,$*); rm -rf $$old
	@echo "ready: $(call tree,$*)/ (run with $(call interp,$*); see 'make env LUA=$*')"

check-cargo:
	@scripts/check-rust.sh

# Prints the environment a program needs to use one tree: eval "$(make -s env LUA=5.4)"
env:
	@d="$(CURDIR)/$(call tree,$(DEMO_LUA))"; \
	echo "export LUA_PATH=\"$$d/?.lua;$$d/?/init.lua;;\""; \
	echo "export LUA_CPATH=\"$$d/?.so;;\""

# LUA_PATH_5_x (even empty) would take precedence over LUA_PATH: unset them.
UNSET_VERSIONED := -u LUA_PATH_5_2 -u LUA_PATH_5_3 -u LUA_PATH_5_4 -u LUA_CPATH_5_2 -u LUA_CPATH_5_3 -u LUA_CPATH_5_4

demo: deps
	@$(MAKE) --no-print-directory build-$(DEMO_LUA)
	env $(UNSET_VERSIONED) \
	  LUA_PATH="$(call tree,$(DEMO_LUA))/?.lua;$(call tree,$(DEMO_LUA))/?/init.lua;;" \
	  LUA_CPATH="$(call tree,$(DEMO_LUA))/?.so;;" \
	  $(call interp,$(DEMO_LUA)) examples/demo.lua

# The whole CI run (what .ci/run calls). It installs missing Debian packages itself.
test:
	@scripts/test.sh

deps:
	@scripts/install-deps.sh

fmt: check-cargo
	$(CARGO) fmt --check

clippy: check-cargo
	@set -e; for v in $(LUAS); do f=$$(case $$v in jit) echo luajit;; *) echo lua$${v/./};; esac); \
	  echo "$(CARGO) clippy --release --features $$f --target-dir target/$$f -- -D warnings"; \
	  $(CARGO) clippy --release --features $$f --target-dir target/$$f -- -D warnings; done

# The unit tests call no Lua function, but the crate links against one runtime: Lua 5.4's build.
unit: check-cargo
	$(CARGO) test --release --features lua54 --target-dir target/lua54 --lib

conformance:
	@test -n "$(UPSTREAM)" || { echo "usage: make conformance UPSTREAM=/path/to/upstream/copas" >&2; exit 2; }
	@$(MAKE) --no-print-directory build
	@scripts/conformance.sh "$(UPSTREAM)" $(LUAS)

bench:
	@test -n "$(UPSTREAM)" || { echo "usage: make bench UPSTREAM=/path/to/upstream/copas" >&2; exit 2; }
	bench/run "$(UPSTREAM)"
	bench/net/run "$(UPSTREAM)"

# Both use the trees in build/ as they are (make build first).
SEED ?= 1
COUNT ?= 10000
fuzz:
	@scripts/fuzz.sh -s $(SEED) -n $(COUNT) $(LUAS)

memcheck:
	@scripts/memcheck.sh $(or $(LUA),5.4)

# luacheck (Debian: lua-check) with .luacheckrc; part of `make test`.
LUACHECK_DIRS := lua bin spec fuzz bench
LUACHECK_FLAGS ?=
lint:
	@command -v luacheck >/dev/null || { echo "luacheck not found: apt-get install lua-check (or make deps)" >&2; exit 1; }
	luacheck -q $(LUACHECK_FLAGS) $(LUACHECK_DIRS)

# The API reference of what copas-rs adds beside upstream's manual: LDoc (Debian: lua-ldoc)
# with config.ld, into build/docs/ (index.html).
docs:
	@command -v ldoc >/dev/null || { echo "ldoc not found: apt-get install lua-ldoc (or make deps)" >&2; exit 1; }
	@rm -rf build/docs
	ldoc --fatalwarnings .
	@echo "docs: build/docs/index.html"

clean:
	rm -rf build target
