"""The KV cache: blocks in tiers DRAM -> far memory -> NVMe, stored from and loaded into
the caller's registered numpy arrays without copies."""

from __future__ import annotations

import ctypes
import json
import os
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from . import _native
from .buffers import as_block_array, block_pointers
from ._handle import NativeHandle
from .errors import Error, InvalidArgumentError, MisuseError, error_for
from .keys import KeysLike, key_bytes
from .regions import Region, region_of

_LOAD_WAIT, _LOAD_BEST_EFFORT, _LOAD_TIMEOUT = 0, 1, 2


@dataclass(frozen=True)
class BlockFailure:
    """One block of a transfer that failed."""

    index: int       #: position in the operation's keys
    key: int         #: the block's key
    error: Error     #: what happened to it (code, status, message naming the block)


class Transfer:
    """A store, load or prefetch in flight. Thread-safe.

    Holds the buffers it reads or writes until it is done, so they cannot be freed under it.
    """

    def __init__(self, handle: int, keepalive: Any) -> None:
        self._handle: Optional[int] = handle
        self._keepalive = keepalive
        self._lock = threading.Lock()
        self._summary: Optional[_native.TransferSummary] = None
        self._failures: Optional[List[BlockFailure]] = None

    def done(self) -> bool:
        """True when the transfer finished (one atomic load in the library)."""
        if self._summary is not None:
            return True
        return _native.check(_native.lib.mw_transfer_poll(self._live())) == 1

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Waits until done (at most `timeout` seconds); True when done. The transfer's own
        outcome is in :attr:`failed_blocks` / :meth:`raise_for_failure`."""
        if self._summary is not None:
            return True
        ns = -1 if timeout is None else max(0, int(timeout * 1e9))
        status = _native.lib.mw_transfer_wait(self._live(), ns)
        if status == -11:  # MW_E_TIMED_OUT: not yet done
            return False
        _native.check(status)
        self._finish()
        return True

    @property
    def blocks(self) -> int:
        """Keys in the operation (waits for it)."""
        return int(self._result().blocks)

    @property
    def bytes(self) -> int:
        """Bytes moved for the caller (waits for it)."""
        return int(self._result().bytes)

    @property
    def failed_blocks(self) -> List[BlockFailure]:
        """Every block that failed, with its error (waits for the transfer)."""
        self._result()
        assert self._failures is not None
        return list(self._failures)

    def raise_for_failure(self) -> None:
        """Raises the first failed block's error (its message names the block), if any."""
        failures = self.failed_blocks
        if failures:
            first = failures[0]
            more = f" (and {len(failures) - 1} more failed block(s))" if len(failures) > 1 else ""
            raise error_for(first.error.status, first.error.message + more)

    def _live(self) -> int:
        handle = self._handle
        if handle is None:
            raise MisuseError("the transfer handle was closed")
        return handle

    def _result(self) -> _native.TransferSummary:
        if self._summary is None:
            self.wait()
        assert self._summary is not None
        return self._summary

    def _finish(self) -> None:
        with self._lock:
            if self._summary is not None or self._handle is None:
                return
            summary = _native.TransferSummary()
            _native.check(_native.lib.mw_transfer_result(self._handle, ctypes.byref(summary)))
            failures: List[BlockFailure] = []
            record = _native.BlockFailureStruct()
            for i in range(summary.failed):
                _native.check(_native.lib.mw_transfer_failure(self._handle, i, ctypes.byref(record)))
                message = record.message.decode("utf-8", "replace")
                failures.append(BlockFailure(int(record.index), int(record.key), error_for(record.status, message)))
            _native.check(_native.lib.mw_transfer_close(self._handle))
            self._handle = None
            self._summary = summary
            self._failures = failures
            self._keepalive = None     # done: the buffers are free again

    def __del__(self) -> None:
        # Never free buffers the library may still write: finish (waiting if need be) first.
        if getattr(self, "_handle", None) is not None:
            try:
                self.wait()
            except Error:
                pass

    def __repr__(self) -> str:
        if self._summary is None:
            return "<memwall.Transfer in flight>"
        return f"<memwall.Transfer done: {self._summary.blocks} blocks, {self._summary.failed} failed>"


