"""`storybench doctor`'s verdict: exit 0 and "ready" on a healthy setup, exit 1 and a FAIL line otherwise."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from storybench_core import doctor
from storybench_core.bundled import BUILTIN_MODELS
from storybench_core.cli import main
from storybench_core.doctor import Check
from tests.fixtures_gguf import write_tiny_gguf


@pytest.fixture
def healthy_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fix the checks that read this machine (llama.cpp build, GPU), so a test decides the rest."""
    monkeypatch.setattr(doctor, "_llama", lambda: [Check("llama-cpp-python", "ok", "version test")])
    monkeypatch.setattr(doctor, "_gpu", lambda: Check("GPU", "ok", "none seen"))


@pytest.fixture
def prepared_models() -> list[Path]:
    """Every built-in model file present as a small valid GGUF (doctor reads only its header)."""
    paths = [m.path for m in BUILTIN_MODELS.values()]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_tiny_gguf(path)
    return paths


def _closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _lines(out: str) -> list[str]:
    return out.strip().splitlines()


def test_a_healthy_setup_passes(
    healthy_host: None, prepared_models: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["doctor"]) == 0
    lines = _lines(capsys.readouterr().out)
    assert not any(line.startswith(("[FAIL]", "[warn]")) for line in lines), lines
    assert any(line.startswith("[ok  ] store: sqlite:") for line in lines)
    assert any(line.startswith("[ok  ] built-in models:") for line in lines)
    assert lines[-1] == "doctor: ready to run evaluations"


def test_models_not_prepared_yet_warn_but_pass(
    healthy_host: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["doctor"]) == 0
    lines = _lines(capsys.readouterr().out)
    warning = next(line for line in lines if line.startswith("[warn] built-in models:"))
    assert "storybench models prepare" in warning
    assert lines[-1] == "doctor: ready to run evaluations (1 warning(s) above)"


def test_an_unreachable_mongodb_fails(
    healthy_host: None, prepared_models: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    port = _closed_port()
    uri = f"mongodb://ann:s3cret@127.0.0.1:{port}/?serverSelectionTimeoutMS=200"
    assert main(["--store", uri, "doctor"]) == 1
    lines = _lines(capsys.readouterr().out)
    fail = next(line for line in lines if line.startswith("[FAIL] store:"))
    assert f"127.0.0.1:{port}" in fail and "ann:***@" in fail and "s3cret" not in fail
    assert lines[-1] == "doctor: 1 problem(s) found (store); fix the FAIL lines above"


def test_a_corrupt_model_file_fails(
    healthy_host: None, prepared_models: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    broken = prepared_models[0]
    broken.write_bytes(b"<html>404 Not Found</html>")  # what a bad download leaves behind
    assert main(["doctor"]) == 1
    lines = _lines(capsys.readouterr().out)
    fail = next(line for line in lines if line.startswith("[FAIL] built-in models:"))
    assert str(broken) in fail and "storybench models prepare" in fail
    assert str(prepared_models[1]) not in fail
    assert lines[-1] == "doctor: 1 problem(s) found (built-in models); fix the FAIL lines above"


def test_a_failing_host_check_fails_the_verdict(
    monkeypatch: pytest.MonkeyPatch, prepared_models: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    missing = Check("CPU features", "fail", "llama.cpp was built for AVX512, which this CPU lacks")
    monkeypatch.setattr(doctor, "_llama", lambda: [Check("llama-cpp-python", "ok", "version test"), missing])
    monkeypatch.setattr(doctor, "_gpu", lambda: Check("GPU", "ok", "none seen"))
    assert main(["doctor"]) == 1
    lines = _lines(capsys.readouterr().out)
    assert "[FAIL] CPU features: llama.cpp was built for AVX512, which this CPU lacks" in lines
    assert lines[-1] == "doctor: 1 problem(s) found (CPU features); fix the FAIL lines above"


def test_the_cpu_kernel_mode_is_reported_and_a_bad_one_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real check (no llama.cpp call: it reads the mode and ggml's variables)."""
    from storybench_core.backends import llama_kernels

    monkeypatch.delenv(llama_kernels.GGML_ENABLE, raising=False)
    monkeypatch.setenv(llama_kernels.GGML_FORCE, "1")
    check = doctor._kernels()
    assert (check.status, check.detail.split(" — ")[0]) == ("ok", "tiled")
    monkeypatch.delenv(llama_kernels.GGML_FORCE)
    monkeypatch.setenv(llama_kernels.ENV, "mixed")
    assert "at most 7 tokens" in doctor._kernels().detail
    monkeypatch.setenv(llama_kernels.ENV, "turbo")
    check = doctor._kernels()
    assert check.status == "fail" and "STORYBENCH_CPU_MATMUL='turbo'" in check.detail
