"""A tiny but valid GGUF, written with the `gguf` package, for fast tests.

All tensors are F32 zeros, so every size is elements × 4 bytes and tests can
check arithmetic by hand (see `tiny_gguf_sizes`). It has no tokenizer, so
llama.cpp cannot load it; it is for metadata, fitting and download tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

F32_BYTES = 4


@dataclass(frozen=True)
class TinyGGUFSizes:
    """Byte counts of what `write_tiny_gguf` writes."""

    layer_bytes: int
    token_embd_bytes: int
    output_norm_bytes: int
    output_bytes: int
    parameter_count: int

    @property
    def non_layer_bytes(self) -> int:
        return self.token_embd_bytes + self.output_norm_bytes + self.output_bytes


def tiny_gguf_sizes(
    n_layers: int = 4,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_vocab: int = 32,
    tied: bool = False,
) -> TinyGGUFSizes:
    head_dim = n_embd // n_head
    kv_dim = n_head_kv * head_dim
    n_ff = 2 * n_embd
    per_layer_elements = (
        n_embd  # attn_norm
        + n_embd * n_embd  # attn_q
        + n_embd * kv_dim  # attn_k
        + n_embd * kv_dim  # attn_v
        + n_embd * n_embd  # attn_output
        + n_embd  # ffn_norm
        + n_embd * n_ff  # ffn_up
        + n_ff * n_embd  # ffn_down
    )
    token_embd = n_vocab * n_embd
    output = 0 if tied else n_vocab * n_embd
    elements = n_layers * per_layer_elements + token_embd + n_embd + output
    return TinyGGUFSizes(
        layer_bytes=per_layer_elements * F32_BYTES,
        token_embd_bytes=token_embd * F32_BYTES,
        output_norm_bytes=n_embd * F32_BYTES,
        output_bytes=output * F32_BYTES,
        parameter_count=elements,
    )


def write_tiny_gguf(
    path: str | Path,
    n_layers: int = 4,
    *,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_vocab: int = 32,
    context_length: int = 2048,
    architecture: str = "llama",
    name: str = "tiny-test-model",
    file_type: int = 0,
    chat_template: str | None = None,
    sliding_window: int | None = None,
    tied: bool = False,
) -> Path:
    """Write a llama-like GGUF with `n_layers` blocks of F32 tensors; return its path."""
    from gguf import GGUFWriter

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head_dim = n_embd // n_head
    kv_dim = n_head_kv * head_dim
    n_ff = 2 * n_embd

    writer = GGUFWriter(path, architecture)
    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_context_length(context_length)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(n_ff)
    writer.add_block_count(n_layers)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    if sliding_window is not None:
        writer.add_sliding_window(sliding_window)
    if chat_template is not None:
        writer.add_chat_template(chat_template)

    def zeros(*shape: int) -> np.ndarray:
        return np.zeros(shape, dtype=np.float32)

    writer.add_tensor("token_embd.weight", zeros(n_vocab, n_embd))
    for index in range(n_layers):
        block = f"blk.{index}"
        writer.add_tensor(f"{block}.attn_norm.weight", zeros(n_embd))
        writer.add_tensor(f"{block}.attn_q.weight", zeros(n_embd, n_embd))
        writer.add_tensor(f"{block}.attn_k.weight", zeros(kv_dim, n_embd))
        writer.add_tensor(f"{block}.attn_v.weight", zeros(kv_dim, n_embd))
        writer.add_tensor(f"{block}.attn_output.weight", zeros(n_embd, n_embd))
        writer.add_tensor(f"{block}.ffn_norm.weight", zeros(n_embd))
        writer.add_tensor(f"{block}.ffn_up.weight", zeros(n_ff, n_embd))
        writer.add_tensor(f"{block}.ffn_down.weight", zeros(n_embd, n_ff))
    writer.add_tensor("output_norm.weight", zeros(n_embd))
    if not tied:
        writer.add_tensor("output.weight", zeros(n_vocab, n_embd))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# --- crafted headers: what a hostile file can claim -------------------------------------

GGUF_U32, GGUF_F32, GGUF_STRING, GGUF_ARRAY, GGUF_U64 = 4, 6, 8, 9, 10


def gguf_string(text: str | bytes, claimed_length: int | None = None) -> bytes:
    """A GGUF string: u64 length then bytes (the length may lie)."""
    data = text.encode() if isinstance(text, str) else text
    return (len(data) if claimed_length is None else claimed_length).to_bytes(8, "little") + data


def gguf_kv(key: str, value_type: int, payload: bytes) -> bytes:
    """One metadata entry: key, u32 value type, the value's bytes as given."""
    return gguf_string(key) + value_type.to_bytes(4, "little") + payload


def gguf_tensor_info(name: str, dims: tuple[int, ...] = (4,), type_code: int = 0, offset: int = 0) -> bytes:
    out = gguf_string(name) + len(dims).to_bytes(4, "little")
    out += b"".join(d.to_bytes(8, "little") for d in dims)
    return out + type_code.to_bytes(4, "little") + offset.to_bytes(8, "little")


def write_crafted_gguf(
    path: str | Path,
    entries: list[bytes] | None = None,
    tensors: list[bytes] | None = None,
    *,
    tensor_count: int | None = None,
    kv_count: int | None = None,
    architecture: str | None = "llama",
    tail: bytes = b"\0" * 64,
) -> Path:
    """A GGUF v3 header written byte by byte, whose counts may claim more than it holds."""
    entries = list(entries or [])
    if architecture is not None:
        entries.insert(0, gguf_kv("general.architecture", GGUF_STRING, gguf_string(architecture)))
    tensors = list(tensors or [])
    header = b"GGUF" + (3).to_bytes(4, "little")
    header += (len(tensors) if tensor_count is None else tensor_count).to_bytes(8, "little")
    header += (len(entries) if kv_count is None else kv_count).to_bytes(8, "little")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + b"".join(entries) + b"".join(tensors) + tail)
    return path
