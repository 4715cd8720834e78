"""memwall.KVCache: the data path from numpy arrays and back, and every misuse a caller can
commit refused with a memwall.Error that says what was wrong."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np
import pytest

import memwall
from conftest import requires_kv

pytestmark = requires_kv

BLOCK = 64 * 1024


def pattern(count: int, seed: int = 0) -> np.ndarray:
    """(count, BLOCK) bytes that differ per block and per seed."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, BLOCK), dtype=np.uint8)


@pytest.fixture
def kv(scratch: Path):
    with memwall.KVCache(tiers="dram:4,far:4,nvme:64", block_bytes=BLOCK, scratch_dir=str(scratch),
                         policy="lru") as cache:
        yield cache


def keys_for(n: int, extra: bytes = b"test") -> np.ndarray:
    return memwall.chain_keys(np.arange(n * 16) % 50000, block_tokens=16, extra=extra)


def test_store_lookup_load_round_trip(kv: memwall.KVCache) -> None:
    buf = kv.allocate(8)
    assert buf.shape == (8, BLOCK) and buf.dtype == np.uint8 and buf.ctypes.data % 4096 == 0
    data = pattern(8)
    buf[:] = data
    keys = keys_for(8)
    assert kv.lookup(keys) == 0
    kv.store(keys, buf)
    assert kv.lookup(keys) == 8
    assert kv.lookup(list(int(k) for k in keys[:3])) == 3, "plain int lists are keys too"
    buf[:] = 0
    kv.load(keys, buf)
    assert np.array_equal(buf, data)


def test_partial_prefix_lookup_and_load(kv: memwall.KVCache) -> None:
    buf = kv.allocate(6)
    buf[:] = pattern(6, seed=3)
    keys = keys_for(6, b"prefix")
    kv.store(keys[:4], buf[:4])
    assert kv.lookup(keys) == 4
    n = kv.lookup(keys)
    out = kv.allocate(6)
    kv.load(keys[:n], out[:n])
    assert np.array_equal(out[:n], buf[:n])


def test_blocks_demoted_to_nvme_come_back_verified(kv: memwall.KVCache) -> None:
    buf = kv.allocate(24)
    data = pattern(24, seed=5)
    buf[:] = data
    keys = keys_for(24, b"demote")
    kv.store(keys, buf)
    tiers = kv.tiers(keys)
    assert tiers.count(2) >= 16, f"expected most blocks on the nvme tier, got {tiers}"
    buf[:] = 0
    kv.load(keys, buf)
    assert np.array_equal(buf, data)
    stats = kv.stats()
    assert stats["schema"] == "memwall.kv-stats/1"
    assert [t["name"] for t in stats["tiers"]] == ["dram", "far", "nvme"]
    assert stats["stores"] >= 24


def test_async_store_and_load_with_event_fd(kv: memwall.KVCache) -> None:
    buf = kv.allocate(4)
    data = pattern(4, seed=9)
    buf[:] = data
    keys = keys_for(4, b"async")
    fd = kv.event_fd()
    assert fd >= 0

    async def run() -> int:
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        loop.add_reader(fd, ready.set)
        try:
            handle = kv.store_async(keys, buf)
            await asyncio.wait_for(ready.wait(), timeout=30)
            os.read(fd, 8)
            assert handle.wait(timeout=30)
            assert handle.done() and handle.failed_blocks == [] and handle.blocks == 4
            return handle.bytes
        finally:
            loop.remove_reader(fd)

    assert asyncio.run(run()) == 4 * BLOCK
    out = kv.allocate(4)
    t = kv.load_async(keys, out)
    assert t.wait() and t.failed_blocks == []
    assert np.array_equal(out, data)


def test_failed_blocks_name_the_block(kv: memwall.KVCache) -> None:
    buf = kv.allocate(2)
    keys = np.array([int(keys_for(1, b"fail")[0]), 0x1234567887654321], dtype=np.uint64)
    kv.store(keys[:1], buf[:1])
    t = kv.load_async(keys, buf)
    failures = t.failed_blocks
    assert len(failures) == 1 and failures[0].index == 1 and failures[0].key == 0x1234567887654321
    assert isinstance(failures[0].error, memwall.NotFoundError)
    with pytest.raises(memwall.NotFoundError, match="#1"):
        kv.load(keys, buf)


def test_checksum_mismatch_names_the_block(scratch: Path) -> None:
    path = scratch / "tier.bin"
    with memwall.KVCache(tiers="dram:1,nvme:16", block_bytes=BLOCK, nvme_path=str(path)) as kv:
        buf = kv.allocate(8)
        buf[:] = pattern(8, seed=11)
        keys = keys_for(8, b"corrupt")
        kv.store(keys, buf)
        assert kv.tiers(keys).count(1) >= 7
        # Damage the tier's file behind MemWall's back (the lock is advisory; the kernel
        # writes our page-cache bytes back before MemWall's O_DIRECT read sees the range).
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.write(b"\xa5" * size)
            f.flush()
            os.fsync(f.fileno())
        with pytest.raises(memwall.CorruptedError, match=r"block .*#\d+") as e:
            kv.load(keys, buf)
        assert e.value.code == "corrupted"
    assert not path.exists(), "a file the cache created is removed when it closes"


