#!/usr/bin/env bash
# Times `memwall topo` against `lstopo-no-graphics` on the same inputs (issue 3):
# the live machine and the 64-node sysfs snapshot 256ia64-64n2s2c from ../shared.
# Runs alternate between the commands (so load changes hit both alike) and the
# median wall time of each is printed with its ratio to lstopo.
#
#   Benchmarks/topo-vs-lstopo.sh [RUNS] [MEMWALL_BINARY]
#
# Build first: swift build -c release --product memwall --static-swift-stdlib
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-100}
memwall=${2:-$here/.build/release/memwall}
tarball="$here/../shared/data/hwloc-xml/linux-fsroot/256ia64-64n2s2c.tar.bz2"
command -v lstopo-no-graphics >/dev/null || { echo "needs lstopo-no-graphics (apt-get install hwloc)" >&2; exit 3; }
[ -x "$memwall" ] || { echo "no $memwall: build it first (swift build -c release --product memwall)" >&2; exit 3; }
[ -f "$tarball" ] || { echo "needs $tarball (../shared/data)" >&2; exit 3; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
tar xjf "$tarball" -C "$work"
fsroot="$work/256ia64-64n2s2c"

python3 - "$runs" "$memwall" "$fsroot" <<'PY'
import statistics, subprocess, sys, time
runs, memwall, fsroot = int(sys.argv[1]), sys.argv[2], sys.argv[3]
pairs = [
    ("live", [memwall, "topo"], ["lstopo-no-graphics"]),
    ("64-node fsroot", [memwall, "topo", "--fsroot", fsroot], ["lstopo-no-graphics", "-i", fsroot]),
]
def once(argv):
    t0 = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - t0) * 1000
for name, ours, ref in pairs:
    for argv in (ours, ref):
        for _ in range(3): once(argv)  # warm the page cache
    a, b = [], []
    for i in range(runs):
        if i % 2: a.append(once(ours)); b.append(once(ref))
        else: b.append(once(ref)); a.append(once(ours))
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"{name:15s} memwall {ma:7.2f} ms  lstopo {mb:7.2f} ms  ratio {ma / mb:4.2f}  (median of {runs})")
PY
