#!/usr/bin/env bash
# Issue-6 targets on the full Mooncake conversation trace: hit rates (single tier,
# three tiers) against the published LRU reference, lookups per second, metadata
# per block, and routing across 8 workers. Writes "### Latest make bench run"
# under "## KV placement (issue 6)" in Benchmarks/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
memwall=${MEMWALL:-.build/release/memwall}
trace=../shared/data/traces/conversation_trace.jsonl
[ -x "$memwall" ] || { echo "bench-kv: build first: swift build -c release --product memwall" >&2; exit 3; }
[ -f "$trace" ] || { echo "bench-kv: $trace is missing (../shared/data); skipping the KV benchmarks" >&2; exit 0; }
out=$(mktemp); trap 'rm -f "$out"' EXIT
run() {
  echo "\$ memwall ${*}" >> "$out"
  echo '```' >> "$out"
  "$memwall" "$@" --quiet 2>&1 | sed "s#$trace#conversation_trace.jsonl#" >> "$out"
  echo '```' >> "$out"
  echo >> "$out"
}
run kv replay "$trace" --tiers dram:10000 --policy lru,lfuda --repeat 3
run kv replay "$trace" --tiers dram:5000,far:15000,nvme:100000 --policy lru,lfuda --repeat 3
run kv route "$trace" --workers 8 --capacity 6000
{
  echo "### Latest make bench run"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), release build, load average $(cut -d' ' -f1-3 /proc/loadavg)."
  echo "References: LRU 0.211 at 10k blocks; ideal 0.366 (target ≥ 0.95× = 0.348 for the three tiers);"
  echo "routing target hit ≥ 0.33 with max/mean ≤ 1.1 (../shared/data/traces/README.md)."
  echo
  cat "$out"
} | scripts/results-splice "## KV placement (issue 6)" "### Latest make bench run"
echo "bench-kv: figures written to Benchmarks/RESULTS.md" >&2
