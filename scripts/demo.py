"""make demo's Python step: a KV cache in DRAM, far memory and NVMe tiers, fed from a numpy array
without copies; blocks pushed down to NVMe come back byte for byte (MemWall checks each block's
checksum on the way)."""

import numpy as np

import memwall

BLOCK = 256 << 10
with memwall.KVCache(tiers="dram:8,far:8,nvme:64", block_bytes=BLOCK, policy="lru") as kv:
    tokens = np.arange(48 * 16) % 32000
    keys = memwall.chain_keys(tokens, block_tokens=16, extra=b"demo-model")
    buf = kv.allocate(len(keys))
    buf[:] = np.random.default_rng(0).integers(0, 256, size=buf.shape, dtype=np.uint8)
    original = buf.copy()
    kv.store(keys, buf)
    tiers = kv.tiers(keys)
    names = [t["name"] for t in kv.stats()["tiers"]]
    print(f"stored {len(keys)} blocks of {BLOCK >> 10} KiB from a numpy array: "
          + ", ".join(f"{tiers.count(i)} in {n}" for i, n in enumerate(names)))
    print(f"lookup of the prompt's keys: {kv.lookup(keys)} leading blocks cached")
    buf[:] = 0
    kv.load(keys, buf)
    print(f"loaded them back into the same array: identical = {np.array_equal(buf, original)}")
    stats = kv.stats()
    print(f"bytes moved per path: {stats['bytesMovedByPath']}")
    events = kv.events()
    print(f"{len(events)} KV events in vLLM's shape; the second: {events[1]}")
