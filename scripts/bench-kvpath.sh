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
# the host, 256M in the guest), KV_BATCH (32), KV_QD (32), KV_ROUNDS (3; figures are medians),
# KV_DIR (/var/tmp). In the lab one round unless KV_ROUNDS says otherwise.
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
rounds=${KV_ROUNDS:-3}

command -v python3 >/dev/null || { echo "bench-kvpath: python3 is missing (apt-get install python3)" >&2; exit 3; }
command -v fio >/dev/null || echo "bench-kvpath: fio is missing (scripts/install-deps installs it): the NVMe references will read 'skipped'" >&2

if [ "$mode" != guest ]; then
  echo "bench-kvpath: building memwall (release)" >&2
  swift build -c release --product memwall >&2
fi

if [ "$mode" = lab ]; then
  rounds=${KV_ROUNDS:-1}   # a TCG guest is slow; one run of each size
  out=$(mktemp); trap 'rm -f "$out"' EXIT
  # Node 1 holds the far tier and the memcpy reference's region (a phase each); the disk the NVMe tier.
  scripts/lab --far 2G --nvme 2G -- "KV_SIZES='$sizes' KV_BYTES=${KV_BYTES:-256M} KV_BATCH=$batch KV_QD=$qd KV_ROUNDS=$rounds scripts/bench-kvpath.sh --in-guest" | tee "$out"
  section=$(sed -n '/^### /,$p' "$out")
  [ -n "$section" ] || { echo "bench-kvpath: the guest printed no results" >&2; exit 1; }
  printf '%s\n' "$section" | scripts/results-splice "$heading" "### Lab guest"
  echo "bench-kvpath: lab figures written to ${RESULTS:-Benchmarks/RESULTS.md}" >&2
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
# Rounds alternate the sizes (256k, 4k, 2M, 256k, …) so a neighbour's burst does not fall on one size only.
for r in $(seq 1 "$rounds"); do
  for bs in $sizes; do
    echo "bench-kvpath: round $r/$rounds: memwall bench kv --block-bytes $bs --bytes $bytes" >&2
    "$memwall" bench kv --block-bytes "$bs" --batch "$batch" --qd "$qd" --bytes "$bytes" "${target[@]}" --json --quiet \
      > "$runs/$bs-$r.json"
  done
done
load1=$(cut -d' ' -f1-3 /proc/loadavg)

title="### Host"; [ "$mode" = guest ] && title="### Lab guest"
python3 - "$runs" "$title" "$where" "$bytes" "$batch" "$qd" "$shown_target" "$load0" "$load1" "$rounds" <<'PY' > "$runs/section.md"
import json, os, sys, datetime, statistics
runs, title, where, nbytes, batch, qd, shown_target, load0, load1, rounds = sys.argv[1:11]
by_size = {}
for f in sorted(os.listdir(runs)):
    if f.endswith(".json"):
        r = json.load(open(os.path.join(runs, f)))
        by_size.setdefault(r["blockBytes"], []).append(r)
def size(n): return f"{n >> 30} GiB" if n >= 1 << 30 and n % (1 << 30) == 0 else f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
def gb(x): return "—" if x is None else f"{x:.3f}"
def ratio(x): return "—" if x is None else f"{x:.2f}×"
def us(ns): return "—" if ns is None else f"{ns / 1000:.1f}"
def judge(value, ok): return "no reference" if value is None else ("met" if ok(value) else "**not met**")
def phase_rows(reports):
    rows = {}
    for r in reports:
        for p in r["phases"]:
            rows.setdefault((p["phase"], p["tier"]), []).append(p)
    return rows
print(f"{title} ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC)\n")
first = next(iter(by_size.values()))[0]
shown_file = first["file"] if "memwall-bench-kv" not in first["file"] else "a private scratch file in " + first["file"].rsplit("/", 1)[0]
print(f"Where: {where}. Release build; {first.get('fio') or 'fio missing'}; batches of {batch} blocks, QD {qd}, "
      f"{nbytes} per phase; far tier: {first['farMemory']}; NVMe tier on {shown_file} ({first['accessMode']}). "
      f"Each figure is the median of {rounds} runs (sizes alternating); in every run fio and memcpy ran beside the cache. "
      f"Load average {load0} at the start, {load1} at the end.\n")
