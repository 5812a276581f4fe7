"""What a GGUF file holds: architecture, sizes, layers, chat template.

Read from the header only, through a read-only memory map; no model is
loaded. `validate_gguf` is the check every model file passes before llama.cpp
sees it, so a bad file fails with our message instead of a crash.

Why not `gguf.GGUFReader`: it decodes every tokenizer string into numpy
arrays, 7.7 s for the bundled 270M model (262k tokens); this header walk
skips those arrays and takes well under a second. Type codes and block sizes
still come from the `gguf` package, and a test checks both agree.

A model file may come from anyone, so every count and length in the header is
bounded before it is used (tensor and key counts, string and array lengths,
dimensions, block count, alignment): a crafted header is refused in
milliseconds instead of looping for minutes or filling memory, and every
failure is one `ModelFileError`.
"""

from __future__ import annotations

import math
import mmap
import re
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from storybench_core.errors import ModelFileError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
_LAYER_TENSOR = re.compile(r"^blk\.(\d+)\.")
_MAX_DIMS = 8
_SMALL_ARRAY = 4096  # numeric arrays up to this length are decoded (e.g. per-layer head counts)
# Bounds on what a header may claim; real models stay far below each of them.
_MAX_TENSORS = 1 << 18  # DeepSeek-V3 with unmerged experts has ~47k
_MAX_KV = 1 << 16
_MAX_ARRAY = 1 << 23  # items in one array (vocabularies and merges are ~10^5-10^6)
_MAX_KEY_BYTES = 4096
_MAX_STRING_BYTES = 1 << 20  # one string value (chat templates are a few kB)
_MAX_NAME_BYTES = 256  # a tensor name (llama.cpp allows 64)
_MAX_BLOCKS = 4096  # layers
_MAX_ALIGNMENT = 1 << 20

# GGUF value types (gguf.GGUFValueType) → struct format of one scalar.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFInfo:
    """Metadata and tensor sizes of one GGUF file. Sizes are in bytes."""

    path: Path
    file_size_bytes: int
    architecture: str
    name: str | None
    quantization: str | None
    parameter_count: int
    context_length: int | None
    block_count: int
    embedding_length: int | None
    head_count: int | None
    head_count_kv: int | None
    key_length: int | None
    value_length: int | None
    sliding_window: int | None
    chat_template: str | None
    tensor_bytes_total: int
    layer_tensor_bytes: tuple[int, ...]
    """Tensor bytes of each repeating block, by block index (`blk.N.*`)."""
    non_layer_tensor_bytes: int
    """Everything outside the blocks: token embedding, output norm and head."""
    output_tensor_bytes: int
    """What llama.cpp puts on the GPU as its output layer (the token embedding when the head is tied)."""

    @property
    def head_dim_k(self) -> int | None:
        """Per-head key width: the explicit key length, else embedding / heads."""
        if self.key_length:
            return self.key_length
        if self.embedding_length and self.head_count:
            return self.embedding_length // self.head_count
        return None

    @property
    def head_dim_v(self) -> int | None:
        return self.value_length or self.head_dim_k

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        data["layer_tensor_bytes"] = list(self.layer_tensor_bytes)
        return data


def validate_gguf(path: str | Path) -> GGUFInfo:
    """Check a model file before loading it; same as `read_gguf_info`."""
    return read_gguf_info(path)


def read_gguf_info(path: str | Path) -> GGUFInfo:
    """Read a GGUF file's metadata; every failure is a `ModelFileError`."""
    path = Path(path).expanduser()
    file_size = _check_file(path)
    try:
        with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            metadata, tensors, data_start = _parse(data)
        return _build_info(path, file_size, metadata, tensors, data_start)
    except ModelFileError:
        raise
    except _UnknownTensorType as exc:
        raise ModelFileError(
            f"unsupported GGUF tensor type in {path}: {exc} — this gguf package does not know it; "
            "update gguf and llama-cpp-python, or pick another quantization"
        ) from exc
    except _Corrupt as exc:
        raise _incomplete(path, file_size, f"its header is corrupt: {exc}") from exc
    except OSError as exc:
        raise ModelFileError(
            f"cannot read model file {path}: {exc.strerror} — check its permissions"
        ) from exc
    except (
        struct.error,
        ValueError,
        IndexError,
        KeyError,
        TypeError,
        UnicodeDecodeError,
        OverflowError,
        ZeroDivisionError,
        MemoryError,
    ) as exc:
        raise _incomplete(path, file_size, "its header is cut short or corrupt") from exc


