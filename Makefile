# MemWall — two commands on a fresh Debian/Ubuntu machine:
#   make demo   install what is missing, build, run the main job on a built-in default
#   make test   install, build, run every test on the host and in the lab guest
.PHONY: demo test build deps lab lab-deps bench bench-core fuzz clean

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
SWIFT ?= swift
MEMWALL = .build/debug/memwall

demo: deps build
	@echo "== memwall capabilities"
	@$(MEMWALL) capabilities
	@echo
	@echo "== memwall topo"
	@$(MEMWALL) topo
	@echo
	@echo "== memwall kv replay (shipped trace: first 2,000 requests of Mooncake's conversation trace)"
	@$(MEMWALL) kv replay traces/conversation-head-2000.jsonl --tiers dram:500,far:1500,nvme:8000 --policy lru,lfuda

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
	scripts/bench-rdma.sh host | scripts/results-splice "## RDMA (issue 5)" "### Latest make bench run: host"
	scripts/bench-rdma.sh lab | scripts/results-splice "## RDMA (issue 5)" "### Latest make bench run: lab"

# package-benchmark micro-benchmarks of the hot paths (funnel, histogram).
bench-core:
	cd Benchmarks && $(SWIFT) package --allow-writing-to-package-directory benchmark

# Coverage-guided fuzzing (libFuzzer) of the frame, export-table, trace and
# topology XML decoders, FUZZ_SECONDS each (default 600); see docs/fuzzing.md.
# make test replays the committed corpora (Fuzz/corpus) for a few seconds per target.
FUZZ_SECONDS ?= 600
fuzz: deps
	scripts/fuzz run $(FUZZ_SECONDS)

clean:
	rm -rf .build .build-fuzz .lab
