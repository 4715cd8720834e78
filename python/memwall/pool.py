"""The host-wide KV pool: one copy of each block for every process of the host, in a shared
segment (optionally on a CPU-less CXL node) that processes attach to by name — libmemwall's
mw_pool (docs/kv-pool.md)."""

from __future__ import annotations

import ctypes
import json
import threading
from typing import Any, Dict, Optional

import numpy as np

from . import _native
from .buffers import as_block_array, block_pointers
from ._handle import NativeHandle
from .errors import InvalidArgumentError, MisuseError
from .keys import KeysLike, key_bytes

_NODE_ANY, _NODE_FAR = -1, -2


class PoolView(NativeHandle):
    """A block read in place: :attr:`array` is a read-only numpy view of the block's bytes in the
    shared segment, valid — and the block kept in the pool — until :meth:`close` (or the end of a
    ``with`` block). Reading it after close is a use-after-free; keep a copy (``array.copy()``)
    to keep the bytes."""

    _native_close = "mw_pool_view_close"
    _closed_hint = "the view is closed; take a new one with Pool.view"

    def __init__(self, handle: int, key: int) -> None:
        self._handle: Optional[int] = handle
        self.key: int = key
        pointer = ctypes.c_void_p()
        size = ctypes.c_size_t()
        _native.check(_native.lib.mw_pool_view_bytes(handle, ctypes.byref(pointer), ctypes.byref(size)))
        buffer = (ctypes.c_uint8 * size.value).from_address(pointer.value or 0)
        array = np.frombuffer(buffer, dtype=np.uint8)
        array.flags.writeable = False
        self._array: Optional[np.ndarray] = array

    @property
    def array(self) -> np.ndarray:
        """The block's bytes, in place (read-only)."""
        if self._array is None:
            raise MisuseError("the view was closed; its bytes are no longer held")
        return self._array

    def verify(self) -> bool:
        """Recomputes the block's checksum in place; True when it matches the published one."""
        if self._handle is None:
            raise MisuseError("the view was closed")
        status = _native.lib.mw_pool_view_verify(self._handle)
        if status == -17:  # MW_E_CORRUPTED
            return False
        _native.check(status)
        return True

    def close(self) -> None:
        """Releases the block (the pool may evict it afterwards)."""
        if self._handle is None:
            raise MisuseError("the view was closed already")
        handle, self._handle, self._array = self._handle, None, None
        _native.check(_native.lib.mw_pool_view_close(handle))

