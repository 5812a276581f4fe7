"""gguf_info: fields of a real (tiny) GGUF, and the three ways a file can be bad."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures_gguf import (
    GGUF_ARRAY,
    GGUF_F32,
    GGUF_STRING,
    GGUF_U32,
    GGUF_U64,
    gguf_kv,
    gguf_string,
    gguf_tensor_info,
    tiny_gguf_sizes,
    write_crafted_gguf,
    write_tiny_gguf,
)

from storybench_core.errors import ModelFileError
from storybench_core.gguf_info import read_gguf_info, validate_gguf


def test_fields_of_a_tiny_gguf(tmp_path: Path) -> None:
    path = write_tiny_gguf(
        tmp_path / "tiny.gguf",
        n_layers=5,
        context_length=4096,
        chat_template="{{ messages }}",
        sliding_window=256,
    )
    sizes = tiny_gguf_sizes(n_layers=5)

    info = read_gguf_info(path)

    assert info.path == path
    assert info.file_size_bytes == path.stat().st_size
    assert info.architecture == "llama"
    assert info.name == "tiny-test-model"
    assert info.quantization == "F32"
    assert info.parameter_count == sizes.parameter_count
    assert info.context_length == 4096
    assert info.block_count == 5
    assert (info.embedding_length, info.head_count, info.head_count_kv) == (64, 4, 2)
    assert (info.key_length, info.value_length, info.head_dim_k, info.head_dim_v) == (16, 16, 16, 16)
    assert info.sliding_window == 256
    assert info.chat_template == "{{ messages }}"
    assert info.layer_tensor_bytes == (sizes.layer_bytes,) * 5
    assert info.non_layer_tensor_bytes == sizes.non_layer_bytes
    assert info.output_tensor_bytes == sizes.output_bytes + sizes.output_norm_bytes
    assert info.tensor_bytes_total == 5 * sizes.layer_bytes + sizes.non_layer_bytes
    assert info.to_dict()["layer_tensor_bytes"] == [sizes.layer_bytes] * 5
    assert validate_gguf(path) == info


def test_tied_head_and_missing_optional_fields(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "tied.gguf", n_layers=2, tied=True, file_type=15)
    sizes = tiny_gguf_sizes(n_layers=2, tied=True)

    info = read_gguf_info(path)

    assert info.quantization == "Q4_K_M"  # file_type 15, whatever the tensors hold
    assert info.chat_template is None
    assert info.sliding_window is None
    # llama.cpp copies token_embd to the GPU as the output head when the head is tied
    assert info.output_tensor_bytes == sizes.token_embd_bytes + sizes.output_norm_bytes


def test_agrees_with_the_gguf_package_reader(tmp_path: Path) -> None:
    from gguf import GGUFReader

    path = write_tiny_gguf(tmp_path / "tiny.gguf", n_layers=3, tied=True)
    reader = GGUFReader(path)

    info = read_gguf_info(path)

    assert info.tensor_bytes_total == sum(int(t.n_bytes) for t in reader.tensors)
    assert info.parameter_count == sum(int(t.n_elements) for t in reader.tensors)
    assert info.block_count == reader.get_field("llama.block_count").contents()
    assert info.context_length == reader.get_field("llama.context_length").contents()


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelFileError, match="model file not found") as err:
        read_gguf_info(missing)
    assert str(missing) in str(err.value)
    assert "storybench models download" in str(err.value)


@pytest.mark.parametrize("content", [b"<!DOCTYPE html><html>404</html>", b"PK\x03\x04zip", b"\x00" * 64])
def test_not_a_gguf(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match="not a GGUF file") as err:
        read_gguf_info(path)
    assert str(path) in str(err.value)


def test_a_folder_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="not a file"):
        read_gguf_info(tmp_path)


@pytest.mark.parametrize("keep", [0, 2, 6, 40, 600, 0.5, 0.999])
def test_truncated_file(tmp_path: Path, keep: float) -> None:
    full = write_tiny_gguf(tmp_path / "full.gguf").read_bytes()
    cut = int(len(full) * keep) if isinstance(keep, float) else keep
    path = tmp_path / "cut.gguf"
    path.write_bytes(full[:cut])
    with pytest.raises(ModelFileError, match="incomplete or damaged") as err:
        read_gguf_info(path)
    assert "download it again" in str(err.value)
    assert str(path) in str(err.value)


def test_unsupported_version(tmp_path: Path) -> None:
    path = tmp_path / "old.gguf"
    path.write_bytes(b"GGUF" + (1).to_bytes(4, "little") + b"\0" * 32)
    with pytest.raises(ModelFileError, match="unsupported GGUF version 1"):
        read_gguf_info(path)


def test_garbage_after_the_magic_never_escapes_as_a_raw_error(tmp_path: Path) -> None:
    full = bytearray(write_tiny_gguf(tmp_path / "full.gguf").read_bytes())
    for offset in range(8, 400, 7):
        damaged = bytearray(full)
        damaged[offset : offset + 8] = b"\xff" * 8
        path = tmp_path / "damaged.gguf"
        path.write_bytes(bytes(damaged))
        try:
            read_gguf_info(path)
        except ModelFileError:
            pass


# --- crafted headers: bounded, fast, and always the one ModelFileError ------------------


def _u64(value: int) -> bytes:
    return value.to_bytes(8, "little")


def _u32(value: int) -> bytes:
    return value.to_bytes(4, "little")


CRAFTED = {
    # A huge block_count used to build a per-layer tuple of 2^40 entries: minutes, then out of memory.
    "block_count": ([gguf_kv("llama.block_count", GGUF_U64, _u64(2**40))], [], {}),
    "tensor count": ([], [], {"tensor_count": 2**62}),
    "key count": ([], [], {"kv_count": 2**40}),
    "string array": ([gguf_kv("tokenizer.ggml.tokens", GGUF_ARRAY, _u32(GGUF_STRING) + _u64(2**40))], [], {}),
    "number array": ([gguf_kv("llama.x", GGUF_ARRAY, _u32(GGUF_U32) + _u64(2**60))], [], {}),
    "string length": ([gguf_kv("general.name", GGUF_STRING, _u64(2**63))], [], {}),
    "key length": ([_u64(2**40) + b"k"], [], {}),
    "tensor name": ([], [gguf_string("x" * 300) + _u32(1) + _u64(4) + _u32(0) + _u64(0)], {}),
    "dimensions": ([], [gguf_tensor_info("blk.0.w", dims=(1,) * 9)], {}),
    "block index": ([], [gguf_tensor_info("blk.123456789.attn_q.weight")], {}),
    # A string where an integer belongs raised a TypeError that broke the whole model listing.
    "string alignment": ([gguf_kv("general.alignment", GGUF_STRING, gguf_string("32"))], [], {}),
    "zero alignment": ([gguf_kv("general.alignment", GGUF_U32, _u32(0))], [], {}),
    "odd alignment": ([gguf_kv("general.alignment", GGUF_U32, _u32(24))], [], {}),
    "value type": ([gguf_kv("llama.x", 77, b"")], [], {}),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_a_crafted_header_is_refused_fast_as_a_model_file_error(tmp_path: Path, case: str) -> None:
    entries, tensors, counts = CRAFTED[case]
    path = write_crafted_gguf(tmp_path / "crafted.gguf", entries, tensors, **counts)
    with pytest.raises(ModelFileError, match="incomplete or damaged") as err:
        read_gguf_info(path)
    assert str(path) in str(err.value)


def test_a_crafted_header_within_bounds_still_reads(tmp_path: Path) -> None:
    """The bounds refuse only lies: small honest values (a NaN context length too) still read."""
    nan = b"\x00\x00\xc0\x7f"
    entries = [
        gguf_kv("llama.block_count", GGUF_U32, _u32(2)),
        gguf_kv("llama.context_length", GGUF_F32, nan),
        gguf_kv("general.alignment", GGUF_U32, _u32(64)),
        gguf_kv("tokenizer.ggml.tokens", GGUF_ARRAY, _u32(GGUF_STRING) + _u64(2) + gguf_string("a") * 2),
    ]
    path = write_crafted_gguf(tmp_path / "ok.gguf", entries)
    info = read_gguf_info(path)
    assert (info.block_count, info.context_length, info.layer_tensor_bytes) == (2, None, (0, 0))


def test_not_a_gguf_does_not_echo_the_files_bytes(tmp_path: Path) -> None:
    path = tmp_path / "secret.gguf"
    path.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(ModelFileError) as err:
        read_gguf_info(path)
    assert "root" not in str(err.value).replace(str(tmp_path), "")
