"""Zero-copy views of caller buffers as block pointers, checked before anything moves."""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np

from .errors import InvalidArgumentError


def as_block_array(buffers: Any, count: int, block_bytes: int, *, writable: bool, what: str = "buffers") -> np.ndarray:
    """`buffers` as a (count, block_bytes) uint8 array sharing its memory (never a copy).

    Accepted: a numpy uint8 array of shape (count, block_bytes) whose rows are contiguous (the
    rows may be strided, e.g. every other row of a larger array), a one-dimensional uint8 array
    of count * block_bytes, or any C-contiguous buffer-protocol object of that many bytes
    (bytes, bytearray, memoryview, array.array). A load needs a writable buffer.

    Raises:
        InvalidArgumentError: wrong dtype, shape or size, non-contiguous rows, a read-only
            buffer for a load — each message says what was given and what is needed.
    """
    if isinstance(buffers, np.ndarray):
        array = buffers
    else:
        try:
            view = memoryview(buffers)
        except TypeError:
            raise InvalidArgumentError(
                f"{what} must be a numpy array or support the buffer protocol, not {type(buffers).__name__}") from None
        if not view.c_contiguous:
            raise InvalidArgumentError(f"{what} is not C-contiguous; pass a contiguous buffer (or a numpy array)")
        array = np.frombuffer(view, dtype=np.uint8) if view.nbytes else np.empty(0, dtype=np.uint8)
    if array.dtype != np.uint8:
        raise InvalidArgumentError(f"{what} must have dtype uint8, not {array.dtype} (view it with .view(np.uint8))")
    if array.ndim == 1:
        if array.shape[0] != count * block_bytes:
            raise InvalidArgumentError(
                f"{what} holds {array.shape[0]} bytes; {count} block(s) of {block_bytes} bytes need {count * block_bytes}")
        if array.strides[0] != 1 and count > 0:
            raise InvalidArgumentError(f"{what} is not contiguous (stride {array.strides[0]}); pass contiguous bytes")
        array = array.reshape(count, block_bytes) if count else array.reshape(0, block_bytes)
    elif array.ndim == 2:
        if array.shape != (count, block_bytes):
            raise InvalidArgumentError(
                f"{what} has shape {array.shape}; {count} key(s) need shape ({count}, {block_bytes})")
        if count and array.strides[1] != 1:
            raise InvalidArgumentError(
                f"{what}'s rows are not contiguous (strides {array.strides}); each block must be {block_bytes} "
                "consecutive bytes — use np.ascontiguousarray or a row slice")
    else:
        raise InvalidArgumentError(f"{what} must be 1- or 2-dimensional, not of shape {array.shape}")
    if writable and not array.flags.writeable:
        raise InvalidArgumentError(f"{what} is read-only; a load writes into it, so pass a writable array")
    return array


def block_pointers(array: np.ndarray) -> Tuple[np.ndarray, int]:
    """The address of every row of a (count, block_bytes) array, as the uint64 array the
    C ABI reads as `void *const *`, and that array's address."""
    count = array.shape[0]
    base = array.ctypes.data
    # int64 arithmetic: a reversed view has a negative row stride; user-space addresses are < 2**63.
    pointers = (np.int64(base) + np.arange(count, dtype=np.int64) * np.int64(array.strides[0])).astype(np.uint64)
    return pointers, pointers.ctypes.data
