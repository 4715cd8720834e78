"""Memory regions: allocated by libmemwall on a NUMA node (a tier), or the caller's own."""

from __future__ import annotations

import ctypes
import threading
from typing import Any, Optional, Set, Tuple, Union

import numpy as np

from . import _native
from .errors import InvalidArgumentError, MisuseError

#: mw_region_alloc's node for "wherever the kernel puts the pages".
NODE_ANY = -1
#: mw_region_alloc's node for the far-memory node (CPU-less / CXL, else the emulated pool).
NODE_FAR = -2


class Region:
    """One region handle: page-aligned memory libmemwall allocated, or caller memory it wraps.

    The handle is closed exactly once: by :meth:`close`, or when the last numpy view made by
    :meth:`array` and the Region itself are gone. Closing a region that a KVCache still has
    registered raises BusyError (deregister it, or close the cache, first).
    """

    def __init__(self, handle: int, *, owner: Any = None) -> None:
        self._handle: Optional[int] = handle
        self._owner = owner            # adopted memory: the object whose buffer it is
        self._lock = threading.Lock()
        #: mw_kv handles this region is registered with (KVCache keeps it up to date), so that a
        #: region dropped by the garbage collector is deregistered before its handle is closed.
        self._registered_with: Set[int] = set()
        pointer, size = ctypes.c_void_p(), ctypes.c_size_t()
        _native.check(_native.lib.mw_region_ptr(handle, ctypes.byref(pointer), ctypes.byref(size)))
        self.address: int = pointer.value or 0
        self.nbytes: int = size.value

    @classmethod
    def allocate(cls, nbytes: int, node: Union[int, str, None] = None, *, huge_pages: bool = False) -> "Region":
        """Allocates `nbytes` (rounded up to pages) on `node`: None for any node, an int node
        number, or ``"far"`` for the far-memory node. The pages are placed before this returns.

        Raises:
            InvalidArgumentError: bad size or node; NotFoundError: no such node (the message
            lists the valid ones); NoMemoryOnNodeError: not enough free memory there.
        """
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes <= 0:
            raise InvalidArgumentError(f"nbytes must be a positive int, not {nbytes!r}")
        if node is None:
            number = NODE_ANY
        elif node == "far":
            number = NODE_FAR
        elif isinstance(node, int) and not isinstance(node, bool) and node >= 0:
            number = node
        else:
            raise InvalidArgumentError(f"node must be None, a node number >= 0 or 'far', not {node!r}")
        handle = ctypes.c_void_p()
        _native.check(_native.lib.mw_region_alloc(number, nbytes, 1 if huge_pages else 0, ctypes.byref(handle)))
        assert handle.value is not None
        return cls(handle.value)

    @classmethod
    def adopt(cls, buffer: Any) -> "Region":
        """Wraps a writable, C-contiguous buffer (a numpy array, bytearray, mmap …) without
        copying; the Region keeps a reference to it, so it stays alive while the Region lives."""
        array = buffer if isinstance(buffer, np.ndarray) else np.frombuffer(memoryview(buffer), dtype=np.uint8)
        if not array.flags.c_contiguous:
            raise InvalidArgumentError("the buffer is not C-contiguous; adopt a contiguous array")
        if not array.flags.writeable:
            raise InvalidArgumentError("the buffer is read-only; a region must be writable (loads write into it)")
        if array.nbytes == 0:
            raise InvalidArgumentError("the buffer is empty")
        handle = ctypes.c_void_p()
        _native.check(_native.lib.mw_region_adopt(array.ctypes.data, array.nbytes, ctypes.byref(handle)))
        assert handle.value is not None
        return cls(handle.value, owner=buffer)

    @property
    def handle(self) -> int:
        """The mw_region handle (raises MisuseError once closed)."""
        with self._lock:
            if self._handle is None:
                raise MisuseError("the region is closed")
            return self._handle

    @property
    def closed(self) -> bool:
        """True once :meth:`close` succeeded."""
        return self._handle is None

    def node(self) -> Tuple[int, bool]:
        """(NUMA node of the pages or -1, whether that node is the emulated far pool)."""
        node, emulated = ctypes.c_int(), ctypes.c_int()
        _native.check(_native.lib.mw_region_node(self.handle, ctypes.byref(node), ctypes.byref(emulated)))
        return node.value, bool(emulated.value)

    def array(self, shape: Optional[Tuple[int, ...]] = None) -> np.ndarray:
        """A zero-copy uint8 numpy view of the region (reshaped to `shape` when given). The
        view keeps this Region alive: the memory cannot be freed under it."""
        if self._owner is not None:
            raise InvalidArgumentError("an adopted region's memory is the buffer you adopted; use that")
        raw = (ctypes.c_uint8 * self.nbytes).from_address(self.address)
        raw._memwall_region = self  # type: ignore[attr-defined]  # the view's base keeps the Region
        view = np.frombuffer(raw, dtype=np.uint8)
        return view.reshape(shape) if shape is not None else view

    def close(self) -> None:
        """Frees the handle (and, for allocated memory, the memory once no transfer uses it).
        Closing twice raises MisuseError, as the C ABI does."""
        with self._lock:
            if self._handle is None:
                raise MisuseError("the region was closed already; a handle is closed exactly once")
            _native.check(_native.lib.mw_region_close(self._handle))
            self._handle = None

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is None:
            return
        # Nothing refers to the memory any more: take it back from the caches that still have
        # it (a closed cache answers misuse, which is fine), then free the handle. A transfer in
        # flight holds its buffers, so it cannot be the one that got here.
        for kv in list(getattr(self, "_registered_with", ())):
            _native.lib.mw_kv_deregister(kv, handle)
        _native.lib.mw_region_close(handle)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.nbytes} bytes at {self.address:#x}"
        return f"<memwall.Region {state}>"


def region_of(array: Any) -> Optional[Region]:
    """The Region whose memory a view made by :meth:`Region.array` (or a slice of it) shows."""
    base = array
    for _ in range(64):   # numpy base chains are short; the bound keeps a cycle from looping
        region = getattr(base, "_memwall_region", None)
        if region is not None:
            return region
        base = getattr(base, "base", None)
        if base is None:
            return None
        if isinstance(base, memoryview):
            base = base.obj
    return None
