#!/usr/bin/env bash
# Issue 14, point 5: MemWall's intra-host path against NIXL's UCX path, both
# between two processes on this host, same sizes, same loops, one run; the
# table is spliced into Benchmarks/RESULTS.md ("## KV pool (issue 14)").
#
#   scripts/bench-intrahost.sh [--no-splice]
#
# MemWall: `memwall rdma-serve --transport tcp` exports "bench" in a second
# process; `memwall bench rdma --transport tcp --connect` reaches it on the
# intra-host path (process_vm_readv/writev; the JSON says which path the peer
# got, and the run fails if it is not intra-host). The same client with
# `--intra-host off` gives the TCP emulation's figure beside it.
# NIXL: scripts/bench-nixl.py, initiator and target processes, UCX backend with
# UCX_NET_DEVICES=lo; the UCX transport it picked for put and get is read from
# UCX_PROTO_INFO and printed with the table.
# Three configurations, each against NIXL with the same pages:
#   shared       rdma-serve's default: exports in a sealed memfd, which the client
#                maps and copies with memcpy (no system call per transfer);
#   private      exports in private memory: process_vm_readv/writev, the same call
#                UCX's CMA transport makes;
#   private-thp  the same with every buffer on both sides 2 MiB-aligned and advised
#                MADV_HUGEPAGE (memwall --huge-pages; the same mmap and madvise in
#                bench-nixl.py): the kernel's cross-process copy pins page by page,
#                so it depends on the page size more than on anything else.
#
# Environment: SIZES (65536,1048576,4194304), BYTES per bandwidth row (1 GiB),
# LAT_ITERS (1000), ROUNDS (3: the tools alternate, medians are compared),
# NIXL_VENV (.build/nixl-venv; made with `pip install nixl` when missing and
# INSTALL_NIXL=1 — about 6 GB with torch; without it the table says NIXL is missing).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
splice=1
[[ ${1:-} == --no-splice ]] && splice=0
SIZES=${SIZES:-65536,1048576,4194304}
BYTES=${BYTES:-1073741824}
LAT_ITERS=${LAT_ITERS:-1000}
ROUNDS=${ROUNDS:-3}
NIXL_VENV=${NIXL_VENV:-$here/.build/nixl-venv}
bin="$here/.build/release/memwall"

nice swift build -c release --product memwall >&2

nixl_python=""
if [[ -x $NIXL_VENV/bin/python ]] && "$NIXL_VENV/bin/python" -c "import nixl" 2>/dev/null; then
  nixl_python=$NIXL_VENV/bin/python
elif [[ ${INSTALL_NIXL:-0} == 1 ]]; then
  python3 -m venv "$NIXL_VENV" && "$NIXL_VENV/bin/pip" install -q nixl >&2 && nixl_python=$NIXL_VENV/bin/python
fi

