"""The Python package's cost over the library it wraps, measured beside the Swift API in one run.

    python python/bench/overhead.py MEMWALL_CLI [--mib 256] [--rounds 3]

1. lookup of 32 keys through ``memwall.KVCache.lookup``: median of 20,000 calls (target ≤ 5 µs).
2. load of 32 × 256 KiB blocks that sit in the NVMe tier, through ``KVCache.load``, against the
   same load through the Swift API: ``memwall bench kv`` (KVCache.load of a 32-block batch from
   the NVMe tier, queue depth 32, files in the same directory), per-batch p50 of each, in
   alternating rounds (target: Python throughput ≥ 0.95× Swift's, i.e. p50 ≤ 1/0.95 of it).
Prints a Markdown section; nothing here is a test.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

import memwall

BLOCK = 262144
BATCH = 32


def python_round(directory: str, mib: int) -> dict:
    blocks = mib * 2**20 // BLOCK // BATCH * BATCH
    with memwall.KVCache(tiers=f"dram:1,nvme:{blocks + 64}", block_bytes=BLOCK, scratch_dir=directory, policy="lru") as kv:
        # As `memwall bench kv` does: one chain of the whole phase, stored and loaded one batch
        # per call, each batch from and into its own rows of one registered array.
        src = kv.allocate(blocks)
        dst = kv.allocate(blocks)
        rng = np.random.default_rng(1)
        src[:] = rng.integers(0, 256, size=src.shape, dtype=np.uint8)
        # An anchor block in DRAM: the chain after it lands in the NVMe tier (the anchor is
        # held while its children are placed, and DRAM holds one block).
        anchor = memwall.chain_keys(list(range(16)), block_tokens=16, extra=b"anchor")
        kv.store(anchor, src[:1])
        keys = memwall.chain_keys(list(range(16 * blocks)), block_tokens=16, extra=b"phase")
        batches = []
        for b in range(blocks // BATCH):
            part = slice(b * BATCH, (b + 1) * BATCH)
            kv.store(keys[part], src[part], parent=anchor[-1] if b == 0 else keys[b * BATCH - 1])
            batches.append(part)
        tiers = set(kv.tiers(keys))
        if tiers != {1}:
            raise SystemExit(f"overhead: the batches are in tiers {sorted(tiers)}, not only NVMe")
        lookup_keys = keys[:BATCH]
        for _ in range(2000):
            kv.lookup(lookup_keys)
        samples = []
        for _ in range(20000):
            t = time.perf_counter_ns()
            kv.lookup(lookup_keys)
            samples.append(time.perf_counter_ns() - t)
        loads = []
        for part in batches:
            t = time.perf_counter_ns()
            kv.load(keys[part], dst[part])
            loads.append(time.perf_counter_ns() - t)
        if not np.array_equal(dst, src):
            raise SystemExit("overhead: the blocks came back with other bytes")
        return {"lookup_p50_ns": statistics.median(samples), "load_p50_ns": statistics.median(loads),
                "gbps": len(batches) * BATCH * BLOCK / (sum(loads) / 1e9) / 1e9}


def swift_round(cli: str, directory: str, mib: int) -> dict:
    out = subprocess.run([cli, "bench", "kv", "--block-bytes", str(BLOCK), "--batch", str(BATCH), "--qd", "32",
                          "--bytes", f"{mib}M", "--dir", directory, "--fio", "/nonexistent/fio", "--json"],
                         check=True, capture_output=True, text=True, timeout=900).stdout
    phases = json.loads(out)["phases"]
    onload = next(p for p in phases if p["phase"] == "onload" and p["tier"] == "nvme")
    return {"load_p50_ns": onload["latencyP50"], "gbps": onload["gigabytesPerSecond"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cli")
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", default="/var/tmp")
    a = ap.parse_args()
    py, sw = [], []
    # This disk's speed drifts by 2× within minutes: each round runs both back to back (order
    # alternating), and the ratio is taken per round, then its median.
    for r in range(a.rounds):
        order = [("swift", swift_round), ("python", None)] if r % 2 == 0 else [("python", None), ("swift", swift_round)]
        for name, _ in order:
            with tempfile.TemporaryDirectory(dir=a.dir) as d:
                if name == "swift":
                    sw.append(swift_round(a.cli, d, a.mib))
                else:
                    py.append(python_round(d, a.mib))
    med = lambda rows, k: statistics.median(r[k] for r in rows)
    lookup = med(py, "lookup_p50_ns")
    ppy, psw = med(py, "load_p50_ns"), med(sw, "load_p50_ns")
    print("### Python package overhead")
    print()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, release libmemwall, load average "
          f"{open('/proc/loadavg').read().split()[0]}; {a.rounds} rounds, each running both back to back in alternating order; medians.")
    print()
    print("```\npython python/bench/overhead.py .build/release/memwall   # scripts/bench-python.sh\n```")
    print()
    print("| measure | Python | Swift API | ratio | target |")
    print("|---|---|---|---|---|")
    print(f"| lookup, 32 keys, median | {lookup / 1000:.2f} µs | — | — | ≤ 5 µs: **{'met' if lookup <= 5000 else 'not met'}** |")
    ratio = statistics.median(s["load_p50_ns"] / p["load_p50_ns"] for p, s in zip(py, sw))
    print(f"| load 32 × 256 KiB from NVMe, p50 per batch | {ppy / 1e6:.2f} ms ({med(py, 'gbps'):.2f} GB/s) "
          f"| {psw / 1e6:.2f} ms ({med(sw, 'gbps'):.2f} GB/s) | **{ratio:.2f}×** (Swift p50 / Python p50, median of rounds) "
          f"| ≥ 0.95×: **{'met' if ratio >= 0.95 else 'not met'}** |")
    for i, (p, s) in enumerate(zip(py, sw)):
        print(f"\nround {i + 1}: python lookup {p['lookup_p50_ns']:.0f} ns, load p50 {p['load_p50_ns'] / 1e6:.2f} ms; "
              f"swift load p50 {s['load_p50_ns'] / 1e6:.2f} ms (ratio {s['load_p50_ns'] / p['load_p50_ns']:.2f})")


if __name__ == "__main__":
    main()
