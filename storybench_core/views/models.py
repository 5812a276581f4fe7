"""What the Models page shows: the model cache, and downloads running in the background.

A download can take minutes, longer than any page script should run, so the
dashboard owns one DownloadTracker (per server process) whose threads call
`hub.resolve_model`; the page only polls `snapshot()`.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from ..access import Principal
from ..errors import ConfigError, StorybenchError
from ..hub import CachedModel, ModelRef, start_download
from ..store.base import Store
from .hardware import format_bytes

log = logging.getLogger(__name__)

_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

CACHE_COLUMNS = ["name", "source", "size", "architecture", "quantization", "parameters", "context", "path"]
BUILTIN_COLUMNS = ["name", "status", "about", "config"]


def format_count(n: int | None) -> str:
    """268435456 → '268 M', 7_000_000_000 → '7.0 B'."""
    if not n:
        return "—"
    if n >= 1e9:
        return f"{n / 1e9:.1f} B"
    if n >= 1e6:
        return f"{n / 1e6:.0f} M"
    return f"{n / 1e3:.0f} K"


def cached_models_frame(models: Iterable[CachedModel]) -> pd.DataFrame:
    """One row per GGUF file in the model folder."""
    rows = []
    for m in models:
        info = m.info
        source = "bundled" if m.bundled else f"hub: {m.ref.repo_id}" if m.ref else "local file"
        rows.append(
            {
                "name": m.name,
                "source": source,
                "size": format_bytes(m.size_bytes),
                "architecture": info.architecture if info else (m.error or "unreadable"),
                "quantization": (info.quantization or "") if info else "",
                "parameters": format_count(info.parameter_count) if info else "—",
                "context": f"{info.context_length:,}" if info and info.context_length else "—",
                "path": str(m.path),
            }
        )
    return pd.DataFrame(rows, columns=CACHE_COLUMNS)


def builtin_models_frame() -> pd.DataFrame:
    """One row per built-in model: prepared or not, what it is, and how a config names it."""
    from ..bundled import BUILTIN_MODELS, is_bundled_model_ready

    rows = [
        {
            "name": model.display_name,
            "status": "ready" if is_bundled_model_ready(model.id) else "not prepared yet",
            "about": model.summary,
            "config": json.dumps(model.config_entry),
        }
        for model in BUILTIN_MODELS.values()
    ]
    return pd.DataFrame(rows, columns=BUILTIN_COLUMNS)


def model_ref_from_form(repo_id: str, filename: str, subdirectory: str = "", revision: str = "") -> ModelRef:
    """A ModelRef from the download form, or a ConfigError saying which field is wrong."""
    repo_id, filename = repo_id.strip(), filename.strip().strip("/")
    subdirectory, revision = subdirectory.strip().strip("/"), revision.strip()
    if not _REPO_RE.match(repo_id):
        raise ConfigError(
            f"repository id '{repo_id}' must look like 'owner/name', e.g. 'unsloth/gemma-3-1b-it-GGUF'"
        )
    if not filename.lower().endswith(".gguf"):
        raise ConfigError(f"filename '{filename}' must be a .gguf file, e.g. 'gemma-3-1b-it-Q4_K_M.gguf'")
    if "/" in filename and not subdirectory:
        subdirectory, filename = filename.rsplit("/", 1)
    return ModelRef(repo_id, filename, subdirectory or None, revision or None)


@dataclass(frozen=True)
class DownloadState:
    """One download as the page shows it."""

    label: str
    done_bytes: int = 0
    total_bytes: int = 0
    status: str = "downloading"  # downloading | done | failed
    error: str | None = None
    path: str | None = None
    started_at: float = 0.0
    finished_at: float | None = None

    @property
    def fraction(self) -> float:
        if self.status == "done":
            return 1.0
        return min(1.0, self.done_bytes / self.total_bytes) if self.total_bytes else 0.0

    @property
    def progress_label(self) -> str:
        if self.status == "done":
            return f"{self.label}: done ({format_bytes(self.total_bytes or self.done_bytes)})"
        if self.status == "failed":
            return f"{self.label}: failed"
        total = format_bytes(self.total_bytes) if self.total_bytes else "?"
        return f"{self.label}: {format_bytes(self.done_bytes)} / {total}"


Resolver = Callable[..., Path]


class DownloadTracker:
    """Runs model downloads on background threads and reports their progress; thread-safe."""

    def __init__(self, resolve: Resolver | None = None) -> None:
        if resolve is None:
            from ..hub import resolve_model

            resolve = resolve_model
        self._resolve = resolve
        self._lock = threading.Lock()
        self._states: dict[str, DownloadState] = {}
        self._threads: dict[str, threading.Thread] = {}

    def start(self, ref: ModelRef, principal: Principal, store: Store) -> DownloadState:
        """Start downloading ref for principal (checked, audited) unless it is already downloading."""
        label = str(ref)
        with self._lock:
            current = self._states.get(label)
            if current is not None and current.status == "downloading":
                return current
        start_download(store, principal, ref)
        with self._lock:
            current = self._states.get(label)
            if current is not None and current.status == "downloading":
                return current
            state = DownloadState(label=label, started_at=time.time())
            self._states[label] = state
            thread = threading.Thread(
                target=self._run, args=(ref, label), name=f"download-{label}", daemon=True
            )
            self._threads[label] = thread
        thread.start()
        return state

    def _update(self, label: str, **fields: object) -> None:
        with self._lock:
            self._states[label] = replace(self._states[label], **fields)  # type: ignore[arg-type]

    def _run(self, ref: ModelRef, label: str) -> None:
        def progress(done: int, total: int) -> None:
            self._update(label, done_bytes=int(done), total_bytes=int(total or 0))

        try:
            path = self._resolve(ref, progress=progress)
        except StorybenchError as exc:
            self._update(label, status="failed", error=str(exc), finished_at=time.time())
        except Exception as exc:  # a bug or an unmapped library error: the log has the traceback
            log.exception("download of %s crashed", label)
            self._update(
                label,
                status="failed",
                error=f"unexpected {type(exc).__name__} while downloading {label} (details in the log file)",
                finished_at=time.time(),
            )
        else:
            size = Path(path).stat().st_size if Path(path).is_file() else 0
            self._update(label, status="done", path=str(path), total_bytes=size, finished_at=time.time())

    def snapshot(self) -> list[DownloadState]:
        """Every download of this process, newest first."""
        with self._lock:
            return sorted(self._states.values(), key=lambda s: s.started_at, reverse=True)

    @property
    def busy(self) -> bool:
        with self._lock:
            return any(s.status == "downloading" for s in self._states.values())

    def clear_finished(self) -> None:
        with self._lock:
            for label in [k for k, s in self._states.items() if s.status != "downloading"]:
                del self._states[label]
                self._threads.pop(label, None)

    def wait(self, timeout: float = 30.0) -> None:
        """Join the running download threads (tests, shutdown)."""
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(timeout)