_lookup = _native.require("mw_kv_lookup") if "mw_kv_lookup" not in _native.missing else None


class KVCache(NativeHandle):
    """A tiered KV block cache (libmemwall's mw_kv), zero-copy from and into numpy arrays.

    Example::

        with memwall.KVCache(tiers="dram:256,far:1024,nvme:8192", block_bytes=262144,
                             nvme_path="/var/tmp/mw.bin", allow_write=True) as kv:
            buf = kv.allocate(32)                  # registered (32, 262144) uint8 array
            keys = memwall.chain_keys(tokens, block_tokens=16, extra=b"model-a")
            n = kv.lookup(keys)                    # leading cached blocks
            kv.store(keys, buf[: len(keys)])
            kv.load(keys[:n], buf[:n])

    Args:
        tiers: "dram:BLOCKS[,far:BLOCKS][,nvme:BLOCKS]", fastest first.
        block_bytes: bytes per block (a multiple of 4096).
        nvme_path: file or block device of the nvme tier; created when absent (removed at
            close); an existing one only with allow_write=True. None: a private scratch file
            in scratch_dir.
        allow_write: consent to overwrite an existing nvme_path.
        policy: eviction policy (lru, lfuda, arc, s3fifo, wtinylfu, kvaware).
        block_tokens: tokens per block, as reported in events.
        scratch_dir, far_node, event_queue: see mw_kv_open in memwall.h.

    Raises:
        InvalidArgumentError naming the bad setting; SystemCallError for a file or memory the
        host refused; BusyError when another process holds nvme_path.
    """

    _native_close = "mw_kv_close"
    _closed_hint = "the KVCache is closed; open a new one"

    def __init__(self, tiers: str, block_bytes: int, *, nvme_path: Optional[Union[str, os.PathLike]] = None,
                 allow_write: bool = False, policy: Optional[str] = None, block_tokens: int = 16,
                 scratch_dir: Optional[Union[str, os.PathLike]] = None, far_node: Optional[int] = None,
                 event_queue: Optional[int] = None) -> None:
        config: Dict[str, Any] = {"tiers": tiers, "block_bytes": block_bytes, "allow_write": allow_write,
                                  "block_tokens": block_tokens}
        if nvme_path is not None:
            config["nvme_path"] = os.fspath(nvme_path)
        if scratch_dir is not None:
            config["scratch_dir"] = os.fspath(scratch_dir)
        if policy is not None:
            config["policy"] = policy
        if far_node is not None:
            config["far_node"] = far_node
        if event_queue is not None:
            config["event_queue"] = event_queue
        handle = ctypes.c_void_p()
        _native.check(_native.require("mw_kv_open")(json.dumps(config).encode("utf-8"), ctypes.byref(handle)))
        assert handle.value is not None
        self._handle: Optional[int] = handle.value
        # The handle as ctypes passes it (made once: converting an int per call costs more
        # than the lookup itself); None once closed.
        self._arg: Optional[ctypes.c_void_p] = ctypes.c_void_p(handle.value)
        self._lock = threading.Lock()
        size = ctypes.c_size_t()
        _native.check(_native.lib.mw_kv_block_bytes(self._handle, ctypes.byref(size)))
        #: Bytes per block.
        self.block_bytes: int = size.value
        #: Tokens per block (as configured).
        self.block_tokens: int = block_tokens
        self._regions: "weakref.WeakSet[Region]" = weakref.WeakSet()
        self._adopted: Dict[int, Region] = {}

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the cache (later calls raise MisuseError; a second close too). Arrays from
        :meth:`allocate` stay valid; they are just no longer registered."""
        with self._lock:
            if self._handle is None:
                raise MisuseError("the KVCache was closed already; a cache is closed exactly once")
            kv = self._handle
            _native.check(_native.lib.mw_kv_close(kv))
            self._handle = None
            self._arg = None
            for region in list(self._regions) + list(self._adopted.values()):
                region._registered_with.discard(kv)
            self._adopted.clear()

    # -- memory -----------------------------------------------------------------------------

    def allocate(self, blocks: int, node: Union[int, str, None] = None) -> np.ndarray:
        """A registered, page-aligned (blocks, block_bytes) uint8 array to store from and
        load into. It stays valid after the cache closes; its memory is freed with it."""
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks <= 0:
            raise InvalidArgumentError(f"blocks must be a positive int, not {blocks!r}")
        region = self._register(Region.allocate(blocks * self.block_bytes, node))
        self._regions.add(region)
        return region.array((blocks, self.block_bytes))

    def register(self, buffer: np.ndarray) -> None:
        """Registers the caller's own writable, C-contiguous array (no copy) so blocks inside it
        can be stored and loaded; the cache keeps it alive until :meth:`deregister` or close.
        For an nvme tier its blocks must be 4096-byte aligned (O_DIRECT)."""
        region = self._register(Region.adopt(buffer))
        self._adopted[region.address] = region

    def _register(self, region: Region) -> Region:
        """Registers a new region with this cache (closing it again when that fails)."""
        try:
            kv = self._h()
            _native.check(_native.lib.mw_kv_register(kv, region.handle))
        except BaseException:
            region.close()
            raise
        region._registered_with.add(kv)
        return region

    def deregister(self, buffer: np.ndarray) -> None:
        """Takes back :meth:`register`, or the registration of an array from :meth:`allocate`
        (its memory stays valid). Raises NotFoundError for an array this cache does not have."""
        kv = self._h()
        address = buffer.ctypes.data if isinstance(buffer, np.ndarray) else None
        adopted = self._adopted.get(address) if address is not None else None
        region = adopted if adopted is not None else region_of(buffer)
        if region is None or kv not in region._registered_with:
            raise error_for(-4, "this array is not registered with this cache (KVCache.register or allocate)")
        _native.check(_native.lib.mw_kv_deregister(kv, region.handle))
        region._registered_with.discard(kv)
        if adopted is not None:
            del self._adopted[address]
            region.close()

    # -- the data path ----------------------------------------------------------------------

    def lookup(self, keys: KeysLike) -> int:
        """How many leading keys are cached with their bytes (a few microseconds for 32 keys:
        one small copy of the keys and one call, no allocation in the library)."""
        raw = key_bytes(keys)
        arg = self._arg
        if arg is None:
            raise MisuseError("the KVCache is closed; open a new one")
        hits = ctypes.c_size_t()
        status = _lookup(arg, raw, len(raw) >> 3, ctypes.byref(hits), None)
        if status < 0:
            _native.check(status)
        return hits.value

    def tiers(self, keys: KeysLike) -> List[int]:
        """The tier index of every key (-1: not cached, or after the first uncached key)."""
        raw = key_bytes(keys)
        count = len(raw) >> 3
        out = (ctypes.c_int32 * count)()
        hits = ctypes.c_size_t()
        _native.check(_lookup(self._h(), raw, count, ctypes.byref(hits), out))
        return list(out)

    def store(self, keys: KeysLike, buffers: Any, *, parent: Optional[int] = None,
              write_through: bool = False) -> None:
        """Stores block i's bytes from ``buffers[i]`` under ``keys[i]`` (keys chained: keys[i]'s
        parent is keys[i-1], keys[0]'s is `parent`). Keys already cached are skipped. Returns when
        the bytes are in the cache (with write_through, also in the last, slowest tier); raises the
        first failed block's error."""
        self.store_async(keys, buffers, parent=parent, write_through=write_through).raise_for_failure()

    def store_async(self, keys: KeysLike, buffers: Any, *, parent: Optional[int] = None,
                    write_through: bool = False) -> Transfer:
        """Starts :meth:`store`; the buffers must not change until the transfer is done."""
        raw, array, pointers, address = self._prepare(keys, buffers, writable=False)
        parent_ref = None
        if parent is not None:
            if not 0 <= int(parent) < 1 << 64:
                raise InvalidArgumentError(f"parent key {parent} is outside 0 ... 2**64-1")
            parent_ref = ctypes.c_uint64(int(parent))
        handle = ctypes.c_void_p()
        _native.check(_native.lib.mw_kv_store_async(
            self._h(), raw, len(raw) >> 3, address,
            ctypes.byref(parent_ref) if parent_ref is not None else None,
            1 if write_through else 0, ctypes.byref(handle)))
        assert handle.value is not None
        return Transfer(handle.value, (array, pointers))

    def load(self, keys: KeysLike, buffers: Any, *, timeout: Optional[float] = None,
             best_effort: bool = False) -> None:
        """Loads ``keys[i]``'s bytes into ``buffers[i]``. Blocks another operation is still
        moving are waited for (at most `timeout` seconds when given; not at all with
        best_effort). Raises the first failed block's error: NotFoundError for a key not
        cached, CorruptedError naming the block on a checksum mismatch."""
        self.load_async(keys, buffers, timeout=timeout, best_effort=best_effort).raise_for_failure()

    def load_async(self, keys: KeysLike, buffers: Any, *, timeout: Optional[float] = None,
                   best_effort: bool = False) -> Transfer:
        """Starts :meth:`load`; read the buffers only after the transfer is done."""
        if best_effort and timeout is not None:
            raise InvalidArgumentError("give either timeout or best_effort, not both")
        policy, ns = _LOAD_WAIT, 0
        if best_effort:
            policy = _LOAD_BEST_EFFORT
        elif timeout is not None:
            if not timeout >= 0:
                raise InvalidArgumentError(f"timeout must be >= 0 seconds, not {timeout!r}")
            policy, ns = _LOAD_TIMEOUT, int(timeout * 1e9)
        raw, array, pointers, address = self._prepare(keys, buffers, writable=True)
        handle = ctypes.c_void_p()
        _native.check(_native.lib.mw_kv_load_async(self._h(), raw, len(raw) >> 3, address, policy, ns,
                                                   ctypes.byref(handle)))
        assert handle.value is not None
        return Transfer(handle.value, (array, pointers))

    def prefetch(self, keys: KeysLike) -> Transfer:
        """Starts moving the cached prefix of `keys` up to DRAM (a hint)."""
        raw = key_bytes(keys)
        handle = ctypes.c_void_p()
        _native.check(_native.lib.mw_kv_prefetch(self._h(), raw, len(raw) >> 3, ctypes.byref(handle)))
        assert handle.value is not None
        return Transfer(handle.value, None)

    def _prepare(self, keys: KeysLike, buffers: Any, *, writable: bool) -> Any:
        raw = key_bytes(keys)
        count = len(raw) >> 3
        if count == 0:
            raise InvalidArgumentError("no keys given")
        array = as_block_array(buffers, count, self.block_bytes, writable=writable)
        pointers, address = block_pointers(array)
        return raw, array, pointers, address

    # -- observing --------------------------------------------------------------------------

    def event_fd(self) -> int:
        """An eventfd readable when transfers finish (+1 each; read 8 bytes to reset). For
        ``asyncio.get_running_loop().add_reader(kv.event_fd(), callback)``. Owned by the cache."""
        fd = ctypes.c_int()
        _native.check(_native.lib.mw_kv_event_fd(self._h(), ctypes.byref(fd)))
        return fd.value

    def stats(self) -> Dict[str, Any]:
        """Counters (schema memwall.kv-stats/1): lookups, hits per tier, stores, promotions,
        demotions, drops, occupancy and capacity per tier, bytes moved per path."""
        return json.loads(_native.call_json("mw_kv_stats_json", self._h()))

    def events(self) -> List[Dict[str, Any]]:
        """KV events since the last call, shaped as vLLM's (BlockStored / BlockRemoved with
        block_hashes, parent_block_hash, block_size, medium = the tier's name)."""
        return json.loads(_native.call_json("mw_kv_events_json", self._h()))

    def __repr__(self) -> str:
        return f"<memwall.KVCache {'closed' if self.closed else f'block_bytes={self.block_bytes}'}>"
