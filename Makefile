# MemWall — two commands on a fresh Debian/Ubuntu machine:
#   make demo   install what is missing, build, run the main job on a built-in default
#   make test   install, build, run every test on the host and in the lab guest
.PHONY: demo test build deps lab lab-deps bench clean

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

clean:
	rm -rf .build .lab
