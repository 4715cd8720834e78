#!/usr/bin/env bash
# Side-by-side benchmarks for issue 4 (memory and storage transports): memwall's
# release build against fio (io_uring engine, O_DIRECT, same file, block size and
# depth) and against a one-thread C memcpy of buffers on the same nodes. Writes
# the ratios to Benchmarks/RESULTS.md under "## Transport: memory and storage (issue 4)".
#
#   scripts/bench-local.sh            host run (scratch file in $BENCH_DIR, default /var/tmp)
#   scripts/bench-local.sh --lab      the same inside the lab guest (node 1, /dev/nvme0n1)
#   scripts/bench-local.sh --in-guest (used by --lab: prints the section, writes nothing)
#
# Environment: BENCH_SECONDS (per run, default 5), BENCH_ROUNDS (default 3; figures are medians),
# BENCH_DIR, BENCH_SIZE (scratch file size, default 1G).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
mode=host
case "${1:-}" in
  --lab) mode=lab ;;
  --in-guest) mode=guest ;;
  "") ;;
  *) echo "bench-local: unknown option '$1' (expected --lab or nothing)" >&2; exit 2 ;;
esac
secs=${BENCH_SECONDS:-5}
rounds=${BENCH_ROUNDS:-3}
results=Benchmarks/RESULTS.md
heading="## Transport: memory and storage (issue 4)"
memwall=.build/release/memwall
ref=.build/memcpy_ref

# Replaces this run's subsection ("### Host" or "### Lab guest") under the issue-4
# heading of RESULTS.md, keeping everything else.
splice() {  # marker body
  python3 - "$results" "$heading" "$1" "$2" <<'PY'
import sys, re
path, heading, marker, body = sys.argv[1:5]
try:
    text = open(path).read()
except FileNotFoundError:
    text = "# Benchmark results\n"
if heading not in text:
    text = text.rstrip() + "\n\n" + heading + "\n"
start = text.index(heading) + len(heading)
nxt = re.search(r"^## ", text[start:], re.M)
end = start + nxt.start() if nxt else len(text)
parts = [p for p in re.split(r"(?m)^(?=### )", text[start:end]) if not p.startswith(marker)]
section = "\n\n" + ("".join(parts).strip() + "\n\n" if "".join(parts).strip() else "") + body.strip() + "\n\n"
open(path, "w").write(text[:start] + section + text[end:])
PY
}

for tool in fio cc python3; do
  command -v "$tool" >/dev/null || { echo "bench-local: '$tool' is missing (apt-get install fio gcc python3)" >&2; exit 3; }
done

if [ "$mode" != guest ]; then
  echo "bench-local: building memwall (release) and the C memcpy reference" >&2
  swift build -c release --product memwall >&2
  cc -O2 -o "$ref" Benchmarks/memcpy_ref.c -lnuma
fi

if [ "$mode" = lab ]; then
  out=$(mktemp)
  BENCH_SECONDS=${BENCH_SECONDS:-3} scripts/lab -- "BENCH_SECONDS=${BENCH_SECONDS:-3} BENCH_ROUNDS=$rounds scripts/bench-local.sh --in-guest" | tee "$out"
  section=$(sed -n '/^### /,$p' "$out")
  rm -f "$out"
  [ -n "$section" ] || { echo "bench-local: the guest printed no results" >&2; exit 1; }
  splice "### Lab guest" "$section"
  echo "bench-local: lab figures written to $results" >&2
  exit 0
fi

# ---- the measurements (host or guest) ----
if [ "$mode" = guest ]; then
  file=${MEMWALL_LAB_NVME:-/dev/nvme0n1}
  size=$(( $(blockdev --getsize64 "$file") ))
  src_node=0; dst_node=1; c_dst=1
  where="lab guest (QEMU TCG: node 1 CPU-less 250 ns/64 GB/s by HMAT, emulated NVMe $file)"
else
  dir=${BENCH_DIR:-/var/tmp}
  file="$dir/memwall-bench-local-$$.bin"
  trap 'rm -f "$file"' EXIT
  size=$(python3 -c "import sys;u={'K':1<<10,'M':1<<20,'G':1<<30};s='${BENCH_SIZE:-1G}';print(int(s[:-1])*u[s[-1]] if s[-1] in u else int(s))")
  echo "bench-local: laying out $file with fio" >&2
  fio --name=layout --filename="$file" --size="$size" --rw=write --bs=1M --direct=1 --ioengine=io_uring --iodepth=8 >/dev/null
  src_node=0; dst_node=$(.build/release/memwall bench memory --sizes 4k --seconds 0.01 --no-latency --quiet --json \
                          | python3 -c "import json,sys;n=json.load(sys.stdin)['nodes'];print(max(x['id'] for x in n))")
  # The emulated far pool is DRAM on node 0: that is where the C reference copies to.
  c_dst=0
  where="host $(uname -n) ($(nproc) CPUs; far node $dst_node $( [ "$dst_node" = 0 ] || echo '= emulated pool in DRAM'))"
