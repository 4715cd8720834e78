#!/usr/bin/env bash
# Issue-3 target: memwall topo no slower than lstopo-no-graphics on the live host
# and on the 64-node sysfs snapshot (medians of interleaved runs). Builds memwall
# with the Swift runtime linked statically, as a release would ship it, and
# writes "### Latest make bench run" under "## Topology (issue 3)".
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${TOPO_RUNS:-60}
scratch=.build-static
swift build -c release --product memwall --static-swift-stdlib --scratch-path "$scratch" >/dev/null
table=$(Benchmarks/topo-vs-lstopo.sh "$runs" "$scratch/release/memwall")
echo "$table"
{
  echo "### Latest make bench run"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg);"
  echo "\`swift build -c release --product memwall --static-swift-stdlib\` then \`Benchmarks/topo-vs-lstopo.sh $runs\`:"
  echo
  echo '```'
  echo "$table"
  echo '```'
} | scripts/results-splice "## Topology (issue 3)" "### Latest make bench run"
