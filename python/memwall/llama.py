"""A llama.cpp prompt cache (llama-cpp-python's BaseLlamaCache) whose states live as blocks in
MemWall's tiers — DRAM, then far memory, then NVMe — instead of Python objects in RAM.

    from llama_cpp import Llama
    import memwall
    from memwall.llama import MemWallLlamaCache

    kv = memwall.KVCache(tiers="dram:64,far:256,nvme:4096", block_bytes=262144)
    llm = Llama("model.gguf", n_ctx=2048)
    llm.set_cache(MemWallLlamaCache(kv, model="model.gguf"))
    llm.create_completion(prompt_tokens, max_tokens=32, temperature=0.0)

After a completion llama-cpp-python hands the cache the context's state (the KV cache of every
token so far, the logits, the token ids); a later request — in this Llama or another one over the
same model — gets back the state that shares the longest prefix with its prompt, and llama.cpp
evaluates only the tokens after that prefix. Each state is written in a small explicit format
(never pickle), cut into blocks and stored under keys chained from its tokens, so MemWall's
checksum verifies every block that comes back, from whichever tier; a digest over the whole
state verifies it again end to end. A state whose blocks MemWall evicted, or that fails
verification, is a cache miss (llama.cpp recomputes it) and is counted in :attr:`counters`.
"""

from __future__ import annotations

import hashlib
import struct
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
from llama_cpp.llama import Llama, LlamaState
from llama_cpp.llama_cache import BaseLlamaCache

from .errors import Error, MalformedInputError
from .keys import chain_keys
from .kv import KVCache

_MAGIC = b"MWLLAMA1"
# magic, n_tokens, input_ids count, score rows, score columns, llama state bytes, seed, digest
_HEADER = struct.Struct("<8sQQQQQQ32s")
#: Largest state accepted back (16 GiB): bounds what a damaged header could make us allocate.
_MAXIMUM_STATE = 16 << 30


def encode_state(state: LlamaState) -> bytes:
    """A LlamaState as bytes: a fixed header (sizes and a BLAKE2b digest of the rest), the token
    ids (int32), the logits (float32) and llama.cpp's own state."""
    ids = np.ascontiguousarray(state.input_ids, dtype=np.int32)
    scores = np.ascontiguousarray(state.scores, dtype=np.float32)
    if scores.ndim != 2:
        scores = scores.reshape(-1, scores.shape[-1] if scores.ndim else 1)
    body = ids.tobytes() + scores.tobytes() + bytes(state.llama_state[: state.llama_state_size])
    digest = hashlib.blake2b(body, digest_size=32).digest()
    header = _HEADER.pack(_MAGIC, int(state.n_tokens), ids.size, scores.shape[0], scores.shape[1],
                          int(state.llama_state_size), int(state.seed) & (2**64 - 1), digest)
    return header + body


def decode_state(data: Union[bytes, memoryview]) -> LlamaState:
    """Reads :func:`encode_state`'s bytes back; every size is checked against the data before
    anything is allocated, and the digest must match.

    Raises:
        MalformedInputError: a wrong magic, sizes that do not add up, or a digest mismatch.
    """
    view = memoryview(data)
    if len(view) < _HEADER.size:
        raise MalformedInputError(f"llama state of {len(view)} bytes is shorter than its header")
    magic, n_tokens, n_ids, rows, cols, state_size, seed, digest = _HEADER.unpack_from(view)
    if magic != _MAGIC:
        raise MalformedInputError("not a MemWall llama state (wrong magic)")
    sizes = (n_ids * 4, rows * cols * 4, state_size)
    if any(s > _MAXIMUM_STATE for s in sizes) or _HEADER.size + sum(sizes) > len(view) or n_tokens > n_ids:
        raise MalformedInputError("llama state sizes do not match its length")
    body = view[_HEADER.size: _HEADER.size + sum(sizes)]
    if hashlib.blake2b(body, digest_size=32).digest() != digest:
        raise MalformedInputError("llama state digest mismatch: the bytes that came back are not the bytes stored")
    ids = np.frombuffer(body[: sizes[0]], dtype=np.int32).copy()
    scores = np.frombuffer(body[sizes[0]: sizes[0] + sizes[1]], dtype=np.float32).reshape(rows, cols).copy()
    llama_state = bytes(body[sizes[0] + sizes[1]:])
    return LlamaState(input_ids=ids, scores=scores, n_tokens=int(n_tokens), llama_state=llama_state,
                      llama_state_size=int(state_size), seed=int(seed))


@dataclass
class _Stored:
    keys: np.ndarray   # the state's block keys, chained after its token prefix's key
    nbytes: int


