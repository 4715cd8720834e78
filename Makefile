# MemWall — two commands on a fresh Debian/Ubuntu machine:
#   make demo   install what is missing, build, run the main job on a built-in default
#   make test   install, build, run every test on the host and in the lab guest
.PHONY: demo test build deps lab lab-cxl lab-deps bench bench-core fuzz clean release lib wheel python-test install uninstall print-installed print-version

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
SWIFT ?= swift
MEMWALL = .build/debug/memwall

demo:
	@MEMWALL_SKIP_LLAMA=1 scripts/install-deps build
	$(SWIFT) build
	@echo "== memwall capabilities"
	@$(MEMWALL) capabilities
	@echo
	@echo "== memwall topo"
	@$(MEMWALL) topo
	@echo
	@echo "== memwall kv replay (shipped trace: first 2,000 requests of Mooncake's conversation trace)"
	@$(MEMWALL) kv replay traces/conversation-head-2000.jsonl --tiers dram:500,far:1500,nvme:8000 --policy lru,lfuda
	@echo
	@echo "== python: memwall.KVCache over libmemwall (store, demote to NVMe, load back verified)"
	@scripts/test-python --stage-only >/dev/null && .build/venv/bin/python scripts/demo.py

test:
	@scripts/test-all

build:
	$(SWIFT) build

deps:
	@scripts/install-deps build

lab-deps:
	@scripts/install-deps lab

# Boots the lab guest and runs the lab tests there (make test does this too).
lab: deps lab-deps
	$(SWIFT) build --build-tests
	scripts/lab -- ".build/debug/MemWallPackageTests.xctest --testing-library swift-testing --filter InLab"

# The lab guest with a CXL type-3 device brought up as /dev/dax0.0: the KV pool on it.
lab-cxl: deps lab-deps
	$(SWIFT) build --build-tests
	scripts/lab --cxl -- ".build/debug/MemWallPackageTests.xctest --testing-library swift-testing --filter OnDAXInLab"

# Every benchmark side by side with its reference tool, ratios into
# Benchmarks/RESULTS.md (each script rewrites only its own subsection).
bench: deps lab-deps
	$(SWIFT) build -c release --product memwall
	scripts/bench-local.sh
	scripts/bench-local.sh --lab
	scripts/bench-topo.sh
	scripts/bench-kv.sh
	scripts/bench-kvpath.sh
	scripts/bench-kvpath.sh --lab
	scripts/bench-pool.sh
	scripts/bench-rdma.sh host | scripts/results-splice "## RDMA (issue 5)" "### Latest make bench run: host"
	scripts/bench-rdma.sh lab | scripts/results-splice "## RDMA (issue 5)" "### Latest make bench run: lab"
	scripts/bench-intrahost.sh   # NIXL beside it when .build/nixl-venv has it (INSTALL_NIXL=1 installs it, ~6 GB)

# package-benchmark micro-benchmarks of the hot paths (funnel, histogram).
bench-core:
	cd Benchmarks && $(SWIFT) package --allow-writing-to-package-directory benchmark

# Coverage-guided fuzzing (libFuzzer) of the frame, export-table, trace and
# topology XML decoders, FUZZ_SECONDS each (default 600); see docs/fuzzing.md.
# make test replays the committed corpora (Fuzz/corpus) for a few seconds per target.
FUZZ_SECONDS ?= 600
fuzz: deps
	scripts/fuzz run $(FUZZ_SECONDS)