def _check_file(path: Path) -> int:
    if not path.exists():
        raise ModelFileError(
            f"model file not found: {path} — check the path or download it with "
            "`storybench models download REPO FILE`"
        )
    if not path.is_file():
        raise ModelFileError(f"model path is not a file: {path} — point it at a .gguf file")
    file_size = path.stat().st_size
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise ModelFileError(
            f"cannot read model file {path}: {exc.strerror} — check its permissions"
        ) from exc
    magic = head[:4]
    if magic != GGUF_MAGIC:
        if len(magic) < 4 and GGUF_MAGIC.startswith(magic):
            raise _incomplete(path, file_size, "it ends before the GGUF header")
        # The file's own bytes are not echoed: the message may reach a page.
        raise ModelFileError(
            f"not a GGUF file: {path} (it does not start with the GGUF signature) — "
            "Storybench loads llama.cpp GGUF models; pick the .gguf file of the repository"
        )
    if len(head) < 8:
        raise _incomplete(path, file_size, "it ends before the GGUF header")
    version = int.from_bytes(head[4:8], "little")
    if version not in SUPPORTED_VERSIONS:
        detail = "it is big-endian" if int.from_bytes(head[4:8], "big") in SUPPORTED_VERSIONS else ""
        raise ModelFileError(
            f"unsupported GGUF version {version}{' (' + detail + ')' if detail else ''}: {path} — "
            "Storybench reads little-endian GGUF versions 2 and 3; get a current conversion of the model"
        )
    return file_size


def _incomplete(path: Path, file_size: int, detail: str) -> ModelFileError:
    return ModelFileError(
        f"model file is incomplete or damaged: {path} ({file_size:,} bytes; {detail}) — "
        "delete it and download it again"
    )


class _UnknownTensorType(Exception):
    pass


class _Corrupt(Exception):
    """A header field outside its bounds (the message says which)."""


@dataclass(frozen=True)
class _Tensor:
    name: str
    n_elements: int
    n_bytes: int
    offset: int


class _Cursor:
    """Sequential little-endian reads over the mapped file."""

    def __init__(self, data: mmap.mmap) -> None:
        self.data = data
        self.pos = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def scalar(self, fmt: str) -> Any:
        (value,) = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def count(self, what: str, limit: int, min_bytes_each: int) -> int:
        """A u64 count, refused when above `limit` or when its items could not fit in the file."""
        value = self.scalar("Q")
        if value > limit or value * min_bytes_each > self.remaining:
            raise _Corrupt(f"it claims {value:,} {what} (at most {limit:,}, and they must fit in the file)")
        return int(value)

    def string(self, limit: int = _MAX_STRING_BYTES, what: str = "a string") -> str:
        length = self.scalar("Q")
        if length > limit:
            raise _Corrupt(f"{what} of {length:,} bytes (at most {limit:,})")
        end = self.pos + length
        if end > len(self.data):
            raise ValueError("string runs past the end of the file")
        text = self.data[self.pos : end].decode("utf-8")
        self.pos = end
        return text

    def skip_strings(self, count: int) -> None:
        size = len(self.data)
        for _ in range(count):
            (length,) = struct.unpack_from("<Q", self.data, self.pos)
            self.pos += 8 + length
            if self.pos > size:
                raise ValueError("string array runs past the end of the file")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind = self.scalar("I")
            if item_kind == _STRING:
                self.skip_strings(self.count("array items", _MAX_ARRAY, 8))
                return None  # token lists and the like: not needed here
            if item_kind not in _SCALARS:
                raise _Corrupt(f"unsupported array item type {item_kind}")
            fmt = _SCALARS[item_kind]
            count = self.count("array items", _MAX_ARRAY, struct.calcsize(fmt))
            if count <= _SMALL_ARRAY:
                values = list(struct.unpack_from(f"<{count}{fmt}", self.data, self.pos))
            else:
                values = None
            self.pos += count * struct.calcsize(fmt)
            return values
        raise _Corrupt(f"unknown GGUF value type {kind}")


