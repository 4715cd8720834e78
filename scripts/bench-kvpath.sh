#!/usr/bin/env bash
# Issue 12's KV data path: `memwall bench kv` (release) at 256 KiB blocks — the size the targets
# are judged at — and at 4 KiB and 2 MiB. Each run puts fio (same file, block size, queue depth,
# direction, O_DIRECT, io_uring) and a one-thread memcpy (same bytes, far tier) beside the KV
# cache, so every ratio comes from one run. Writes "### Host" (or "### Lab guest") under
# "## KV data path (issue 12)" in Benchmarks/RESULTS.md through scripts/results-splice.
#
#   scripts/bench-kvpath.sh             host run (scratch file in $KV_DIR, default /var/tmp)
#   scripts/bench-kvpath.sh --lab       the same inside the lab guest (node 1, /dev/nvme0n1)
#   scripts/bench-kvpath.sh --in-guest  (used by --lab: prints the section, writes nothing)
#
# Environment: KV_SIZES (block sizes, default "256k 4k 2M"), KV_BYTES (per phase, default 1G on
# the host, 256M in the guest), KV_BATCH (32), KV_QD (32), KV_DIR (/var/tmp).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=host
case "${1:-}" in
  --lab) mode=lab ;;
  --in-guest) mode=guest ;;
  "") ;;
  *) echo "bench-kvpath: unknown option '$1' (expected --lab or nothing)" >&2; exit 2 ;;
esac
heading="## KV data path (issue 12)"
memwall=.build/release/memwall
sizes=${KV_SIZES:-256k 4k 2M}
batch=${KV_BATCH:-32}
qd=${KV_QD:-32}

command -v python3 >/dev/null || { echo "bench-kvpath: python3 is missing (apt-get install python3)" >&2; exit 3; }
command -v fio >/dev/null || echo "bench-kvpath: fio is missing (scripts/install-deps installs it): the NVMe references will read 'skipped'" >&2

if [ "$mode" != guest ]; then
  echo "bench-kvpath: building memwall (release)" >&2
  swift build -c release --product memwall >&2
fi

if [ "$mode" = lab ]; then
  out=$(mktemp); trap 'rm -f "$out"' EXIT
  # Node 1 holds the far tier and the memcpy reference's region (a phase each); the disk the NVMe tier.
  scripts/lab --far 2G --nvme 2G -- "KV_SIZES='$sizes' KV_BYTES=${KV_BYTES:-256M} KV_BATCH=$batch KV_QD=$qd scripts/bench-kvpath.sh --in-guest" | tee "$out"
  section=$(sed -n '/^### /,$p' "$out")
  [ -n "$section" ] || { echo "bench-kvpath: the guest printed no results" >&2; exit 1; }
  printf '%s\n' "$section" | scripts/results-splice "$heading" "### Lab guest"
  echo "bench-kvpath: lab figures written to Benchmarks/RESULTS.md" >&2
  exit 0
fi

if [ "$mode" = guest ]; then
  bytes=${KV_BYTES:-256M}
  where="lab guest (QEMU: node 1 CPU-less, emulated NVMe ${MEMWALL_LAB_NVME:-/dev/nvme0n1}); absolute figures mean nothing under TCG, ratios within the run do"
  target=(--file "${MEMWALL_LAB_NVME:-/dev/nvme0n1}" --allow-write)
  shown_target="--file ${MEMWALL_LAB_NVME:-/dev/nvme0n1} --allow-write"
else
  bytes=${KV_BYTES:-1G}
  where="host $(uname -n) ($(nproc) CPUs, shared with other jobs)"
  target=(--dir "${KV_DIR:-/var/tmp}")
  shown_target=""
fi

runs=$(mktemp -d); trap 'rm -rf "$runs"' EXIT
load0=$(cut -d' ' -f1-3 /proc/loadavg)
i=0
for bs in $sizes; do
  i=$((i + 1))
  echo "bench-kvpath: memwall bench kv --block-bytes $bs --bytes $bytes" >&2
  "$memwall" bench kv --block-bytes "$bs" --batch "$batch" --qd "$qd" --bytes "$bytes" "${target[@]}" --json --quiet \
    > "$runs/$i.json"
done
load1=$(cut -d' ' -f1-3 /proc/loadavg)