fi
size_g=$(( size >> 20 ))M
load_start=$(uptime | sed 's/.*load average: //')

# fio's io_uring engine defaults (fio 3.x): fixedbufs, registerfiles, hipri, sqthread_poll off;
# iodepth_batch_submit and iodepth_batch_complete_min 1. A 4th argument adds options
# (e.g. "--fixedbufs --registerfiles" to compare with memwall's fixed buffers and files).
fio_run() {  # rw bs qd [extra options] -> "iops bytes_per_second"
  # shellcheck disable=SC2086
  fio --name=ref --filename="$file" --size="$size" --rw="$1" --bs="$2" --iodepth="$3" --direct=1 \
      --ioengine=io_uring ${4:-} --runtime="$secs" --time_based --ramp_time=1 --norandommap --randrepeat=0 \
      --output-format=json 2>/dev/null \
    | python3 -c "import json,sys;r=json.load(sys.stdin)['jobs'][0]['read'];print(r['iops'],r['bw_bytes'])"
}

mw_run() {  # transport pattern qd [completions] [extra options] -> "iops bytes_per_second"
  # shellcheck disable=SC2086
  "$memwall" bench storage --file "$file" --size "$size_g" --transport "$1" --patterns "$2" --qd "$3" \
      --completions "${4:-direct}" ${5:-} \
      --seconds "$secs" --quiet --json \
    | python3 -c "import json,sys;p=json.load(sys.stdin)['points'][0];print(p['iops'],p['gigabytesPerSecond']*1e9)"
}

