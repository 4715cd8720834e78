"""memwall.Pool: the host-wide KV pool from Python — shared by processes, read in place, and
cleaned up after a process killed in the middle of holding a block."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import memwall

BLOCK = 16 * 1024

pytestmark = pytest.mark.skipif("mw_pool_create" in memwall._native.missing,
                                reason="the loaded libmemwall has no KV pool (mw_pool_create missing)")


@pytest.fixture
def pool():
    name = f"pytest-{os.getpid()}-{os.urandom(4).hex()}"
    p = memwall.Pool.create(name, size=8 << 20, block_bytes=BLOCK, processes=8)
    yield p
    if not p.closed:
        p.close()
    memwall.Pool.destroy(name, force=True)


def blocks(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, BLOCK), dtype=np.uint8)


def test_store_lookup_load_view(pool: memwall.Pool) -> None:
    assert pool.block_bytes == BLOCK and pool.capacity_blocks > 100
    keys = np.arange(1000, 1008, dtype=np.uint64)
    data = blocks(8, 1)
    assert pool.lookup(keys) == 0
    assert pool.store(keys, data) == 8
    assert pool.store(keys, data) == 0, "a block is stored once"
    assert pool.lookup(keys) == 8
    out = np.zeros_like(data)
    assert pool.load(keys, out) == 8
    assert np.array_equal(out, data)
    with pool.view(int(keys[3])) as v:
        assert v.verify()
        assert np.array_equal(v.array, data[3]), "the view is the block, in place"
        assert not v.array.flags.writeable
        assert memwall.Pool.stat(pool.name)["references"] == 1
    stat = memwall.Pool.stat(pool.name)
    assert stat["blocks"] == 8 and stat["bytesUsed"] == 8 * BLOCK and stat["references"] == 0
    assert stat["problems"] == []


def test_errors_name_the_problem(pool: memwall.Pool) -> None:
    with pytest.raises(memwall.AlreadyExistsError):
        memwall.Pool.create(pool.name, size=8 << 20, block_bytes=BLOCK)
    with pytest.raises(memwall.NotFoundError):
        memwall.Pool.attach(pool.name + "-absent")
    with pytest.raises(memwall.InvalidArgumentError):
        memwall.Pool.create("../escape", size=8 << 20, block_bytes=BLOCK)
    with pytest.raises(memwall.NotFoundError):
        pool.view(424242)
    with pytest.raises(memwall.NotFoundError):
        pool.load([424242], np.zeros((1, BLOCK), dtype=np.uint8))
    with pytest.raises(memwall.InvalidArgumentError):
        pool.store([1, 2], np.zeros((1, BLOCK), dtype=np.uint8))
    with pytest.raises(memwall.BusyError):
        memwall.Pool.destroy(pool.name)
    pool.store([7], blocks(1, 7))
    v = pool.view(7)
    v.close()
    with pytest.raises(memwall.MisuseError):
        v.close()
    pool.close()
    with pytest.raises(memwall.MisuseError):
        pool.lookup([7])


def test_another_process_sees_the_blocks_and_its_death_is_reclaimed(pool: memwall.Pool) -> None:
    keys = np.arange(5000, 5004, dtype=np.uint64)
    data = blocks(4, 9)
    pool.store(keys, data)
    child = textwrap.dedent(f"""
        import sys, time, numpy as np, memwall
        p = memwall.Pool.attach({pool.name!r})
        out = np.zeros((4, {BLOCK}), dtype=np.uint8)
        assert p.load(np.arange(5000, 5004, dtype=np.uint64), out) == 4
        print(int(out.sum()), flush=True)
        v = p.view(5001)
        print("holding", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        assert int(proc.stdout.readline()) == int(data.sum()), "the other process read the same bytes"
        assert proc.stdout.readline().strip() == "holding"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stat = memwall.Pool.stat(pool.name)
    assert stat["processesDead"] == 1 and stat["referencesOfDead"] == 1
    memwall.Pool.attach(pool.name).close()
    stat = memwall.Pool.stat(pool.name)
    assert stat["processesDead"] == 0 and stat["references"] == 0 and stat["reclaimedReferences"] == 1
    assert stat["problems"] == []


def test_a_kv_cache_with_a_pool_tier_shares_with_another_process(pool: memwall.Pool, tmp_path) -> None:
    scratch = "/var/tmp" if os.path.isdir("/var/tmp") else str(tmp_path)
    tiers = f"dram:4,pool:{pool.name},nvme:64"
    with memwall.KVCache(tiers=tiers, block_bytes=BLOCK, scratch_dir=scratch, policy="lru") as kv:
        buf = kv.allocate(8)
        data = blocks(8, 21)
        buf[:] = data
        keys = np.arange(7000, 7008, dtype=np.uint64)
        kv.store(keys, buf)
        assert kv.stats()["shared"]["blocksStored"] == 8
        assert kv.tiers(keys)[:4] == [0, 0, 0, 0], "this process reads its own DRAM first"
    # Another process, with a cache of its own, finds all eight in the pool (tier 1) and loads them.
    child = textwrap.dedent(f"""
        import numpy as np, memwall
        with memwall.KVCache(tiers={tiers!r}, block_bytes={BLOCK}, scratch_dir={scratch!r}) as kv:
            keys = np.arange(7000, 7008, dtype=np.uint64)
            assert kv.lookup(keys) == 8
            assert kv.tiers(keys) == [1] * 8, kv.tiers(keys)
            out = kv.allocate(8)
            kv.load(keys, out)
            print(int(out.astype(np.uint64).sum()), kv.stats()["shared"]["blocksLoaded"])
    """)
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    total, loaded = out.stdout.split()
    assert int(total) == int(data.astype(np.uint64).sum()) and int(loaded) == 8
    assert memwall.Pool.stat(pool.name)["blocks"] == 8