title="### Host"; [ "$mode" = guest ] && title="### Lab guest"
python3 - "$runs" "$title" "$where" "$bytes" "$batch" "$qd" "$shown_target" "$load0" "$load1" <<'PY' > "$runs/section.md"
import json, os, sys, datetime
runs, title, where, nbytes, batch, qd, shown_target, load0, load1 = sys.argv[1:10]
reports = [json.load(open(os.path.join(runs, f))) for f in sorted(os.listdir(runs), key=lambda f: int(f.split('.')[0])) if f.endswith('.json')]
def kib(n): return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"
def gb(x): return "—" if x is None else f"{x:.3f}"
def ratio(x): return "—" if x is None else f"{x:.2f}×"
def us(ns): return "—" if ns is None else f"{ns / 1000:.1f}"
def judge(value, ok): return "no reference" if value is None else ("met" if ok(value) else "**not met**")
print(f"{title} ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC)\n")
first = reports[0]
print(f"Where: {where}. Release build; {first.get('fio') or 'fio missing'}; batches of {batch} blocks, QD {qd}, "
      f"{nbytes} per phase; far tier: {first['farMemory']}; NVMe tier on {first['file'].rsplit('/', 1)[0] + '/…' if 'memwall-bench-kv' in first['file'] else first['file']} "
      f"({first['accessMode']}). Load average {load0} at the start, {load1} at the end.\n")
for r in reports:
    print(f"**{kib(r['blockBytes'])} blocks** ({r['blocksPerPhase']} per phase)\n")
    print("| phase | tier | KV cache GB/s | reference GB/s | ratio | batch p50 µs | batch p99 µs | reference batch µs | p50 / reference | reference |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p in r["phases"]:
        ref = p["referenceTool"] + (f" — skipped: {p['reference']['skipped']}" if p["reference"].get("skipped") else "")
        print(f"| {p['phase']} | {p['tier']} | {gb(p['gigabytesPerSecond'])} | {gb(p['referenceGigabytesPerSecond'])} | {ratio(p['ratio'])} "
              f"| {us(p['latencyP50'])} | {us(p['latencyP99'])} | {us(p['referenceBatchLatency'])} | {ratio(p['batchLatencyRatio'])} | {ref} |")
    l = r["lookupWhileOnloading"]
    print(f"\n`lookup` of a cached {l['keys']}-key prefix on another thread while {kib(l['onloadBytes'])} is onloaded from {l['onloadTier']} "
          f"in one load call ({l['onloadNanoseconds'] / 1e6:.1f} ms): {l['lookups']:,} lookups, p50 {l['latencyP50']:,} ns, "
          f"p99 {l['latencyP99']:,} ns, max {l['latencyMax']:,} ns{'' if l['allHit'] else ' (some missed part of the prefix)'}.\n")
    for n in r["notes"]:
        print(f"- {n}")
    if r["notes"]:
        print()
main = next((r for r in reports if r["blockBytes"] == 262144), None)
if main:
    ph = {(p["phase"], p["tier"]): p for p in main["phases"]}
    print("Targets (issue 12, judged at 256 KiB in this run):\n")
    print("| target | measured | status |")
    print("|---|---|---|")
    for (d, t, want) in [("onload", "nvme", 0.9), ("offload", "nvme", 0.9), ("onload", "far", 0.9), ("offload", "far", 0.9)]:
        p = ph[(d, t)]
        ref = "fio" if t == "nvme" else "one-thread memcpy"
        print(f"| {t} {d} ≥ {want}× {ref} | {ratio(p['ratio'])} | {judge(p['ratio'], lambda v: v >= want)} |")
    p = ph[("onload", "nvme")]
    print(f"| {batch}-block onload p50 ≤ 1.2× fio's time for the same {batch} blocks at QD {qd} | {ratio(p['batchLatencyRatio'])} "
          f"({us(p['latencyP50'])} vs {us(p['referenceBatchLatency'])} µs) | {judge(p['batchLatencyRatio'], lambda v: v <= 1.2)} |")
    l = main["lookupWhileOnloading"]
    print(f"| lookup p99 ≤ 50 µs while {kib(l['onloadBytes'])} is onloaded | {l['latencyP99'] / 1000:.1f} µs over {l['lookups']:,} lookups "
          f"| {judge(l['latencyP99'] if l['lookups'] else None, lambda v: v <= 50_000)} |")
    print()
    bm = p["reference"].get("batchLatencyMethod")
    if bm:
        print(f"fio's batch time: {bm}.\n")
print("Commands (the script runs them; fio runs inside each, its command line is in the JSON's `reference.command`):\n")
print("```")
for r in reports:
    t = f" {shown_target}" if shown_target else ""
    print(f"memwall bench kv --block-bytes {r['blockBytes']} --batch {batch} --qd {qd} --bytes {nbytes}{t} --json")
for p in (main or reports[0])["phases"]:
    for c in (p["reference"].get("command"), p["reference"].get("batchCommand")):
        if c and c.startswith(("fio", "/")):
            print(c.replace((main or reports[0])["file"], "FILE"))
print("```")
PY

if [ "$mode" = guest ]; then
  cat "$runs/section.md"
  exit 0
fi
cat "$runs/section.md"
scripts/results-splice "$heading" "### Host" < "$runs/section.md"
echo "bench-kvpath: host figures written to Benchmarks/RESULTS.md" >&2
