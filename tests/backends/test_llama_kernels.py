"""CPU matrix-kernel choice (backends/llama_kernels.py): the mode, ggml's variables, the check.

The fast tests cover the mode and the environment; the slow ones load the real bundled model
in child processes (ggml reads its kernel switch once per process) and check that the batch
decoder measures, rather than assumes, that a row decoded among 8 equals the row alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from storybench_core.backends import llama_kernels
from storybench_core.errors import ConfigError


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (llama_kernels.ENV, llama_kernels.GGML_FORCE, llama_kernels.GGML_ENABLE):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(llama_kernels, "_set_here", False)
    return monkeypatch


def test_tiled_is_the_default_and_sets_ggmls_switch(clean_env: pytest.MonkeyPatch) -> None:
    import os

    assert llama_kernels.requested_mode() == "tiled"
    assert llama_kernels.effective_mode() == "mixed"  # ggml's own default, before apply()
    assert llama_kernels.apply() == "tiled"
    assert os.environ[llama_kernels.GGML_FORCE] == "1"
    assert llama_kernels.step_limit("tiled") is None
    # A child program (llama-server in a benchmark) gets llama.cpp's own default back.
    child = llama_kernels.without_our_kernel_choice(dict(os.environ))
    assert llama_kernels.GGML_FORCE not in child


def test_mixed_leaves_ggml_alone_and_caps_steps_below_the_tiled_kernels(
    clean_env: pytest.MonkeyPatch,
) -> None:
    import os

    clean_env.setenv(llama_kernels.ENV, "Mixed")
    assert llama_kernels.apply() == "mixed"
    assert llama_kernels.GGML_FORCE not in os.environ
    assert llama_kernels.step_limit("mixed") == llama_kernels.MIXED_STEP_TOKENS == 7


def test_a_users_own_ggml_setting_is_kept(clean_env: pytest.MonkeyPatch) -> None:
    import os

    clean_env.setenv(llama_kernels.GGML_FORCE, "1")
    assert llama_kernels.apply() == "tiled"
    assert llama_kernels.without_our_kernel_choice(dict(os.environ))[llama_kernels.GGML_FORCE] == "1"
    clean_env.setenv(llama_kernels.GGML_ENABLE, "0")  # ggml's tiled kernels off everywhere
    assert llama_kernels.effective_mode() == "vec_dot"
    assert llama_kernels.step_limit("vec_dot") is None


def test_an_unknown_mode_is_a_clear_error(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv(llama_kernels.ENV, "fastest")
    with pytest.raises(ConfigError, match=r"STORYBENCH_CPU_MATMUL='fastest'.*tiled, mixed"):
        llama_kernels.apply()


CHILD = r"""
import json, sys
from storybench_core.backends import llama_kernels
from storybench_core.backends.base import GenerationSettings
from storybench_core.backends.llama import create_llama_backend
from storybench_core.config import GenerationSettingsConfig, ModelSpec

if sys.argv[1] == "lie":  # claim tiled kernels while ggml runs its own mixed choice
    llama_kernels.effective_mode = lambda: "tiled"
backend = create_llama_backend(ModelSpec(kind="bundled", options={"n_threads": 1}), GenerationSettingsConfig(n_ctx=512, max_tokens=8))
convs = [[{"role": "user", "content": f"Write one line about the number {i}."}] for i in range(9)]
settings = [GenerationSettings(temperature=0.0, max_tokens=8, seed=i) for i in range(9)]
done = backend.chat_batch(convs, settings)
decoder = backend.batch_decoder(9)
print(json.dumps({
    "mode": decoder.cpu_matmul,
    "step": decoder.max_step_tokens,
    "engine": done[0].extra["engine"],
    "texts": [d.text for d in done],
}))
"""


def run_child(home: Path, env: dict[str, str], how: str = "honest") -> dict[str, object]:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith(("GGML_CPU_TILED", "STORYBENCH_CPU"))}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, how],
        env=base | {"STORYBENCH_HOME": str(home)} | env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["stderr"] = out.stderr
    return result


@pytest.mark.slow
def test_the_decoder_checks_the_kernels_and_falls_back_when_rows_differ(
    bundled_model: Path, storybench_home: Path
) -> None:
    """Three real processes on the bundled model: tiled (checked, no step limit), mixed (7), and a
    process whose mode claims tiled while ggml runs its mixed kernels: the check catches it, steps
    are capped at 7 and a warning says why; that process's texts equal the honest mixed ones."""
    tiled = run_child(storybench_home, {})
    assert (tiled["mode"], tiled["step"]) == ("tiled", None)
    assert tiled["engine"]["cpu_matmul"] == "tiled" and tiled["engine"]["batch_width"] == 9  # type: ignore[index]
    mixed = run_child(storybench_home, {llama_kernels.ENV: "mixed"})
    assert (mixed["mode"], mixed["step"]) == ("mixed", 7)
    lied = run_child(storybench_home, {llama_kernels.ENV: "mixed"}, how="lie")
    assert (lied["mode"], lied["step"]) == ("mixed", 7)
    assert "generation steps are capped at 7 tokens" in str(lied["stderr"])
    assert lied["texts"] == mixed["texts"]
