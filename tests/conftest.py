"""Shared fixtures: every test gets its own STORYBENCH_HOME; slow tests share one file per built-in model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_SHARED_MODELS = Path(__file__).resolve().parent.parent / ".pytest_cache" / "storybench-models"

# The scripted test double is refused in configs outside the test suite. Set at import too,
# because some test modules build fake ModelSpecs at module level (collection time).
FAKE_BACKEND_ENV = "STORYBENCH_ENABLE_FAKE_BACKEND"
os.environ[FAKE_BACKEND_ENV] = "1"


@pytest.fixture(autouse=True)
def storybench_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Path:
    """A fresh data folder per test, so no test touches a user's data."""
    home = tmp_path / "storybench-home"
    home.mkdir()
    monkeypatch.setenv("STORYBENCH_HOME", str(home))
    monkeypatch.delenv("STORYBENCH_MONGODB_URI", raising=False)
    monkeypatch.setenv(FAKE_BACKEND_ENV, "1")
    # `path` models may be read from the test's own temp folder (tiny GGUFs are written there).
    monkeypatch.setenv("STORYBENCH_MODEL_DIRS", str(tmp_path))
    for limit in ("STORYBENCH_MAX_MODELS", "STORYBENCH_MAX_TASKS"):
        monkeypatch.delenv(limit, raising=False)
    if request.node.get_closest_marker("slow"):
        _link_bundled_model(home)
    return home


def _link_bundled_model(home: Path, builtin: str | None = None) -> None:
    """Hard-link one prepared built-in model into this test's home (preparing it once per session)."""
    from storybench_core import bundled

    shared = _SHARED_MODELS / bundled.bundled_model_path(builtin).name
    if not shared.is_file():
        _SHARED_MODELS.mkdir(parents=True, exist_ok=True)
        old = os.environ["STORYBENCH_HOME"]
        os.environ["STORYBENCH_HOME"] = str(_SHARED_MODELS.parent / "storybench-shared-home")
        try:
            built = bundled.ensure_bundled_model(builtin=builtin)
            os.replace(built, shared)
        finally:
            os.environ["STORYBENCH_HOME"] = old
    target = bundled.bundled_model_path(builtin)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        try:
            os.link(shared, target)
        except OSError:
            import shutil

            shutil.copyfile(shared, target)


@pytest.fixture
def bundled_model(storybench_home: Path) -> Path:
    """The real bundled Gemma 3 270M GGUF inside this test's home (slow tests only)."""
    from storybench_core import bundled

    if not bundled.bundled_model_path().exists():
        _link_bundled_model(storybench_home)
    return bundled.ensure_bundled_model()


@pytest.fixture
def smollm2_model(storybench_home: Path) -> Path:
    """The real built-in SmolLM2 135M Instruct GGUF (ChatML template) inside this test's home (slow tests only)."""
    from storybench_core import bundled

    builtin = bundled.SMOLLM2_135M.id
    if not bundled.bundled_model_path(builtin).exists():
        _link_bundled_model(storybench_home, builtin)
    return bundled.ensure_bundled_model(builtin=builtin)