tmp=$(mktemp -d)
serve_pids=()
cleanup() {
  for p in "${serve_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

maxsize=$(python3 -c "print(max(int(x) for x in '$SIZES'.split(',')))")
# serve CONFIG FD [args]: the far process for one page configuration; it exits when
# its stdin (a fifo whose writer this script holds on FD) closes. Sets port_CONFIG.
serve() {
  local config=$1 fd=$2; shift 2
  mkfifo "$tmp/stdin-$config"
  "$bin" rdma-serve --transport tcp --address 127.0.0.1 --export "bench:$maxsize:rw" "$@" < "$tmp/stdin-$config" > "$tmp/serve-$config.out" &
  serve_pids+=($!)
  eval "exec $fd> '$tmp/stdin-$config'"
  for _ in $(seq 200); do grep -q listening "$tmp/serve-$config.out" 2>/dev/null && break; sleep 0.1; done
  local p; p=$(awk '/^listening/ {print $2; exit}' "$tmp/serve-$config.out")
  [[ -n $p ]] || { echo "bench-intrahost: rdma-serve did not start: $(cat "$tmp/serve-$config.out")" >&2; exit 1; }
  eval "port_$config=$p"
}
configs=(shared private private_thp)
serve shared 7
serve private 8 --memory private
serve private_thp 9 --memory private --huge-pages

mw() { # mw CONFIG OUT [extra args]
  local config=$1 out=$2; shift 2
  local port; eval "port=\$port_$config"
  local hp=(); [[ $config == private_thp ]] && hp=(--huge-pages)
  "$bin" bench rdma --transport tcp --connect "127.0.0.1:$port" --ops write,read --mode bw,lat --sizes "$SIZES" \
    --bytes-per-size "$BYTES" -n "$LAT_ITERS" "${hp[@]}" --json "$@" > "$out"
}
nixl() { # nixl CONFIG OUT
  local hp=(); [[ $1 == private_thp ]] && hp=(--huge-pages)
  UCX_NET_DEVICES=lo "$nixl_python" scripts/bench-nixl.py --sizes "$SIZES" --bytes-per-size "$BYTES" \
    --lat-iterations "$LAT_ITERS" "${hp[@]}" --output "$2" > "$2.log" 2>&1 || true   # NIXL may crash at exit, after the report
  [[ -s $2 ]] || { echo "bench-intrahost: the NIXL run failed: $(tail -3 "$2.log")" >&2; exit 1; }
}
mw private "$tmp/tcp.json" --mode bw --bytes-per-size $((BYTES / 4)) --intra-host off
for round in $(seq "$ROUNDS"); do
  for config in "${configs[@]}"; do
    mw "$config" "$tmp/mw-$config-$round.json"
    [[ -n $nixl_python ]] && nixl "$config" "$tmp/nixl-$config-$round.json"
  done
done
ucx_tls="NIXL not installed"
nixl_version="-"
if [[ -n $nixl_python ]]; then
  nixl_version=$("$nixl_python" -c "import importlib.metadata as m; print(m.version('nixl'))" 2>/dev/null || echo "?")
  # Which UCX transport served put (WRITE) and get (READ) between the two processes.
  UCX_PROTO_INFO=y UCX_NET_DEVICES=lo "$nixl_python" scripts/bench-nixl.py --sizes "$SIZES" --modes lat --lat-iterations 20 \
    --output "$tmp/proto.json" > "$tmp/proto.log" 2>&1 || true
  ucx_tls=$(python3 - "$tmp/proto.log" <<'PY'
import re, sys
lines = open(sys.argv[1], errors="replace").read().splitlines()
found = {}
for i, l in enumerate(lines):
    if "remote memory" in l and ("ucp_put" in l or "ucp_get" in l):
        what = "put (WRITE)" if "ucp_put" in l else "get (READ)"
        for k in lines[i + 1:i + 8]:
            c = re.search(r"\|\s*[\d.]+\.\.\S+\s*\|\s*[^|]+\|\s*([^|]+?)\s*\|", k)
            if c:
                found.setdefault(what, set()).add(c.group(1))
print("; ".join(f"{k} {', '.join(sorted(v))}" for k, v in sorted(found.items())) or "not reported")
PY
)
fi
exec 7>&- 8>&- 9>&-
for p in "${serve_pids[@]}"; do wait "$p" 2>/dev/null || true; done
serve_pids=()

table=$(python3 - "$tmp" "$ROUNDS" "$SIZES" "$BYTES" "$LAT_ITERS" "$ucx_tls" "$([[ -n $nixl_python ]] && echo 1 || echo 0)" <<'PY'
import glob, json, statistics, sys
tmp, rounds, sizes, nbytes, lat_iters, tls, have_nixl = sys.argv[1:8]
rounds, sizes, nbytes, have_nixl = int(rounds), [int(s) for s in sizes.split(",")], int(nbytes), have_nixl == "1"
med = statistics.median
def rows(path): return json.load(open(path))["rows"]
def pick(rs, op, metric, size, key):
    return next(r[key] for r in rs if r["operation"] == op and r["metric"] == metric and r["bytes"] == size)
paths = {json.load(open(p))["peerPath"] for p in glob.glob(f"{tmp}/mw-*.json")}
if paths != {"intra-host"}:
    sys.exit(f"bench-intrahost: memwall's peer was reached on {paths}, not on the intra-host path")
tcp = json.load(open(f"{tmp}/tcp.json"))
assert tcp["peerPath"] == "tcp-emulation", tcp["peerPath"]
details = {c: json.load(open(f"{tmp}/mw-{c}-1.json"))["peerPathDetail"] for c in ["shared", "private", "private_thp"]}
assert "mapped shared" in details["shared"] and "mapped" not in details["private"], details
def human(n): return f"{n >> 30} GiB" if n >= 1 << 30 else f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"
print("### Intra-host path vs NIXL's UCX path, two processes each")
print()
print(f"Median of {rounds} rounds in one run, the tools alternating. Bandwidth keeps 8 requests of 16 descriptors in flight "
      f"({human(nbytes)} per row); latency is one descriptor per request, one request at a time (typical = median of {lat_iters}).")
print(f"NIXL: UCX backend, UCX_NET_DEVICES=lo; UCX picked {tls} (process_vm_writev/readv).")
print("MemWall, by the memory the far process exports: **shared** (rdma-serve's default, a sealed memfd) — "
      f"{details['shared']}; **private** — {details['private']}, 4 KiB pages; **private THP** — the same with every buffer "
      "on both sides 2 MiB-aligned with MADV_HUGEPAGE, NIXL's too (in the other rows NIXL's buffers are plain pages).")
print()
print("| memwall export memory | op | size | memwall GB/s | NIXL GB/s | ratio | memwall µs | NIXL µs | ratio (NIXL µs / memwall µs) | memwall over TCP GB/s |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
ratios = {}
for config, label in [("shared", "shared (default)"), ("private", "private"), ("private_thp", "private THP")]:
    for op in ["write", "read"]:
        for s in sizes:
            bw = [pick(rows(f"{tmp}/mw-{config}-{r}.json"), op, "bw", s, "gigabytesPerSecond") for r in range(1, rounds + 1)]
            lat = [pick(rows(f"{tmp}/mw-{config}-{r}.json"), op, "lat", s, "typicalMicroseconds") for r in range(1, rounds + 1)]
            tcpbw = f"{pick(tcp['rows'], op, 'bw', s, 'gigabytesPerSecond'):.2f}" if config == "shared" else ""
            if have_nixl:
                nbw = [pick(rows(f"{tmp}/nixl-{config}-{r}.json"), op, "bw", s, "gigabytesPerSecond") for r in range(1, rounds + 1)]
                nlat = [pick(rows(f"{tmp}/nixl-{config}-{r}.json"), op, "lat", s, "typicalMicroseconds") for r in range(1, rounds + 1)]
                ratio, lratio = med(bw) / med(nbw), med(nlat) / med(lat)
                ratios.setdefault(label, []).extend([ratio, lratio])
                print(f"| {label} | {op.upper()} | {human(s)} | {med(bw):.2f} | {med(nbw):.2f} | {ratio:.2f} | {med(lat):.1f} | {med(nlat):.1f} | {lratio:.2f} | {tcpbw} |")
            else:
                print(f"| {label} | {op.upper()} | {human(s)} | {med(bw):.2f} | NIXL not installed | - | {med(lat):.1f} | - | - | {tcpbw} |")
print()
for label, rs in ratios.items():
    print(f"- {label}: lowest ratio {min(rs):.2f}" + (f" ({'meets' if min(rs) >= 1.0 else 'misses'} the ≥ 1.0× target on MemWall's default path)" if label.startswith("shared") else ""))
if ratios:
    print()
    print("Reading it: every row copies the same local and remote range over and over (as perftest and nixlbench do), so the "
          "smaller sizes run from cache on both sides. The shared rows are MemWall's default (any exporter whose region comes from "
          "MemoryRegion.allocateShared, as rdma-serve's do): a memcpy between two mappings of one memfd, no system call per "
          "transfer, where UCX's CMA transport pins the target's pages one at a time in process_vm_*. The private rows are the same "
          "system call on both sides, so their ratio is per-transfer overhead plus this machine's noise; NIXL's own figures for one "
          "setup differ between the shared and private row groups by as much, which is that noise (2 CPUs shared with other builds).")
PY
)
cat > "$tmp/body.md" <<EOF
$table

Commands (release build; \`scripts/bench-intrahost.sh\` with SIZES=$SIZES BYTES=$BYTES LAT_ITERS=$LAT_ITERS ROUNDS=$ROUNDS):
\`memwall rdma-serve --transport tcp --address 127.0.0.1 --export bench:$maxsize:rw [--memory private [--huge-pages]]\` (the second process), and
\`memwall bench rdma --transport tcp --connect 127.0.0.1:PORT --ops write,read --mode bw,lat --sizes $SIZES --bytes-per-size $BYTES -n $LAT_ITERS [--huge-pages] --json\`;
the TCP column is the same client with \`--intra-host off\` (private memory, a quarter of the bytes);
\`UCX_NET_DEVICES=lo python scripts/bench-nixl.py --sizes $SIZES --bytes-per-size $BYTES --lat-iterations $LAT_ITERS [--huge-pages]\`
(PyPI nixl $nixl_version, CPU only; its target progresses UCX every millisecond instead of spinning NIXL's progress thread on one of the two CPUs).
Host: $(nproc) CPUs, Linux $(uname -r), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); other builds may share the machine.
EOF
cat "$tmp/body.md"
if [[ $splice == 1 ]]; then
  scripts/results-splice "## KV pool (issue 14)" "### Intra-host path vs NIXL's UCX path, two processes each" < "$tmp/body.md"
  echo "bench-intrahost: spliced into Benchmarks/RESULTS.md" >&2
fi
