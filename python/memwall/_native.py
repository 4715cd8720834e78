"""Finding, loading and declaring libmemwall (the C ABI of include/memwall.h) through ctypes.

Why ctypes: it is in the standard library, so installing the package needs no compiler and no
build step on the user's machine — the wheel is pure Python plus the shipped libmemwall.so
(which carries its own Swift runtime). cffi would need a C compiler at install time (API mode)
or add a dependency for little gain (ABI mode is what ctypes does). The cost is per-call
overhead of about a microsecond, which the zero-copy paths make irrelevant for block moves.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path
from typing import Any, List, Optional

from .errors import Error, MissingDependencyError, error_for

#: The ABI this package was written for (MW_ABI_VERSION in memwall.h).
ABI_VERSION = 1

c_size_p = ctypes.POINTER(ctypes.c_size_t)
c_uint64_p = ctypes.POINTER(ctypes.c_uint64)
c_char_pp = ctypes.POINTER(ctypes.c_char_p)


class TransferSummary(ctypes.Structure):
    """mw_transfer_summary."""
    _fields_ = [("blocks", ctypes.c_size_t), ("failed", ctypes.c_size_t), ("bytes", ctypes.c_uint64)]


class BlockFailureStruct(ctypes.Structure):
    """mw_block_failure."""
    _fields_ = [("index", ctypes.c_size_t), ("key", ctypes.c_uint64), ("status", ctypes.c_int),
                ("message", ctypes.c_char * 496)]


def _candidates() -> List[str]:
    """Where libmemwall is looked for: $MEMWALL_LIBRARY when set, then beside this package
    (the wheel carries it there), then the system's library path (make install)."""
    out: List[str] = []
    explicit = os.environ.get("MEMWALL_LIBRARY")
    if explicit:
        out.append(explicit)
    here = Path(__file__).resolve().parent
    for name in ("libmemwall.so", "libmemwall.so.1"):
        if (here / name).exists():
            out.append(str(here / name))
    out.append("libmemwall.so.1")
    found = ctypes.util.find_library("memwall")
    if found:
        out.append(found)
    return out


def _load() -> ctypes.CDLL:
    tried: List[str] = []
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            tried.append(f"{path}: {e}")
            continue
        version = lib.mw_abi_version()
        if version != ABI_VERSION:
            tried.append(f"{path}: ABI version {version}, this package needs {ABI_VERSION}")
            continue
        return lib
    raise MissingDependencyError(
        "libmemwall could not be loaded; install the memwall wheel (it carries the library), run "
        "`make install`, or set MEMWALL_LIBRARY to the library's path. Tried: " + "; ".join(tried))


lib = _load()

