#!/usr/bin/env bash
# Issue-14 targets for the host-wide KV pool, each next to its reference in one run:
# lookups per second per process with 4 processes attached (target >= 1 M/s), load() of
# 256 KiB blocks against a one-thread memcpy of the same bytes (>= 0.9x), reading blocks in
# place against the same pass over private memory, and the conversation trace split across
# 4 processes sharing one pool against 4 private pools of the same total size.
# Writes "### Latest make bench run" under "## KV pool (issue 14)" in Benchmarks/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
memwall=${MEMWALL:-.build/release/memwall}
trace=../shared/data/traces/conversation_trace.jsonl
[ -f "$trace" ] || trace=traces/conversation-head-2000.jsonl
[ -x "$memwall" ] || { echo "bench-pool: build first: swift build -c release --product memwall" >&2; exit 3; }
out=$(mktemp); trap 'rm -f "$out"' EXIT
run() {
  echo "\$ memwall ${*}" >> "$out"
  echo '```' >> "$out"
  "$memwall" "$@" --quiet 2>&1 | sed "s#$trace#$(basename "$trace")#" >> "$out"
  echo '```' >> "$out"
  echo >> "$out"
}
run bench pool --processes 4 --seconds ${BENCH_SECONDS:-3} --trace "$trace" --trace-capacity 10000
{
  echo "### Latest make bench run"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), release build, $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)."
  echo "Targets: lookups >= 1 M/s per process with 4 processes attached; copy-load of 256 KiB blocks"
  echo ">= 0.9x memcpy; in-place reads at memory bandwidth. The pool's pages are tmpfs (/dev/shm,"
  echo "4 KiB pages: shmem THP is off on this host); the private reference is anonymous memory."
  echo
  cat "$out"
} | scripts/results-splice "## KV pool (issue 14)" "### Latest make bench run"
echo "bench-pool: figures written to Benchmarks/RESULTS.md" >&2
