"""A tiny Llama written as GGUF at test time: the real architecture (attention, RoPE, SwiGLU
feed-forward, RMS norm, a llama tokenizer with byte tokens) with random weights, so llama.cpp
loads and runs it on a CPU in milliseconds and nothing is downloaded from a model hub."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_tiny_llama(path: Path, *, seed: int = 7, vocab_plain: int = 61, width: int = 64, blocks: int = 2,
                     heads: int = 4, feed_forward: int = 128, context: int = 2048) -> Path:
    """Writes the model to `path` (about half a megabyte) and returns it.

    Token ids: 0 <unk>, 1 <s>, 2 </s>, 3 ... 258 the byte tokens <0x00> ... <0xFF>, then
    `vocab_plain` plain tokens. The weights are drawn from a fixed seed, so every run writes the
    same file and greedy generation is deterministic.
    """
    import gguf  # the `gguf` package from PyPI (llama.cpp's own writer)

    rng = np.random.default_rng(seed)
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)]
    tokens += [f"w{i}".encode() for i in range(vocab_plain)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * vocab_plain
    vocab = len(tokens)
    head_dim = width // heads

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("memwall-tiny-llama")
    writer.add_context_length(context)
    writer.add_embedding_length(width)
    writer.add_block_count(blocks)
    writer.add_feed_forward_length(feed_forward)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * 3 + [-1000.0] * 256 + [-float(i) for i in range(vocab_plain)])
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)

    def tensor(name: str, *shape: int, scale: float = 0.2) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    tensor("token_embd.weight", vocab, width, scale=1.0)
    writer.add_tensor("output_norm.weight", np.ones(width, dtype=np.float32))
    tensor("output.weight", vocab, width)
    for b in range(blocks):
        writer.add_tensor(f"blk.{b}.attn_norm.weight", np.ones(width, dtype=np.float32))
        tensor(f"blk.{b}.attn_q.weight", width, width)
        tensor(f"blk.{b}.attn_k.weight", width, width)
        tensor(f"blk.{b}.attn_v.weight", width, width)
        tensor(f"blk.{b}.attn_output.weight", width, width)
        writer.add_tensor(f"blk.{b}.ffn_norm.weight", np.ones(width, dtype=np.float32))
        tensor(f"blk.{b}.ffn_gate.weight", feed_forward, width)
        tensor(f"blk.{b}.ffn_up.weight", feed_forward, width)
        tensor(f"blk.{b}.ffn_down.weight", width, feed_forward)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
