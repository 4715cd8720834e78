#!/usr/bin/env bash
# Issue 12, the replay half: `memwall kv replay --real-bytes` on the KV data path at 256 KiB
# and 4 KiB blocks, and fio's mixed random read/write on a file in the same directory, with the
# replay's own read share, block size and O_DIRECT, at the replay's io_uring queue depth (32)
# and at 8. The measure compared with fio is the replay's NVMe bytes over the time its NVMe I/O
# was in flight ("nvme while busy"): what the engine drew from the device while it used it. The
# replay is one thread that also generates and compares payloads between I/Os, so its wall-time
# rate is printed beside it but is not a device measure.
# Writes "### Real-bytes replay vs fio" under "## KV data path (issue 12)" in Benchmarks/RESULTS.md.
#   scripts/bench-kvreplay.sh [--print]    (--print: only print the section)
set -euo pipefail
cd "$(dirname "$0")/.."
memwall=${MEMWALL:-.build/release/memwall}
dir=${BENCH_DIR:-/var/tmp}
[ -x "$memwall" ] || { echo "bench-kvreplay: build first: swift build -c release --product memwall" >&2; exit 3; }
command -v fio >/dev/null || { echo "bench-kvreplay: fio is missing (apt-get install fio)" >&2; exit 3; }
trace=traces/conversation-head-2000.jsonl
work=$(mktemp -d "$dir/memwall-bench-kvreplay.XXXXXX"); trap 'rm -rf "$work"' EXIT
out=$work/section.md

replay() {  # block bytes → JSON file
  "$memwall" kv replay "$trace" --real-bytes --block-bytes "$1" --tiers dram:300,far:600,nvme:8000 \
    --limit 800 --policy lru --dir "$work" --quiet --json > "$work/replay-$1.json"
}
fio_mix() {  # block bytes, read percent, queue depth → "GB/s"
  fio --name=mix --filename="$work/fio.bin" --size=2g --bs="$1" --iodepth="$3" --rw=randrw --rwmixread="$2" \
      --direct=1 --ioengine=io_uring --runtime=8 --time_based --group_reporting --output-format=json 2>/dev/null |
    python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; print("%.3f" % ((j["read"]["bw_bytes"]+j["write"]["bw_bytes"])/1e9))'
}
{
  echo "### Real-bytes replay vs fio"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), release build, load average $(cut -d' ' -f1-3 /proc/loadavg); files in $dir."
  echo "Target: NVMe bytes at ≥ 0.7× fio's mixed throughput (256 KiB); at 4 KiB not slower than before the data path."
  echo
  echo '```'
  echo "memwall kv replay $trace --real-bytes --block-bytes B --tiers dram:300,far:600,nvme:8000 --limit 800 --policy lru"
  echo "fio --rw=randrw --rwmixread=<replay's read share> --bs=B --iodepth=32|8 --direct=1 --ioengine=io_uring --size=2g --runtime=8"
  echo '```'
  echo
  echo "| block | hit rate | replay wall | NVMe read / written | NVMe busy | **while busy** | over wall time | fio mix QD32 | fio mix QD8 | ratio (busy / fio QD32) |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
} > "$out"
for bytes in 262144 4096; do
  replay "$bytes"
  read -r hit wall rd wr busy < <(python3 - "$work/replay-$bytes.json" <<'EOF'
import json, sys
p = json.load(open(sys.argv[1]))["policies"][0]
paths = p["bytesMovedByPath"]
rd = sum(v for k, v in paths.items() if not k.startswith("cpu") and "nvme ->" in k)
wr = sum(v for k, v in paths.items() if not k.startswith("cpu") and k.endswith("-> nvme"))
print(p["hitRate"], p["seconds"], rd, wr, p["deviceBusySeconds"].get("nvme", 0))
EOF
)
  readpct=$(python3 -c "print(max(1, min(99, round(100 * $rd / max(1, $rd + $wr)))))")
  f32=$(fio_mix "$bytes" "$readpct" 32)
  f8=$(fio_mix "$bytes" "$readpct" 8)
  python3 - "$bytes" "$hit" "$wall" "$rd" "$wr" "$busy" "$f32" "$f8" "$readpct" >> "$out" <<'EOF'
import sys
b, hit, wall, rd, wr, busy, f32, f8, pct = sys.argv[1:]
b, hit, wall, rd, wr, busy, f32, f8 = int(b), float(hit), float(wall), int(rd), int(wr), float(busy), float(f32), float(f8)
gb = (rd + wr) / 1e9
tb = gb / busy if busy > 0 else 0
tw = gb / wall if wall > 0 else 0
print(f"| {b // 1024} KiB | {hit:.4f} | {wall:.2f} s | {rd / 2**20:.0f} / {wr / 2**20:.0f} MiB ({pct} % reads) | {busy:.2f} s "
      f"| **{tb:.2f} GB/s** | {tw:.2f} GB/s | {f32:.2f} GB/s | {f8:.2f} GB/s | **{tb / f32:.2f}×** |")
EOF
done
if [ "${1:-}" = --print ]; then cat "$out"; else scripts/results-splice "## KV data path (issue 12)" "### Real-bytes replay vs fio" < "$out"; cat "$out"; fi