# Medians, not means: on a shared machine one round can fall on someone's build.
avg() { python3 -c "import sys,statistics;print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }

declare -a fr_iops mr_iops ff_iops mf_iops mq_iops mt_iops pr_iops fs_bw ms_bw
for r in $(seq 1 "$rounds"); do
  echo "bench-local: round $r/$rounds: storage" >&2
  # Interleaved: each memwall run sits between fio runs, under the same load.
  read -r a _ < <(fio_run randread 4k 32); fr_iops+=("$a")
  read -r a _ < <(mw_run io_uring randread 32 direct "--no-fixed --spin-us 1000"); mr_iops+=("$a")
  read -r a _ < <(fio_run randread 4k 32 "--fixedbufs --registerfiles"); ff_iops+=("$a")
  read -r a _ < <(mw_run io_uring randread 32 direct "--spin-us 1000"); mf_iops+=("$a")
  read -r a _ < <(mw_run io_uring randread 32 poll); mq_iops+=("$a")
  read -r a _ < <(mw_run io_uring randread 32 thread); mt_iops+=("$a")
  read -r a _ < <(mw_run pread-pool randread 32); pr_iops+=("$a")
  read -r _ b < <(fio_run read 1M 16); fs_bw+=("$b")
  read -r _ b < <(mw_run io_uring seqread 16 poll); ms_bw+=("$b")
done
F_IOPS=$(avg "${fr_iops[@]}"); M_IOPS=$(avg "${mr_iops[@]}"); P_IOPS=$(avg "${pr_iops[@]}"); T_IOPS=$(avg "${mt_iops[@]}")
FF_IOPS=$(avg "${ff_iops[@]}"); MF_IOPS=$(avg "${mf_iops[@]}"); MQ_IOPS=$(avg "${mq_iops[@]}")
F_BW=$(avg "${fs_bw[@]}"); M_BW=$(avg "${ms_bw[@]}")
ints() { python3 -c "import sys;print(', '.join(f'{float(x):,.0f}' for x in sys.argv[1:]))" "$@"; }
ROUNDS_4K="fio defaults [$(ints "${fr_iops[@]}")], memwall --no-fixed [$(ints "${mr_iops[@]}")]; fio --fixedbufs --registerfiles [$(ints "${ff_iops[@]}")], memwall [$(ints "${mf_iops[@]}")]"

echo "bench-local: memory" >&2
declare -a c_bw m_bw
for r in $(seq 1 "$rounds"); do
  c_bw+=("$("$ref" $((64 << 20)) "$src_node" "$c_dst" "$secs")")
  m_bw+=("$("$memwall" bench memory --sizes 64M --seconds "$secs" --no-latency --quiet --json \
      | python3 -c "import json,sys;c=[x for x in json.load(sys.stdin)['copies'] if x['fromNode']==$src_node and x['toNode']==$dst_node][0];print(c['gigabytesPerSecond'], c['threads'])")")
done
C_BW=$(avg "${c_bw[@]}")
M_CP=$(avg $(for x in "${m_bw[@]}"; do echo "${x%% *}"; done))
M_TH=${m_bw[0]##* }

python3 - "$where" "$F_IOPS" "$M_IOPS" "$P_IOPS" "$F_BW" "$M_BW" "$C_BW" "$M_CP" "$M_TH" "$secs" "$rounds" "$mode" "$src_node" "$dst_node" "$file" "$T_IOPS" "$c_dst" "$(uptime | sed 's/.*load average: //')" "$FF_IOPS" "$MF_IOPS" "$MQ_IOPS" "$load_start" "$(fio --version)" "$ROUNDS_4K" <<'PY' > /tmp/memwall-bench-section.$$
import sys, datetime
where, fi, mi, pi, fb, mb, cb, mc, th, secs, rounds, mode, s, d, f, ti, cd, load, ffi, mfi, mqi, load0, fiov, rounds4k = sys.argv[1:25]
ti, ffi, mfi, mqi = float(ti), float(ffi), float(mfi), float(mqi)
fi, mi, pi, fb, mb, cb, mc = map(float, (fi, mi, pi, fb, mb, cb, mc))
def ok(r, t): return "meets" if r >= t else "below"
title = "### Lab guest" if mode == "guest" else "### Host"
print(f"{title} ({datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC)\n")
print(f"Where: {where}. Each figure is the median of {rounds} interleaved rounds of {secs} s (fio, memwall, fio, memwall, …); release build; {fiov}; load average at the start {load0}, at the end {load} (shared machine).\n")
print("| measurement | memwall | reference | ratio | target |")
print("|---|---|---|---|---|")
print(f"| 4 KiB random read, QD32, O_DIRECT (IOPS), plain buffers and fds both sides | {mi:,.0f} (io_uring direct queue, --no-fixed --spin-us 1000) | {fi:,.0f} (fio io_uring, defaults) | {mi/fi:.2f}x | >= 1.0x: {ok(mi/fi,1.0)} |")
print(f"| same, fixed buffers and files both sides (IOPS) | {mfi:,.0f} (io_uring direct queue, --spin-us 1000) | {ffi:,.0f} (fio --fixedbufs --registerfiles) | {mfi/ffi:.2f}x | >= 1.0x: {ok(mfi/ffi,1.0)} |")
print(f"| same, a TransferRequest per I/O, caller reaps (IOPS) | {mqi:,.0f} (URingTransport.post + reapCompletions) | {fi:,.0f} (fio io_uring, defaults) | {mqi/fi:.2f}x | report |")
print(f"| same, a TransferRequest per I/O, the transport's completion thread (IOPS) | {ti:,.0f} | {fi:,.0f} (fio io_uring, defaults) | {ti/fi:.2f}x | report |")
print(f"| 1 MiB sequential read, QD16, O_DIRECT (GB/s) | {mb/1e9:.3f} (io_uring) | {fb/1e9:.3f} (fio io_uring) | {mb/fb:.2f}x | >= 0.95x: {ok(mb/fb,0.95)} |")
print(f"| 4 KiB random read, QD32: io_uring vs own pread pool (IOPS) | {mfi:,.0f} | {pi:,.0f} (pread-pool, 32 threads) | {mfi/pi:.2f}x | report |")
print(f"| 64 MiB copy node {s} -> node {d} (GB/s) | {mc:.2f} (numa transport, {th} threads) | {cb:.2f} (C memcpy node {s} -> node {cd}, 1 thread) | {mc/cb:.2f}x | >= 0.9x: {ok(mc/cb,0.9)} |")
print()
print(f"4 KiB QD32 IOPS per round, in run order: {rounds4k}.\n")
print("Commands (the script runs them; FILE is " + (f"`{f}`" if mode == "guest" else "a scratch file laid out by fio") + "):\n")
print("```")
print(f"fio --name=ref --filename=FILE --rw=randread --bs=4k --iodepth=32 --direct=1 --ioengine=io_uring --runtime={secs} --time_based --ramp_time=1 --norandommap --randrepeat=0")
print(f"memwall bench storage --file FILE --transport io_uring --patterns randread --qd 32 --seconds {secs} --json --no-fixed --spin-us 1000")
print(f"fio ... (as above) --fixedbufs --registerfiles")
print(f"memwall bench storage --file FILE --transport io_uring --patterns randread --qd 32 --seconds {secs} --json --spin-us 1000   # and --completions poll / thread (no --spin-us)")
print(f"memwall bench storage --file FILE --transport pread-pool --patterns randread --qd 32 --seconds {secs} --json")
print(f"fio --name=ref --filename=FILE --rw=read --bs=1M --iodepth=16 --direct=1 --ioengine=io_uring --runtime={secs} --time_based --ramp_time=1")
print(f"memwall bench storage --file FILE --transport io_uring --patterns seqread --qd 16 --seconds {secs} --json --completions poll")
print(f"Benchmarks/memcpy_ref {64<<20} {s} {cd} {secs}     # cc -O2 Benchmarks/memcpy_ref.c -lnuma")
print(f"memwall bench memory --sizes 64M --seconds {secs} --no-latency --json")
print("```")
if mode == "guest":
    print("\nUnder TCG absolute figures are meaningless; only the ratios within this run count.")
PY

if [ "$mode" = guest ]; then
  cat /tmp/memwall-bench-section.$$
  rm -f /tmp/memwall-bench-section.$$
  exit 0
fi
section=$(cat /tmp/memwall-bench-section.$$)
rm -f /tmp/memwall-bench-section.$$
echo "$section"
splice "### Host" "$section"
echo "bench-local: host figures written to $results" >&2
