"""MemWall from Python: the KV cache in tiers (DRAM -> far memory -> NVMe), zero-copy for numpy
arrays, plus the host's capabilities and topology — all through libmemwall's C ABI (ctypes).

    import memwall
    kv = memwall.KVCache(tiers="dram:256,far:1024,nvme:8192", block_bytes=262144)
    buf = kv.allocate(32)
    keys = memwall.chain_keys(token_ids, block_tokens=16, extra=b"model-a")
    n = kv.lookup(keys); kv.store(keys, buf[:len(keys)]); kv.load(keys[:n], buf[:n])
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional

from . import _native
from .errors import (AlreadyExistsError, BusyError, CancelledError, CorruptedError, DisconnectedError, Error,
                     HardwareRequiredError, InvalidArgumentError, MalformedInputError, MisalignedError, MisuseError,
                     MissingDependencyError, NoMemoryOnNodeError, NotFoundError, OutOfBoundsError,
                     RemoteAccessError, ShortTransferError, SystemCallError, TimedOutError, UnsupportedError)
from .keys import chain_keys, extra_key
from .kv import BlockFailure, KVCache, Transfer
from .pool import Pool, PoolView
from .regions import Region

__version__ = "0.1.0"

__all__ = [
    "KVCache", "Transfer", "BlockFailure", "Pool", "PoolView", "Region", "chain_keys", "extra_key", "capabilities", "topology",
    "abi_version", "library_version", "library_path", "Error", "SystemCallError", "InvalidArgumentError",
    "MalformedInputError", "NotFoundError", "AlreadyExistsError", "BusyError", "OutOfBoundsError",
    "MisalignedError", "UnsupportedError", "HardwareRequiredError", "TimedOutError", "CancelledError",
    "DisconnectedError", "ShortTransferError", "NoMemoryOnNodeError", "RemoteAccessError", "CorruptedError",
    "MisuseError", "MissingDependencyError",
]


def abi_version() -> int:
    """The loaded libmemwall's ABI version (MW_ABI_VERSION)."""
    return int(_native.lib.mw_abi_version())


def library_version() -> str:
    """The loaded libmemwall's release, e.g. "0.1.0"."""
    return _native.lib.mw_version().decode("ascii")


def library_path() -> str:
    """Where the loaded libmemwall came from."""
    return str(_native.lib._name)


def capabilities(directory: Optional[str] = None) -> Dict[str, Any]:
    """What this host offers each MemWall path, as ``memwall capabilities --json`` prints it
    (schema memwall.capabilities/1). `directory` is where O_DIRECT is tried (default: the
    current directory; a private scratch file is written, read back and removed)."""
    return json.loads(_native.call_json("mw_capabilities_json", _native.optional_text(directory)))


def topology(source: Optional[str] = None) -> Dict[str, Any]:
    """Memory tiers, nodes and devices as ``memwall topo --json`` prints it (schema
    memwall.topology/1). `source`: None for this machine, or "xml:PATH", "fsroot:DIR",
    "synthetic:DESCRIPTION"."""
    return json.loads(_native.call_json("mw_topology_json", _native.optional_text(source)))