class MemWallLlamaCache(BaseLlamaCache):
    """llama-cpp-python's prompt cache over a :class:`memwall.KVCache`.

    Args:
        kv: the cache holding the states' blocks (its tiers decide where they live).
        model: identity of the model (a path or name); states of another model never match.
        capacity_bytes: most state bytes this cache keeps track of; the least recently used
            states are forgotten beyond it (their blocks age out of MemWall on their own).
    """

    def __init__(self, kv: KVCache, model: Union[str, bytes] = b"", capacity_bytes: int = 2 << 30) -> None:
        super().__init__(capacity_bytes)
        self.kv = kv
        self.model = model.encode("utf-8") if isinstance(model, str) else bytes(model)
        self._states: "OrderedDict[Tuple[int, ...], _Stored]" = OrderedDict()
        self._staging: Optional[np.ndarray] = None
        #: hits, misses, stores, evicted (blocks gone from MemWall), corrupted (failed
        #: verification), and blocks loaded per tier index ("tier0", "tier1", ...).
        self.counters: Dict[str, int] = {"hits": 0, "misses": 0, "stores": 0, "evicted": 0, "corrupted": 0}

    # -- BaseLlamaCache ---------------------------------------------------------------------

    @property
    def cache_size(self) -> int:
        return sum(s.nbytes for s in self._states.values())

    def _find_longest_prefix_key(self, key: Tuple[int, ...]) -> Optional[Tuple[int, ...]]:
        best, best_len = None, 0
        for k in self._states:
            n = Llama.longest_token_prefix(k, key)
            if n > best_len:
                best, best_len = k, n
        return best

    def __contains__(self, key: Sequence[int]) -> bool:
        stored = self._states.get(tuple(key))
        return stored is not None and self.kv.lookup(stored.keys) == len(stored.keys)

    def __getitem__(self, key: Sequence[int]) -> LlamaState:
        found = self._find_longest_prefix_key(tuple(key))
        if found is None:
            self.counters["misses"] += 1
            raise KeyError("no cached state shares a prefix with these tokens")
        stored = self._states[found]
        keys = stored.keys
        if self.kv.lookup(keys) < len(keys):
            # MemWall evicted some of its blocks: the state is gone, llama.cpp recomputes it.
            del self._states[found]
            self.counters["evicted"] += 1
            self.counters["misses"] += 1
            raise KeyError("the cached state's blocks were evicted")
        for tier in self.kv.tiers(keys):
            self.counters[f"tier{tier}"] = self.counters.get(f"tier{tier}", 0) + 1
        buffer = self._buffer(len(keys))
        try:
            self.kv.load(keys, buffer[: len(keys)])
            state = decode_state(memoryview(buffer.reshape(-1))[: stored.nbytes])
        except Error as e:
            del self._states[found]
            self.counters["corrupted"] += 1
            self.counters["misses"] += 1
            warnings.warn(f"memwall: a cached llama state failed verification and is dropped: {e}", RuntimeWarning)
            raise KeyError("the cached state failed verification") from e
        self._states.move_to_end(found)
        self.counters["hits"] += 1
        return state

    def __setitem__(self, key: Sequence[int], value: LlamaState) -> None:
        tokens = tuple(int(t) for t in key)
        data = encode_state(value)
        block = self.kv.block_bytes
        count = -(-len(data) // block)
        # Keyed by the tokens (chained, with the model's identity) and by the state's length, so
        # a state of another size never shares blocks with this one.
        prefix = chain_keys(tokens, block_tokens=self.kv.block_tokens, extra=self.model, partial=True)
        parent = int(prefix[-1]) if len(prefix) else None
        keys = chain_keys(np.arange(count, dtype=np.uint32), block_tokens=1,
                          extra=b"llama-state:%d" % len(data), parent=parent)
        buffer = self._buffer(count)
        flat = buffer.reshape(-1)
        flat[: len(data)] = np.frombuffer(data, dtype=np.uint8)
        flat[len(data): count * block] = 0
        self.kv.store(keys, buffer[:count], parent=parent)
        self._states[tokens] = _Stored(keys=keys, nbytes=len(data))
        self._states.move_to_end(tokens)
        self.counters["stores"] += 1
        while self.cache_size > self.capacity_bytes and len(self._states) > 1:
            self._states.popitem(last=False)

    # -- staging ----------------------------------------------------------------------------

    def _buffer(self, blocks: int) -> np.ndarray:
        """A registered (blocks, block_bytes) staging array, grown when a state needs more."""
        if self._staging is None or self._staging.shape[0] < blocks:
            self._staging = None   # the old one is deregistered and freed when collected
            self._staging = self.kv.allocate(max(blocks, 4))
        return self._staging