# ---- libmemwall, the Python wheel, installing (issue 13) -----------------------------------
# make install PREFIX=... puts a release memwall (Swift runtime linked in statically),
# libmemwall.so, memwall.h, memwall.pc, the man page and bash/zsh/fish completions where C
# builds and shells look for them; make uninstall removes exactly those files.
PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
MANDIR ?= $(PREFIX)/share/man
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR ?= $(PREFIX)/share/zsh/site-functions
FISHCOMPDIR ?= $(PREFIX)/share/fish/vendor_completions.d
PYTHON ?= python3
RELEASE_FLAGS = -c release --static-swift-stdlib
VERSION := $(shell sed -n 's/^\#define MEMWALL_RELEASE "\(.*\)"/\1/p' Modules/CMemWallABI/include/memwall_abi_internal.h)
INSTALLED = $(BINDIR)/memwall $(LIBDIR)/libmemwall.so.1 $(LIBDIR)/libmemwall.so $(INCLUDEDIR)/memwall.h \
            $(PKGCONFIGDIR)/memwall.pc $(MANDIR)/man1/memwall.1 $(BASHCOMPDIR)/memwall \
            $(ZSHCOMPDIR)/_memwall $(FISHCOMPDIR)/memwall.fish

# The release CLI and library, one set of flags (switching flags would relink the other).
release:
	$(SWIFT) build $(RELEASE_FLAGS) --product memwall
	$(SWIFT) build $(RELEASE_FLAGS) --product MemWallC

# libmemwall under its installed name in .build/lib (the SONAME is libmemwall.so.1).
lib: release
	@mkdir -p .build/lib
	cp .build/release/libMemWallC.so .build/lib/libmemwall.so.1
	ln -sf libmemwall.so.1 .build/lib/libmemwall.so

# The wheel: python/ with the release library inside the package, in .build/wheels.
wheel: lib
	rm -rf .build/wheel-src && mkdir -p .build/wheels
	cp -r python .build/wheel-src && rm -rf .build/wheel-src/build .build/wheel-src/*.egg-info
	cp .build/lib/libmemwall.so.1 .build/wheel-src/memwall/libmemwall.so
	$(PYTHON) -m pip wheel -q --no-deps -w .build/wheels .build/wheel-src
	@ls .build/wheels/memwall-$(VERSION)-*.whl

# pytest of python/tests in .build/venv against the debug build (make test runs it too).
python-test:
	$(SWIFT) build --build-tests
	scripts/test-python

install: release
	@mkdir -p .build/completions
	.build/release/memwall --generate-completion-script bash > .build/completions/memwall.bash
	.build/release/memwall --generate-completion-script zsh > .build/completions/_memwall
	.build/release/memwall --generate-completion-script fish > .build/completions/memwall.fish
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' \
	    -e 's|@VERSION@|$(VERSION)|' packaging/memwall.pc.in > .build/completions/memwall.pc
	install -D -m 755 .build/release/memwall $(DESTDIR)$(BINDIR)/memwall
	install -D -m 755 .build/release/libMemWallC.so $(DESTDIR)$(LIBDIR)/libmemwall.so.1
	ln -sf libmemwall.so.1 $(DESTDIR)$(LIBDIR)/libmemwall.so
	install -D -m 644 include/memwall.h $(DESTDIR)$(INCLUDEDIR)/memwall.h
	install -D -m 644 .build/completions/memwall.pc $(DESTDIR)$(PKGCONFIGDIR)/memwall.pc
	install -D -m 644 docs/memwall.1 $(DESTDIR)$(MANDIR)/man1/memwall.1
	install -D -m 644 .build/completions/memwall.bash $(DESTDIR)$(BASHCOMPDIR)/memwall
	install -D -m 644 .build/completions/_memwall $(DESTDIR)$(ZSHCOMPDIR)/_memwall
	install -D -m 644 .build/completions/memwall.fish $(DESTDIR)$(FISHCOMPDIR)/memwall.fish

uninstall:
	rm -f $(addprefix $(DESTDIR),$(INSTALLED))

# For scripts/test-install: the installed paths, one a line, and the release.
print-installed:
	@printf '%s\n' $(addprefix $(DESTDIR),$(INSTALLED))
print-version:
	@echo $(VERSION)

clean:
	rm -rf .build .build-fuzz .lab