def _parse(data: mmap.mmap) -> tuple[dict[str, Any], list[_Tensor], int]:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    cursor = _Cursor(data)
    cursor.pos = 8  # magic and version, checked already
    # Smallest possible entries: a tensor 25 bytes (name length, one character, dims, type,
    # offset), a key/value 13 bytes (key length, one character, type, one byte of value).
    tensor_count = cursor.count("tensors", _MAX_TENSORS, 25)
    kv_count = cursor.count("metadata keys", _MAX_KV, 13)
    metadata: dict[str, Any] = {}
    for _ in range(kv_count):
        key = cursor.string(_MAX_KEY_BYTES, "a metadata key")
        metadata[key] = cursor.value(cursor.scalar("I"))
    tensors = []
    for _ in range(tensor_count):
        name = cursor.string(_MAX_NAME_BYTES, "a tensor name")
        n_dims = cursor.scalar("I")
        if n_dims > _MAX_DIMS:
            raise _Corrupt(f"tensor {name} has {n_dims} dimensions (at most {_MAX_DIMS})")
        n_elements = 1
        for _ in range(n_dims):
            n_elements *= cursor.scalar("Q")
        type_code = cursor.scalar("I")
        try:
            ggml_type = GGMLQuantizationType(type_code)
        except ValueError:
            raise _UnknownTensorType(f"tensor {name} has tensor type {type_code}") from None
        offset = cursor.scalar("Q")
        block_size, type_size = GGML_QUANT_SIZES[ggml_type]
        tensors.append(_Tensor(name, n_elements, n_elements * type_size // block_size, offset))
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    # An integer power of two, as llama.cpp requires (a string, a float or 0 is a corrupt header).
    if (
        not isinstance(alignment, int)
        or isinstance(alignment, bool)
        or not 0 < alignment <= _MAX_ALIGNMENT
        or alignment & (alignment - 1)
    ):
        raise _Corrupt(
            f"general.alignment = {_shown(alignment)} is not a power of two up to {_MAX_ALIGNMENT}"
        )
    data_start = -(-cursor.pos // alignment) * alignment
    return metadata, tensors, data_start


def _shown(value: Any) -> str:
    text = repr(value) if isinstance(value, int | float | str) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _build_info(
    path: Path, file_size: int, metadata: dict[str, Any], tensors: list[_Tensor], data_start: int
) -> GGUFInfo:
    def integer(key: str) -> int | None:
        raw = metadata.get(key)
        if isinstance(raw, list):  # per-layer arrays (e.g. head_count_kv): the widest layer counts
            raw = max(raw) if raw else None
        if isinstance(raw, float) and not math.isfinite(raw):
            return None
        return int(raw) if isinstance(raw, int | float) else None

    def text(key: str) -> str | None:
        raw = metadata.get(key)
        return raw if isinstance(raw, str) and raw else None

    architecture = text("general.architecture")
    if architecture is None:
        raise ModelFileError(
            f"GGUF file has no general.architecture: {path} — it is not a llama.cpp model; "
            "pick a model GGUF, not an adapter or a vocabulary file"
        )

    layer_bytes: dict[int, int] = {}
    by_name: dict[str, int] = {}
    total = non_layer = elements = data_end = 0
    for tensor in tensors:
        total += tensor.n_bytes
        elements += tensor.n_elements
        by_name[tensor.name] = tensor.n_bytes
        data_end = max(data_end, data_start + tensor.offset + tensor.n_bytes)
        match = _LAYER_TENSOR.match(tensor.name)
        if match:
            index = int(match.group(1))
            if index >= _MAX_BLOCKS:
                raise _Corrupt(f"tensor {tensor.name} is in block {index:,} (at most {_MAX_BLOCKS})")
            layer_bytes[index] = layer_bytes.get(index, 0) + tensor.n_bytes
        else:
            non_layer += tensor.n_bytes
    if data_end > file_size:
        raise _incomplete(path, file_size, f"its tensor data needs {data_end:,} bytes")

    block_count = integer(f"{architecture}.block_count")
    if block_count is None:
        block_count = max(layer_bytes) + 1 if layer_bytes else 0
    if not 0 <= block_count <= _MAX_BLOCKS:
        raise _Corrupt(f"{architecture}.block_count = {block_count:,} (at most {_MAX_BLOCKS})")
    per_layer = tuple(layer_bytes.get(i, 0) for i in range(max([block_count, *(i + 1 for i in layer_bytes)])))

    # llama.cpp's output layer: output.weight, or a copy of token_embd when the head is tied.
    head = by_name.get("output.weight", by_name.get("token_embd.weight", 0))
    output_bytes = head + by_name.get("output_norm.weight", 0)

    return GGUFInfo(
        path=path,
        file_size_bytes=file_size,
        architecture=architecture,
        name=text("general.name"),
        quantization=_quantization_name(integer("general.file_type")),
        parameter_count=integer("general.parameter_count") or elements,
        context_length=integer(f"{architecture}.context_length"),
        block_count=block_count,
        embedding_length=integer(f"{architecture}.embedding_length"),
        head_count=integer(f"{architecture}.attention.head_count"),
        head_count_kv=integer(f"{architecture}.attention.head_count_kv"),
        key_length=integer(f"{architecture}.attention.key_length"),
        value_length=integer(f"{architecture}.attention.value_length"),
        sliding_window=integer(f"{architecture}.attention.sliding_window"),
        chat_template=text("tokenizer.chat_template"),
        tensor_bytes_total=total,
        layer_tensor_bytes=per_layer,
        non_layer_tensor_bytes=non_layer,
        output_tensor_bytes=output_bytes,
    )


def _quantization_name(file_type: int | None) -> str | None:
    """`general.file_type` as llama.cpp names it: 15 → "Q4_K_M", 1 → "F16"."""
    if file_type is None:
        return None
    from gguf import LlamaFileType

    try:
        member = LlamaFileType(file_type)
    except ValueError:
        return f"file_type {file_type}"
    return member.name.removeprefix("MOSTLY_").removeprefix("ALL_")