_P = ctypes.c_void_p
_PP = ctypes.POINTER(ctypes.c_void_p)
_signatures: Any = {
    "mw_abi_version": ([], ctypes.c_int),
    "mw_version": ([], ctypes.c_char_p),
    "mw_status_name": ([ctypes.c_int], ctypes.c_char_p),
    "mw_last_error": ([], ctypes.c_char_p),
    "mw_free_string": ([_P], ctypes.c_int),
    "mw_capabilities_json": ([ctypes.c_char_p, _PP], ctypes.c_int),
    "mw_topology_json": ([ctypes.c_char_p, _PP], ctypes.c_int),
    "mw_region_alloc": ([ctypes.c_int, ctypes.c_size_t, ctypes.c_uint32, _PP], ctypes.c_int),
    "mw_region_adopt": ([_P, ctypes.c_size_t, _PP], ctypes.c_int),
    "mw_region_ptr": ([_P, _PP, c_size_p], ctypes.c_int),
    "mw_region_node": ([_P, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)], ctypes.c_int),
    "mw_region_close": ([_P], ctypes.c_int),
    "mw_extra_key": ([_P, ctypes.c_size_t, c_uint64_p], ctypes.c_int),
    "mw_chain_keys": ([_P, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_uint64, _P, ctypes.c_int, _P,
                       ctypes.c_size_t, c_size_p], ctypes.c_int),
    "mw_kv_open": ([ctypes.c_char_p, _PP], ctypes.c_int),
    "mw_kv_close": ([_P], ctypes.c_int),
    "mw_kv_block_bytes": ([_P, c_size_p], ctypes.c_int),
    "mw_kv_register": ([_P, _P], ctypes.c_int),
    "mw_kv_deregister": ([_P, _P], ctypes.c_int),
    "mw_kv_lookup": ([_P, _P, ctypes.c_size_t, c_size_p, _P], ctypes.c_int),
    "mw_kv_store": ([_P, _P, ctypes.c_size_t, _P, _P, ctypes.c_int], ctypes.c_int),
    "mw_kv_load": ([_P, _P, ctypes.c_size_t, _P, ctypes.c_int, ctypes.c_uint64], ctypes.c_int),
    "mw_kv_store_async": ([_P, _P, ctypes.c_size_t, _P, _P, ctypes.c_int, _PP], ctypes.c_int),
    "mw_kv_load_async": ([_P, _P, ctypes.c_size_t, _P, ctypes.c_int, ctypes.c_uint64, _PP], ctypes.c_int),
    "mw_kv_prefetch": ([_P, _P, ctypes.c_size_t, _PP], ctypes.c_int),
    "mw_transfer_poll": ([_P], ctypes.c_int),
    "mw_transfer_wait": ([_P, ctypes.c_int64], ctypes.c_int),
    "mw_transfer_result": ([_P, ctypes.POINTER(TransferSummary)], ctypes.c_int),
    "mw_transfer_failure": ([_P, ctypes.c_size_t, ctypes.POINTER(BlockFailureStruct)], ctypes.c_int),
    "mw_transfer_close": ([_P], ctypes.c_int),
    "mw_kv_event_fd": ([_P, ctypes.POINTER(ctypes.c_int)], ctypes.c_int),
    "mw_kv_stats_json": ([_P, _PP], ctypes.c_int),
    "mw_kv_events_json": ([_P, _PP], ctypes.c_int),
    "mw_pool_create": ([ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int, ctypes.c_uint32, _PP], ctypes.c_int),
    "mw_pool_create_on_device": ([ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_uint32,
                                  ctypes.c_int, _PP], ctypes.c_int),
    "mw_pool_attach": ([ctypes.c_char_p, _PP], ctypes.c_int),
    "mw_pool_close": ([_P], ctypes.c_int),
    "mw_pool_destroy": ([ctypes.c_char_p, ctypes.c_int], ctypes.c_int),
    "mw_pool_geometry": ([_P, c_size_p, c_size_p], ctypes.c_int),
    "mw_pool_lookup": ([_P, _P, ctypes.c_size_t, c_size_p], ctypes.c_int),
    "mw_pool_store": ([_P, _P, ctypes.c_size_t, _P, _P, c_size_p], ctypes.c_int),
    "mw_pool_load": ([_P, _P, ctypes.c_size_t, _P, c_size_p], ctypes.c_int),
    "mw_pool_view_open": ([_P, ctypes.c_uint64, _PP], ctypes.c_int),
    "mw_pool_view_bytes": ([_P, _PP, c_size_p], ctypes.c_int),
    "mw_pool_view_verify": ([_P], ctypes.c_int),
    "mw_pool_view_close": ([_P], ctypes.c_int),
    "mw_pool_stat_json": ([ctypes.c_char_p, ctypes.c_int, _PP], ctypes.c_int),
}

#: Functions of memwall.h the loaded library does not export (a build without the KV cache).
missing: List[str] = []
for _name, (_args, _res) in _signatures.items():
    try:
        _fn = getattr(lib, _name)
    except AttributeError:
        missing.append(_name)
        continue
    _fn.argtypes = _args
    _fn.restype = _res


def last_error() -> str:
    """The calling thread's last error message."""
    raw = lib.mw_last_error()
    return raw.decode("utf-8", "replace") if raw else ""


def check(status: int) -> int:
    """Raises the matching memwall.Error for a negative status; returns it otherwise."""
    if status < 0:
        raise error_for(status, last_error())
    return status


def require(name: str) -> Any:
    """The library function `name`, or MissingDependencyError when this build lacks it."""
    if name in missing:
        raise MissingDependencyError(
            f"{name} is not in the loaded libmemwall ({lib._name}); it was built without the KV cache — "
            "rebuild it (make lib) or install a newer wheel")
    return getattr(lib, name)


def take_string(pointer: ctypes.c_void_p) -> str:
    """Reads a string the library returned and frees it (exactly once)."""
    if not pointer.value:
        raise Error("libmemwall returned no string")
    try:
        return ctypes.string_at(pointer.value).decode("utf-8")
    finally:
        check(lib.mw_free_string(pointer))


def call_json(function: str, *args: Any) -> str:
    """Calls a `char **json_out` function of the ABI and returns the document."""
    out = ctypes.c_void_p()
    check(require(function)(*args, ctypes.byref(out)))
    return take_string(out)


def optional_text(value: Optional[str]) -> Optional[bytes]:
    return None if value is None else os.fsencode(value)