class Pool(NativeHandle):
    """A host-wide KV pool shared by every process that attaches to it by name.

    Example::

        pool = memwall.Pool.create("agents", size=1 << 30, block_bytes=262144, node="far")
        # in any other process of the host:
        pool = memwall.Pool.attach("agents")
        n = pool.lookup(keys)                  # leading blocks present (no lock)
        pool.load(keys[:n], buf[:n])           # one copy out, every block's checksum checked
        pool.store(keys[n:], buf[n:len(keys)], parent=keys[n - 1] if n else None)
        with pool.view(keys[0]) as v:          # in place, no copy
            use(v.array)

    The same lookup / store / load as :class:`memwall.KVCache`, with buffers that need no
    registration (any uint8 array of block_bytes rows), plus :meth:`view`.
    """

    _native_close = "mw_pool_close"
    _closed_hint = "the Pool is closed; attach again"

    def __init__(self, handle: int, name: str) -> None:
        self._handle: Optional[int] = handle
        self._arg: Optional[ctypes.c_void_p] = ctypes.c_void_p(handle)
        self._lock = threading.Lock()
        #: The pool's name.
        self.name: str = name
        block = ctypes.c_size_t()
        capacity = ctypes.c_size_t()
        _native.check(_native.lib.mw_pool_geometry(handle, ctypes.byref(block), ctypes.byref(capacity)))
        #: Bytes per block.
        self.block_bytes: int = block.value
        #: Blocks the pool holds.
        self.capacity_blocks: int = capacity.value

    @classmethod
    def create(cls, name: str, size: int, block_bytes: int, *, node: Any = None, processes: int = 0,
               device: Optional[str] = None, allow_write: bool = False) -> "Pool":
        """Creates pool `name` (an existing name raises AlreadyExistsError) of `size` bytes in
        all and attaches to it. node: a NUMA node number, "far" (the CPU-less node, else the
        emulated far node) or None (not bound). processes: how many may attach at once (0: 32).
        device: a device-DAX device ("/dev/dax0.0", e.g. a CXL region) to put the pool on
        instead (size 0: all of it); its contents are destroyed, so allow_write=True is needed."""
        if device is not None:
            if node is not None:
                raise InvalidArgumentError("give node or device, not both")
            handle = ctypes.c_void_p()
            _native.check(_native.require("mw_pool_create_on_device")(
                name.encode("utf-8"), device.encode("utf-8"), size, block_bytes, processes, 1 if allow_write else 0,
                ctypes.byref(handle)))
            assert handle.value is not None
            return cls(handle.value, name)
        if node is None:
            where = _NODE_ANY
        elif node == "far":
            where = _NODE_FAR
        elif isinstance(node, int) and not isinstance(node, bool) and node >= 0:
            where = node
        else:
            raise InvalidArgumentError(f"node must be a node number, 'far' or None, not {node!r}")
        for what, value in (("size", size), ("block_bytes", block_bytes), ("processes", processes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidArgumentError(f"{what} must be a non-negative int, not {value!r}")
        handle = ctypes.c_void_p()
        _native.check(_native.require("mw_pool_create")(name.encode("utf-8"), size, block_bytes, where, processes,
                                                        ctypes.byref(handle)))
        assert handle.value is not None
        return cls(handle.value, name)

    @classmethod
    def attach(cls, name: str) -> "Pool":
        """Attaches this process to pool `name` (reclaiming what processes that died held)."""
        handle = ctypes.c_void_p()
        _native.check(_native.require("mw_pool_attach")(name.encode("utf-8"), ctypes.byref(handle)))
        assert handle.value is not None
        return cls(handle.value, name)

    @staticmethod
    def destroy(name: str, force: bool = False) -> None:
        """Removes pool `name` (BusyError while processes are attached, unless force)."""
        _native.check(_native.require("mw_pool_destroy")(name.encode("utf-8"), 1 if force else 0))

    @staticmethod
    def stat(name: str, pages: bool = False) -> Dict[str, Any]:
        """The pool's state (schema memwall.pool/1, as `memwall pool stat NAME --json`), read
        without attaching."""
        return json.loads(_native.call_json("mw_pool_stat_json", name.encode("utf-8"), 1 if pages else 0))

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        """Detaches (later calls raise MisuseError; a second close too). Open views keep the
        process attached until they are closed."""
        with self._lock:
            if self._handle is None:
                raise MisuseError("the Pool was closed already")
            handle, self._handle, self._arg = self._handle, None, None
            _native.check(_native.lib.mw_pool_close(handle))

    # -- the data path ----------------------------------------------------------------------

    def lookup(self, keys: KeysLike) -> int:
        """How many leading keys are in the pool (no lock, no reference taken)."""
        raw = key_bytes(keys)
        arg = self._arg
        if arg is None:
            raise MisuseError("the Pool is closed; attach again")
        hits = ctypes.c_size_t()
        _native.check(_native.lib.mw_pool_lookup(arg, raw, len(raw) >> 3, ctypes.byref(hits)))
        return hits.value

    def store(self, keys: KeysLike, buffers: Any, *, parent: Optional[int] = None) -> int:
        """Stores block i from ``buffers[i]`` under ``keys[i]`` (keys[i]'s parent is keys[i-1],
        keys[0]'s is `parent`); keys already in the pool are skipped. Returns blocks written."""
        raw, array, pointers, address = self._prepare(keys, buffers, writable=False)
        parent_ref = None
        if parent is not None:
            if not 0 <= int(parent) < 1 << 64:
                raise InvalidArgumentError(f"parent key {parent} is outside 0 ... 2**64-1")
            parent_ref = ctypes.c_uint64(int(parent))
        stored = ctypes.c_size_t()
        _native.check(_native.lib.mw_pool_store(self._h(), raw, len(raw) >> 3, address,
                                                ctypes.byref(parent_ref) if parent_ref is not None else None,
                                                ctypes.byref(stored)))
        del array, pointers
        return stored.value

    def load(self, keys: KeysLike, buffers: Any) -> int:
        """Copies ``keys[i]``'s block into ``buffers[i]``, checking every checksum. Raises the
        first failed block's error (NotFoundError, CorruptedError) after trying them all."""
        raw, array, pointers, address = self._prepare(keys, buffers, writable=True)
        loaded = ctypes.c_size_t()
        _native.check(_native.lib.mw_pool_load(self._h(), raw, len(raw) >> 3, address, ctypes.byref(loaded)))
        del array, pointers
        return loaded.value

    def view(self, key: int) -> PoolView:
        """The block `key` in place (see :class:`PoolView`); NotFoundError when absent."""
        if not 0 <= int(key) < 1 << 64:
            raise InvalidArgumentError(f"key {key} is outside 0 ... 2**64-1")
        handle = ctypes.c_void_p()
        _native.check(_native.lib.mw_pool_view_open(self._h(), ctypes.c_uint64(int(key)), ctypes.byref(handle)))
        assert handle.value is not None
        return PoolView(handle.value, int(key))

    def _prepare(self, keys: KeysLike, buffers: Any, *, writable: bool) -> Any:
        raw = key_bytes(keys)
        count = len(raw) >> 3
        if count == 0:
            raise InvalidArgumentError("no keys given")
        array = as_block_array(buffers, count, self.block_bytes, writable=writable)
        pointers, address = block_pointers(array)
        return raw, array, pointers, address

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"block_bytes={self.block_bytes} capacity={self.capacity_blocks}"
        return f"<memwall.Pool {self.name!r} {state}>"
