"""Chained block keys: the same 64-bit keys the Swift API's BlockKey.chained gives."""

from __future__ import annotations

import ctypes
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from . import _native
from .errors import InvalidArgumentError

KeysLike = Union[np.ndarray, Sequence[int]]


def extra_key(identity: Union[bytes, bytearray, memoryview, str, int]) -> int:
    """The 64-bit extra key for a model / adapter identity.

    Bytes (or a str, encoded as UTF-8) are hashed by libmemwall the way every MemWall caller
    does (mw_extra_key); an int in [0, 2**64) is used as it is.
    """
    if isinstance(identity, int) and not isinstance(identity, bool):
        if not 0 <= identity < 1 << 64:
            raise InvalidArgumentError(f"extra key {identity} is outside 0 ... 2**64-1")
        return identity
    if isinstance(identity, str):
        identity = identity.encode("utf-8")
    if not isinstance(identity, (bytes, bytearray, memoryview)):
        raise InvalidArgumentError(f"extra must be bytes, str or int, not {type(identity).__name__}")
    data = bytes(identity)
    out = ctypes.c_uint64()
    _native.check(_native.lib.mw_extra_key(data, len(data), ctypes.byref(out)))
    return out.value


def chain_keys(token_ids: Union[Iterable[int], np.ndarray], block_tokens: int = 16,
               extra: Union[bytes, str, int] = b"", parent: Optional[int] = None,
               partial: bool = False) -> np.ndarray:
    """Keys of the blocks of `token_ids`, each standing for its tokens and every token before.

    Args:
        token_ids: token ids (each in [0, 2**32)).
        block_tokens: tokens per block.
        extra: model / adapter identity mixed into every key (see :func:`extra_key`).
        parent: key of the block before ``token_ids[0]``; None when they start a sequence.
        partial: also key a trailing partly filled block (as KVCache.admit does); by default
            only full blocks get keys, as in vLLM's prefix cache.

    Returns:
        A numpy uint64 array, one key per block, usable wherever keys are taken.

    Raises:
        InvalidArgumentError: a token outside [0, 2**32), block_tokens < 1, a bad extra.
    """
    if isinstance(block_tokens, bool) or not isinstance(block_tokens, int) or block_tokens < 1:
        raise InvalidArgumentError(f"block_tokens must be a positive int, not {block_tokens!r}")
    tokens = np.asarray(token_ids if not isinstance(token_ids, np.ndarray) else token_ids)
    if tokens.ndim != 1:
        raise InvalidArgumentError(f"token_ids must be one-dimensional, not of shape {tokens.shape}")
    if tokens.size and not np.issubdtype(tokens.dtype, np.integer):
        raise InvalidArgumentError(f"token_ids must be integers, not {tokens.dtype}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 1 << 32):
        raise InvalidArgumentError("token ids must lie in 0 ... 2**32-1")
    tokens = np.ascontiguousarray(tokens, dtype=np.uint32)
    count = len(tokens)
    capacity = (count + block_tokens - 1) // block_tokens
    keys = np.empty(capacity, dtype=np.uint64)
    parent_value = None
    if parent is not None:
        if not 0 <= int(parent) < 1 << 64:
            raise InvalidArgumentError(f"parent key {parent} is outside 0 ... 2**64-1")
        parent_value = ctypes.c_uint64(int(parent))
    produced = ctypes.c_size_t()
    _native.check(_native.lib.mw_chain_keys(
        tokens.ctypes.data if count else None, count, block_tokens, extra_key(extra),
        ctypes.byref(parent_value) if parent_value is not None else None, 1 if partial else 0,
        keys.ctypes.data if capacity else None, capacity, ctypes.byref(produced)))
    return keys[: produced.value]


def as_keys(keys: KeysLike, what: str = "keys") -> np.ndarray:
    """`keys` as a contiguous uint64 array (no copy when it already is one).

    Raises:
        InvalidArgumentError: not one-dimensional, not integers, or outside 0 ... 2**64-1.
    """
    if isinstance(keys, np.ndarray):
        if keys.dtype == np.uint64 and keys.ndim == 1 and keys.flags.c_contiguous:
            return keys
        if keys.ndim != 1:
            raise InvalidArgumentError(f"{what} must be one-dimensional, not of shape {keys.shape}")
        if keys.size and not np.issubdtype(keys.dtype, np.integer):
            raise InvalidArgumentError(f"{what} must be integers, not {keys.dtype}")
        if keys.size and np.issubdtype(keys.dtype, np.signedinteger) and keys.min() < 0:
            raise InvalidArgumentError(f"{what} must lie in 0 ... 2**64-1, not {int(keys.min())}")
        return np.ascontiguousarray(keys, dtype=np.uint64)
    try:
        items = list(keys)
    except TypeError:
        raise InvalidArgumentError(f"{what} must be a sequence of ints, not {type(keys).__name__}") from None
    for k in items:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise InvalidArgumentError(f"{what} must be ints in 0 ... 2**64-1, not {type(k).__name__} {k!r}")
        if not 0 <= int(k) < 1 << 64:
            raise InvalidArgumentError(f"{what} must lie in 0 ... 2**64-1, not {int(k)}")
    return np.fromiter((int(k) for k in items), dtype=np.uint64, count=len(items))


_U64 = np.dtype(np.uint64)


def key_bytes(keys: KeysLike) -> bytes:
    """`keys` as the bytes of a uint64 array, for the C ABI's `const uint64_t *keys` (the
    library reads them during the call only). The common case — a one-dimensional uint64 array,
    as chain_keys returns — costs one small copy and no checks beyond its type (about 0.2 µs,
    a tenth of what numpy's ``.ctypes.data`` costs)."""
    if type(keys) is np.ndarray and keys.dtype is _U64 and keys.ndim == 1:
        return keys.tobytes()
    return as_keys(keys).tobytes()