for bs, reports in sorted(by_size.items(), key=lambda kv: (kv[0] != 262144, kv[0])):
    print(f"**{size(bs)} blocks** ({reports[0]['blocksPerPhase']:,} per phase)\n")
    print("| phase | tier | KV cache GB/s | reference GB/s | ratio (per run) | batch p50 µs | batch p99 µs | reference batch µs | p50 / reference | reference |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (d, t), ps in phase_rows(reports).items():
        skipped = next((p["reference"]["skipped"] for p in ps if p["reference"].get("skipped")), None)
        per_run = ", ".join(ratio(p["ratio"]) for p in ps)
        ref = ps[0]["referenceTool"] + (f" — skipped: {skipped}" if skipped else "")
        print(f"| {d} | {t} | {gb(med(p['gigabytesPerSecond'] for p in ps))} | {gb(med(p['referenceGigabytesPerSecond'] for p in ps))} "
              f"| {ratio(med(p['ratio'] for p in ps))} ({per_run}) | {us(med(p['latencyP50'] for p in ps))} | {us(med(p['latencyP99'] for p in ps))} "
              f"| {us(med(p['referenceBatchLatency'] for p in ps))} | {ratio(med(p['batchLatencyRatio'] for p in ps))} | {ref} |")
    ls = [r["lookupWhileOnloading"] for r in reports]
    print(f"\n`lookup` of a cached {ls[0]['keys']}-key prefix on another thread while {size(ls[0]['onloadBytes'])} is onloaded from "
          f"{ls[0]['onloadTier']} in one load call ({med(l['onloadNanoseconds'] for l in ls) / 1e6:.1f} ms): "
          f"{sum(l['lookups'] for l in ls):,} lookups over {len(ls)} runs; p50 {med(l['latencyP50'] for l in ls):,.0f} ns, "
          f"p99 {med(l['latencyP99'] for l in ls):,.0f} ns (per run: {', '.join(format(l['latencyP99'], ',') for l in ls)}), "
          f"max {max(l['latencyMax'] for l in ls):,} ns{'' if all(l['allHit'] for l in ls) else ' (some missed part of the prefix)'}.\n")
    notes = sorted({n for r in reports for n in r["notes"]})
    for n in notes:
        print(f"- {n}")
    if notes:
        print()
main = by_size.get(262144)
if main:
    rows = phase_rows(main)
    print("Targets (issue 12, at 256 KiB; medians of this section's runs):\n")
    print("| target | measured | status |")
    print("|---|---|---|")
    for (d, t, want) in [("onload", "nvme", 0.9), ("offload", "nvme", 0.9), ("onload", "far", 0.9), ("offload", "far", 0.9)]:
        m = med(p["ratio"] for p in rows[(d, t)])
        ref = "fio" if t == "nvme" else "one-thread memcpy"
        print(f"| {t} {d} ≥ {want}× {ref} | {ratio(m)} | {judge(m, lambda v: v >= want)} |")
    ps = rows[("onload", "nvme")]
    m = med(p["batchLatencyRatio"] for p in ps)
    print(f"| {batch}-block onload p50 ≤ 1.2× fio's time for {batch} blocks at QD {qd} | {ratio(m)} "
          f"({us(med(p['latencyP50'] for p in ps))} vs {us(med(p['referenceBatchLatency'] for p in ps))} µs) | {judge(m, lambda v: v <= 1.2)} |")
    ls = [r["lookupWhileOnloading"] for r in main]
    p99 = med(l["latencyP99"] for l in ls if l["lookups"])
    print(f"| lookup p99 ≤ 50 µs while {size(ls[0]['onloadBytes'])} is onloaded | {'—' if p99 is None else f'{p99 / 1000:.1f} µs'} "
          f"(worst run {max(l['latencyP99'] for l in ls) / 1000:.1f} µs) | {judge(p99, lambda v: v <= 50_000)} |")
    print()
    bm = ps[0]["reference"].get("batchLatencyMethod")
    if bm:
        print(f"fio's batch time: {bm}.\n")
print("Commands (the script runs them; each `bench kv` runs fio itself, with the command lines below, FILE being the NVMe tier's file):\n")
print("```")
for bs, reports in sorted(by_size.items(), key=lambda kv: (kv[0] != 262144, kv[0])):
    t = f" {shown_target}" if shown_target else ""
    print(f"memwall bench kv --block-bytes {bs} --batch {batch} --qd {qd} --bytes {nbytes}{t} --json")
ref = (main or next(iter(by_size.values())))[0]
for p in ref["phases"]:
    for c in (p["reference"].get("command"), p["reference"].get("batchCommand")):
        if c and "fio" in c.split()[0]:
            print(c.replace(ref["file"], "FILE"))
print("```")
PY

if [ "$mode" = guest ]; then
  cat "$runs/section.md"
  exit 0
fi
cat "$runs/section.md"
scripts/results-splice "$heading" "### Host" < "$runs/section.md"
echo "bench-kvpath: host figures written to ${RESULTS:-Benchmarks/RESULTS.md}" >&2
