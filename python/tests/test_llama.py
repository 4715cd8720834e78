"""llama.cpp (llama-cpp-python) on the CPU with its prompt cache in MemWall's tiers: a tiny Llama
with random weights written as GGUF here, greedy generation with and without the cache, prefix
reuse across Llama instances, and states that went down to NVMe coming back verified."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest

from conftest import requires_kv


def _llama_missing() -> str:
    """Why llama-cpp-python is unavailable ("" when it imports)."""
    try:
        import gguf  # noqa: F401
        import llama_cpp  # noqa: F401
        return ""
    except ImportError as e:
        marker = Path(os.environ.get("MEMWALL_REPO", ".")) / ".build/venv/llama-unavailable"
        reason = marker.read_text().strip() if marker.exists() else ""
        return reason or f"llama-cpp-python or gguf is not installed ({e}); scripts/install-deps build installs them"


pytestmark = [requires_kv, pytest.mark.skipif(bool(_llama_missing()), reason=_llama_missing() or "-")]

import memwall  # noqa: E402

MAX_TOKENS = 12


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    from tiny_llama import write_tiny_llama
    return str(write_tiny_llama(tmp_path_factory.mktemp("model") / "tiny-llama.gguf"))


def new_llama(model: str):
    """A fresh context (nothing evaluated yet) that counts the tokens it evaluates."""
    from llama_cpp import Llama
    llm = Llama(model, n_ctx=512, n_batch=512, verbose=False, seed=0)
    llm.evaluated = []  # type: ignore[attr-defined]
    original = llm.eval

    def counting(tokens):
        llm.evaluated.append(len(tokens))  # type: ignore[attr-defined]
        return original(tokens)

    llm.eval = counting  # type: ignore[method-assign]
    return llm


def complete(llm, prompt: List[int]) -> Tuple[str, List[int]]:
    """Greedy completion: the text and every token id the context holds afterwards."""
    out = llm.create_completion(prompt, max_tokens=MAX_TOKENS, temperature=0.0)
    return out["choices"][0]["text"], llm.input_ids[: llm.n_tokens].tolist()


def prompt_of(seed: int, length: int, bos: bool = True) -> List[int]:
    """`length` tokens: <s> (unless bos is False), then plain tokens drawn from `seed`."""
    rng = np.random.default_rng(seed)
    body = [int(t) for t in rng.integers(259, 320, length - (1 if bos else 0))]
    return [1] + body if bos else body


@pytest.fixture
def cache(scratch: Path, model: str):
    from memwall.llama import MemWallLlamaCache
    with memwall.KVCache(tiers="dram:4,far:4,nvme:256", block_bytes=256 << 10, scratch_dir=str(scratch)) as kv:
        yield MemWallLlamaCache(kv, model=Path(model).name)


def test_greedy_tokens_are_identical_with_and_without_the_cache(model: str, cache) -> None:
    prompt = prompt_of(1, 200)
    plain = complete(new_llama(model), prompt)
    first = new_llama(model)
    first.set_cache(cache)
    assert complete(first, prompt) == plain, "a miss (state stored afterwards) changes nothing"
    second = new_llama(model)
    second.set_cache(cache)
    assert complete(second, prompt) == plain, "a hit (state loaded from MemWall) changes nothing"
    assert cache.counters["hits"] >= 1 and cache.counters["stores"] >= 2
    # The whole prompt came from the cache: llama.cpp re-evaluates one token for fresh logits.
    assert second.evaluated[0] == 1, second.evaluated


def test_a_shared_prefix_is_not_evaluated_again(model: str, cache) -> None:
    shared = prompt_of(2, 300)
    first_prompt = shared + prompt_of(3, 40)[1:]
    second_prompt = shared + prompt_of(4, 25)[1:]
    first = new_llama(model)
    first.set_cache(cache)
    complete(first, first_prompt)
    assert first.evaluated[0] == len(first_prompt)

    second = new_llama(model)          # another context: only the cache can give it the prefix
    second.set_cache(cache)
    text, ids = complete(second, second_prompt)
    new_tokens = len(second_prompt) - len(shared)
    assert second.evaluated[0] == new_tokens, f"evaluated {second.evaluated[0]} prompt tokens, {new_tokens} are new"
    assert (text, ids) == complete(new_llama(model), second_prompt)


def test_states_demoted_to_nvme_come_back_verified(model: str, cache) -> None:
    # No <s> in front: prompts that share no first token share no cached state, so each request
    # misses, stores its state, and pushes the older ones down the tiers.
    prompts = [prompt_of(10 + i, 180 + 10 * i, bos=False) for i in range(5)]
    expected = []
    for p in prompts:
        llm = new_llama(model)
        llm.set_cache(cache)
        expected.append(complete(llm, p))
    assert cache.counters["hits"] == 0 and cache.counters["stores"] == 5
    kv = cache.kv
    first = [stored for tokens, stored in cache._states.items() if list(tokens[: len(prompts[0])]) == prompts[0]]
    assert len(first) == 1
    tiers = kv.tiers(first[0].keys)
    assert 2 in tiers, f"the first prompt's state should have been pushed to NVMe by the later ones: tiers {tiers}"
    before = dict(cache.counters)

    llm = new_llama(model)
    llm.set_cache(cache)
    assert complete(llm, prompts[0]) == expected[0]
    assert llm.evaluated[0] == 1, "the state came from the cache, not from evaluating the prompt"
    assert cache.counters.get("tier2", 0) > before.get("tier2", 0), "blocks were read back from the NVMe tier"
    assert cache.counters["corrupted"] == 0
    assert kv.stats()["bytesMovedByPath"], "bytes moved through the tiers' transports"


def test_state_encoding_refuses_damage() -> None:
    from llama_cpp.llama import LlamaState

    from memwall.llama import decode_state, encode_state
    state = LlamaState(input_ids=np.arange(8, dtype=np.int32), scores=np.ones((2, 3), dtype=np.float32),
                       n_tokens=5, llama_state=b"abcdef", llama_state_size=6, seed=42)
    data = bytearray(encode_state(state))
    back = decode_state(bytes(data))
    assert back.n_tokens == 5 and back.llama_state == b"abcdef" and back.seed == 42
    assert np.array_equal(back.scores, state.scores) and np.array_equal(back.input_ids, state.input_ids)
    data[-1] ^= 0xFF
    with pytest.raises(memwall.MalformedInputError, match="digest"):
        decode_state(bytes(data))
    with pytest.raises(memwall.MalformedInputError, match="sizes"):
        decode_state(bytes(data[:-3]))
    with pytest.raises(memwall.MalformedInputError, match="magic"):
        decode_state(b"X" * 200)
