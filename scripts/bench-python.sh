#!/usr/bin/env bash
# Issue 13's overhead targets: python/bench/overhead.py with the release libmemwall in the
# project's venv, beside the Swift API (`memwall bench kv`) in the same run. Writes
# "### Python package overhead" under "## C ABI and Python (issue 13)" in Benchmarks/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.build/venv
[ -x "$venv/bin/python" ] || { echo "bench-python: no venv at $venv (scripts/install-deps python)" >&2; exit 3; }
[ -x .build/release/memwall ] && [ -f .build/release/libMemWallC.so ] ||
  { echo "bench-python: build first: make release lib" >&2; exit 3; }
stage=$(mktemp -d); trap 'rm -rf "$stage"' EXIT
cp -r python "$stage/pkg" && cp .build/release/libMemWallC.so "$stage/pkg/memwall/libmemwall.so"
"$venv/bin/python" -m pip install -q --no-deps --force-reinstall "$stage/pkg"
out=$("$venv/bin/python" python/bench/overhead.py .build/release/memwall "$@")
echo "$out"
echo "$out" | scripts/results-splice "## C ABI and Python (issue 13)" "### Python package overhead"