def test_existing_nvme_path_needs_allow_write(scratch: Path) -> None:
    path = scratch / "existing.bin"
    path.write_bytes(b"keep me")
    with pytest.raises(memwall.Error, match="allow"):
        memwall.KVCache(tiers="dram:2,nvme:8", block_bytes=BLOCK, nvme_path=str(path))
    assert path.read_bytes() == b"keep me"
    with memwall.KVCache(tiers="dram:2,nvme:8", block_bytes=BLOCK, nvme_path=str(path), allow_write=True) as kv:
        assert kv.block_bytes == BLOCK


@pytest.mark.parametrize("kwargs, error, message", [
    ({"tiers": "dram:4", "block_bytes": 5000}, memwall.InvalidArgumentError, "multiple of 4096"),
    ({"tiers": "dram:4", "block_bytes": 0}, memwall.InvalidArgumentError, "block_bytes"),
    ({"tiers": "ssd:4", "block_bytes": BLOCK}, memwall.InvalidArgumentError, "tier"),
    ({"tiers": "nvme:4", "block_bytes": BLOCK}, memwall.InvalidArgumentError, "dram"),
    ({"tiers": "dram:4", "block_bytes": BLOCK, "policy": "random"}, memwall.InvalidArgumentError, "policy"),
    ({"tiers": "dram:4", "block_bytes": BLOCK, "block_tokens": 0}, memwall.InvalidArgumentError, "block_tokens"),
    ({"tiers": "dram:4", "block_bytes": BLOCK, "nvme_path": "/var/tmp/x"}, memwall.InvalidArgumentError, "nvme"),
    ({"tiers": "dram:4", "block_bytes": True}, memwall.InvalidArgumentError, "block_bytes"),
])
def test_bad_configuration_is_refused(kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        memwall.KVCache(**kwargs)


def test_wrong_shapes_dtypes_and_layouts_are_refused(kv: memwall.KVCache) -> None:
    keys = keys_for(4, b"shapes")
    buf = kv.allocate(8)
    with pytest.raises(memwall.InvalidArgumentError, match=r"shape \(3, 65536\); 4 key\(s\) need shape \(4, 65536\)"):
        kv.store(keys, buf[:3])
    with pytest.raises(memwall.InvalidArgumentError, match="dtype uint8, not float32"):
        kv.store(keys, buf[:4].view(np.float32))
    with pytest.raises(memwall.InvalidArgumentError, match="rows are not contiguous"):
        kv.store(keys, np.lib.stride_tricks.as_strided(buf, shape=(4, BLOCK), strides=(BLOCK, 2)))
    with pytest.raises(memwall.InvalidArgumentError, match="1- or 2-dimensional"):
        kv.store(keys, buf[:4].reshape(4, 2, BLOCK // 2))
    with pytest.raises(memwall.InvalidArgumentError, match="holds 100 bytes"):
        kv.store(keys, bytearray(100))
    ro = buf[:4].copy()
    ro.setflags(write=False)
    with pytest.raises(memwall.InvalidArgumentError, match="read-only"):
        kv.load(keys, ro)
    with pytest.raises(memwall.InvalidArgumentError, match="buffer protocol"):
        kv.store(keys, object())
    with pytest.raises(memwall.InvalidArgumentError, match="no keys"):
        kv.store([], buf[:0])
    with pytest.raises(memwall.InvalidArgumentError, match="keys must"):
        kv.lookup([[1, 2]])
    with pytest.raises(memwall.InvalidArgumentError, match="keys must"):
        kv.lookup([-1])
    with pytest.raises(memwall.InvalidArgumentError, match="keys must"):
        kv.lookup(np.array([-1, 2]))
    with pytest.raises(memwall.InvalidArgumentError, match="keys must"):
        kv.lookup([2 ** 64])
    with pytest.raises(memwall.InvalidArgumentError, match="keys must"):
        kv.lookup(np.array([1.0, 2.0]))


def test_strided_rows_work_when_each_row_is_contiguous(kv: memwall.KVCache) -> None:
    buf = kv.allocate(8)
    data = pattern(4, seed=21)
    buf[::2] = data
    keys = keys_for(4, b"strided")
    kv.store(keys, buf[::2])           # every other row: zero-copy, rows 2 blocks apart
    out = kv.allocate(8)
    kv.load(keys, out[::-2][::-1])     # reversed twice: rows 1, 3, 5, 7
    assert np.array_equal(out[1::2], data)


def test_keys_and_buffers_count_mismatch(kv: memwall.KVCache) -> None:
    buf = kv.allocate(4)
    with pytest.raises(memwall.InvalidArgumentError, match=r"4 key\(s\) need shape \(4, 65536\)"):
        kv.load(keys_for(4, b"count"), buf[:2])


def test_unregistered_buffers_are_refused(kv: memwall.KVCache) -> None:
    keys = keys_for(2, b"unregistered")
    plain = np.zeros((2, BLOCK), dtype=np.uint8)
    with pytest.raises(memwall.InvalidArgumentError, match="not inside a region registered with this cache"):
        kv.store(keys, plain)
    other = memwall.KVCache(tiers="dram:2", block_bytes=BLOCK)
    foreign = other.allocate(2)
    with pytest.raises(memwall.InvalidArgumentError, match="not inside a region registered"):
        kv.store(keys, foreign)
    other.close()


def test_caller_arrays_register_and_deregister(kv: memwall.KVCache) -> None:
    import mmap
    area = mmap.mmap(-1, 4 * BLOCK)                 # page-aligned, as O_DIRECT wants
    array = np.frombuffer(area, dtype=np.uint8).reshape(4, BLOCK)
    data = pattern(4, seed=31)
    array[:] = data
    kv.register(array)
    keys = keys_for(4, b"registered")
    kv.store(keys, array)
    array[:] = 0
    kv.load(keys, array)
    assert np.array_equal(array, data)
    kv.deregister(array)
    with pytest.raises(memwall.InvalidArgumentError, match="not inside a region registered"):
        kv.load(keys, array)
    with pytest.raises(memwall.NotFoundError, match="not registered"):
        kv.deregister(array)
    del array
    area.close()


def test_misaligned_caller_buffer_is_refused(kv: memwall.KVCache) -> None:
    raw = np.zeros(3 * BLOCK, dtype=np.uint8)
    start = (-raw.ctypes.data) % 4096 + 64        # deliberately 64 bytes off a page
    array = raw[start: start + 2 * BLOCK].reshape(2, BLOCK)
    kv.register(raw)
    with pytest.raises(memwall.MisalignedError, match="4096"):
        kv.store(keys_for(2, b"misaligned"), array)
    kv.deregister(raw)


def test_closed_cache_and_handles(scratch: Path) -> None:
    kv = memwall.KVCache(tiers="dram:4", block_bytes=BLOCK)
    buf = kv.allocate(2)
    keys = keys_for(2, b"closed")
    kv.store(keys, buf)
    kv.close()
    assert kv.closed
    with pytest.raises(memwall.MisuseError, match="closed"):
        kv.lookup(keys)
    with pytest.raises(memwall.MisuseError, match="closed"):
        kv.close()
    with pytest.raises(memwall.MisuseError):
        kv.allocate(1)
    buf[:] = 7                               # the array outlives its cache
    assert int(buf[0, 0]) == 7
    stale = kv.__dict__.get("_handle")
    assert stale is None


def test_transfer_outlives_nothing_it_needs(kv: memwall.KVCache) -> None:
    keys = keys_for(3, b"lifetime")
    kv.store(keys, kv.allocate(3))           # the buffer is dropped at once; the store held it
    out = kv.allocate(3)
    t = kv.load_async(keys, out)
    del out                                  # the transfer keeps the array alive until done
    assert t.wait() and t.failed_blocks == []


def test_events_have_vllm_shape(kv: memwall.KVCache) -> None:
    buf = kv.allocate(12)
    keys = keys_for(12, b"events")
    kv.store(keys, buf)
    events = kv.events()
    stored = [e for e in events if e["type"] == "BlockStored"]
    assert {int(k) for e in stored for k in e["block_hashes"]} >= {int(k) for k in keys}
    first = next(e for e in stored if e["block_hashes"] == [int(keys[0])])
    assert first["parent_block_hash"] is None and first["block_size"] == 16 and first["medium"] == "dram"
    second = next(e for e in stored if e["block_hashes"] == [int(keys[1])])
    assert second["parent_block_hash"] == int(keys[0])
    assert {e["medium"] for e in stored} <= {"dram", "far", "nvme"}
    assert kv.events() == [], "events are taken once"
    more = kv.allocate(12)
    kv.store(keys_for(12, b"events-2"), more)     # pushes earlier blocks down or out
    later = kv.events()
    assert any(e["type"] == "BlockRemoved" for e in later) or any(e["medium"] != "dram" for e in later)


def test_prefetch_returns_a_transfer(kv: memwall.KVCache) -> None:
    buf = kv.allocate(12)
    keys = keys_for(12, b"prefetch")
    kv.store(keys, buf)
    t = kv.prefetch(keys[:2])
    assert t.wait() and t.failed_blocks == []


def test_write_through_also_writes_the_last_tier(scratch: Path) -> None:
    keys = keys_for(4, b"write-through")
    with memwall.KVCache(tiers="dram:8,nvme:16", block_bytes=BLOCK, scratch_dir=str(scratch)) as back, \
            memwall.KVCache(tiers="dram:8,nvme:16", block_bytes=BLOCK, scratch_dir=str(scratch)) as through:
        back.store(keys, back.allocate(4))
        through.store(keys, through.allocate(4), write_through=True)
        assert back.tiers(keys) == through.tiers(keys) == [0, 0, 0, 0]
        to_nvme = lambda kv: sum(v for k, v in kv.stats()["bytesMovedByPath"].items() if k.endswith("-> nvme"))
        assert to_nvme(back) == 0, "write-back leaves the NVMe tier alone while DRAM has room"
        assert to_nvme(through) == 4 * BLOCK, "write-through put a copy of every block on NVMe"
