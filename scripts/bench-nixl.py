#!/usr/bin/env python3
"""NIXL's UCX path between two processes on this host: the reference for
`memwall bench rdma` on the intra-host path (scripts/bench-intrahost.sh).

    python bench-nixl.py --sizes 65536,1048576,4194304 --ops write,read --bytes-per-size 1073741824

Run with the Python of a venv that has PyPI's `nixl` (CPU only: its UCX plugin
loads without a GPU). The initiator (this process) starts the target as a
child; the target registers a DRAM buffer with UCX and hands its agent
metadata and buffer address over a pipe; the initiator registers its own
buffer, loads the metadata and moves bytes with one-sided WRITE and READ.

The loops mirror `memwall bench rdma`'s request path: bandwidth keeps
--window requests of --post-list descriptors (each `size` bytes, all on the
same local and remote range) in flight and reposts each as it completes;
latency posts one single-descriptor request at a time, from post to DONE.
Writes one JSON object (schema memwall.bench.nixl/1) to --output (NIXL's
own log lines go to standard output).
"""
import argparse, json, mmap, os, statistics, subprocess, sys, time

HUGE = 2 << 20
_mappings = []  # kept alive as long as the buffers cut from them


def buffer(size: int, huge: bool):
    """`size` bytes of anonymous memory, as MemWall's MemoryRegion.allocate makes
    them: plain pages, or (huge) 2 MiB-aligned with MADV_HUGEPAGE. Not numpy's
    allocator, which advises huge pages by itself from 4 MiB on."""
    import numpy as np
    m = mmap.mmap(-1, size + (HUGE if huge else 0), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    _mappings.append(m)
    a = np.frombuffer(m, dtype=np.uint8)
    if huge:
        head = (HUGE - a.ctypes.data % HUGE) % HUGE
        a = a[head:head + size]
        m.madvise(mmap.MADV_HUGEPAGE)
    a[:] = 1  # fault the pages in, as the regions MemWall registers are by its first transfers
    return a


def target(fd: int, size: int, huge: bool) -> None:
    import select
    from nixl._api import nixl_agent, nixl_agent_config
    # NIXL's progress thread polls without pause (a whole CPU of this 2-CPU host);
    # the data path is one-sided, so the target only needs to progress UCX's
    # wire-up: it does so every millisecond below, and otherwise sleeps.
    agent = nixl_agent("target", nixl_agent_config(enable_prog_thread=False, backends=["UCX"]))
    buf = buffer(size, huge)
    agent.register_memory([(buf.ctypes.data, size, 0, "")], "DRAM")
    meta = agent.get_agent_metadata()
    with os.fdopen(fd, "wb") as out:
        out.write(len(meta).to_bytes(8, "little") + meta + buf.ctypes.data.to_bytes(8, "little"))
    while True:  # until the initiator closes our stdin
        agent.get_new_notifs()
        if select.select([sys.stdin], [], [], 0.001)[0] and not os.read(sys.stdin.fileno(), 4096):
            break


def initiator(args) -> dict:
    from nixl._api import nixl_agent, nixl_agent_config
    sizes = [int(s) for s in args.sizes.split(",")]
    biggest = max(sizes)
    rfd, wfd = os.pipe()
    child = subprocess.Popen([sys.executable, __file__, "--target", str(wfd), "--size", str(biggest)]
                             + (["--huge-pages"] if args.huge_pages else []),
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, pass_fds=[wfd])
    os.close(wfd)
    with os.fdopen(rfd, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        meta = f.read(n)
        remote = int.from_bytes(f.read(8), "little")
    agent = nixl_agent("initiator", nixl_agent_config(enable_prog_thread=args.progress_thread, backends=["UCX"]))
    local = buffer(biggest, args.huge_pages)
    agent.register_memory([(local.ctypes.data, biggest, 0, "")], "DRAM")
    peer = agent.add_remote_agent(meta)
    rows = []

    def handle(op, size, count):
        l = agent.get_xfer_descs([(local.ctypes.data, size, 0)] * count, "DRAM")
        r = agent.get_xfer_descs([(remote, size, 0)] * count, "DRAM")
        return agent.initialize_xfer(op, l, r, peer)

    def finish(h):
        s = agent.check_xfer_state(h)
        while s == "PROC":
            s = agent.check_xfer_state(h)
        if s != "DONE":
            raise RuntimeError(f"NIXL transfer failed: {s}")

    for opname in args.ops.split(","):
        op = opname.upper()
        for size in sizes:
            if "bw" in args.modes:
                messages = max(args.post_list, args.bytes_per_size // size)
                requests = max(1, messages // args.post_list)
                hs = [handle(op, size, args.post_list) for _ in range(args.window)]
                for h in hs[: min(len(hs), 4)]:  # warm-up: connection and first-touch faults are not timed
                    if agent.transfer(h) == "PROC":
                        finish(h)
                posted = done = 0
                busy = [False] * len(hs)
                start = time.perf_counter_ns()
                while done < requests:
                    for i, h in enumerate(hs):
                        if busy[i]:
                            s = agent.check_xfer_state(h)
                            if s == "PROC":
                                continue
                            if s != "DONE":
                                raise RuntimeError(f"NIXL transfer failed: {s}")
                            busy[i] = False
                            done += 1
                        if posted < requests:
                            s = agent.transfer(h)
                            posted += 1
                            if s == "DONE":
                                done += 1
                            elif s == "PROC":
                                busy[i] = True
                            else:
                                raise RuntimeError(f"NIXL post failed: {s}")
                ns = time.perf_counter_ns() - start
                moved = requests * args.post_list * size
                rows.append({"operation": opname, "metric": "bw", "bytes": size, "iterations": requests * args.post_list,
                             "gigabytesPerSecond": moved / ns})
                for h in hs:
                    h.release()
            if "lat" in args.modes:
                h = handle(op, size, 1)
                iterations = max(20, min(args.lat_iterations, args.bytes_per_size // size // 4))
                samples = []
                for i in range(iterations + 16):
                    t0 = time.perf_counter_ns()
                    if agent.transfer(h) == "PROC":
                        finish(h)
                    if i >= 16:
                        samples.append(time.perf_counter_ns() - t0)
                h.release()
                samples.sort()
                rows.append({"operation": opname, "metric": "lat", "bytes": size, "iterations": iterations,
                             "typicalMicroseconds": statistics.median(samples) / 1000,
                             "averageMicroseconds": sum(samples) / len(samples) / 1000,
                             "minMicroseconds": samples[0] / 1000})
    child.stdin.close()
    child.wait(timeout=60)
    import nixl
    return {"schema": "memwall.bench.nixl/1", "nixl": getattr(nixl, "__version__", "?"), "backend": "UCX",
            "progressThread": args.progress_thread, "hugePages": args.huge_pages, "window": args.window, "postList": args.post_list, "rows": rows}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="65536,1048576,4194304")
    p.add_argument("--ops", default="write,read")
    p.add_argument("--modes", default="bw,lat")
    p.add_argument("--bytes-per-size", type=int, default=1 << 30, help="bytes moved per bandwidth row")
    p.add_argument("--lat-iterations", type=int, default=1000)
    p.add_argument("--window", type=int, default=8, help="requests in flight (memwall: --tx-depth / --post-list)")
    p.add_argument("--post-list", type=int, default=16, help="descriptors per request")
    p.add_argument("--progress-thread", action="store_true", help="run NIXL's progress thread in the initiator too")
    p.add_argument("--output", required=False, help="where the JSON report goes")
    p.add_argument("--huge-pages", action="store_true", help="both buffers 2 MiB-aligned with MADV_HUGEPAGE (memwall --huge-pages)")
    p.add_argument("--target", type=int, help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.target is not None:
        target(args.target, args.size, args.huge_pages)
        return
    if not args.output:
        p.error("--output is required")
    report = initiator(args)
    with open(args.output, "w") as f:
        json.dump(report, f)


main()
