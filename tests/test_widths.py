"""Choosing the batch width: from measured decode rates, the probe and its cache (fast), and the real model (slow)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from storybench_core import width_probe
from storybench_core.backends.fake import FakeBackend
from storybench_core.config import GenerationSettingsConfig, ModelSpec
from storybench_core.errors import StopRequested
from storybench_core.widths import balanced_parts, rate_at, width_for, width_from_rates
from tests.fixtures_gguf import write_tiny_gguf

# Shaped like llama.cpp on an AVX2 EPYC (FACTS.md): three sequences no faster than one, four and more
# are; past 8 a step takes more decode calls (backends/llama_batch.py) and the rate falls again.
AVX2_LIKE = {1: 46.4, 2: 48.6, 3: 40.5, 4: 70.7, 8: 91.5, 16: 80.0}


def test_balanced_parts() -> None:
    assert balanced_parts(15, 7) == [5, 5, 5]
    assert balanced_parts(15, 8) == [8, 7]
    assert balanced_parts(15, 15) == [15]
    assert balanced_parts(3, 1) == [1, 1, 1]
    assert balanced_parts(0, 4) == []


def test_rate_between_and_beyond_the_measured_widths() -> None:
    assert rate_at(AVX2_LIKE, 4) == 70.7
    assert rate_at(AVX2_LIKE, 6) == pytest.approx((70.7 + 91.5) / 2)
    assert rate_at(AVX2_LIKE, 20) == 80.0  # beyond the widest measured: as fast as that
    assert rate_at({2: 10.0}, 1) == 10.0


def test_a_width_above_the_step_limit_costs_its_parts() -> None:
    # At most 7 conversations per decode call: a step of 8 is two calls of 4, of 15 three of 5.
    measured = {1: 80.0, 2: 80.0, 3: 100.0, 4: 120.0, 5: 100.0, 6: 110.0, 7: 120.0}
    assert rate_at(measured, 8, step=7) == pytest.approx(120.0)
    assert rate_at(measured, 15, step=7) == pytest.approx(100.0)
    assert rate_at(measured, 14, step=7) == pytest.approx(120.0)
    assert rate_at(measured, 9, step=7) == pytest.approx(9 / (5 / 100.0 + 4 / 120.0))
    # So 15 conversations go as two rounds (8 and 7), not one of 15.
    assert width_from_rates(measured, 15, 15, step=7)[0] == 8


def test_width_from_rates_finishes_the_conversations_soonest() -> None:
    # Three conversations: not one round of 3 (40.5 tok/s), but two together and one alone.
    assert width_from_rates(AVX2_LIKE, 3, 3)[0] == 2
    # Four or more pay: 15 conversations in two rounds of 8 and 7.
    assert width_from_rates(AVX2_LIKE, 15, 15)[0] == 8
    assert width_from_rates(AVX2_LIKE, 15, 4)[0] == 4  # memory allows only four
    assert width_from_rates({1: 40.0, 2: 40.0}, 2, 2)[0] == 1  # a tie goes to the narrower width
    width, rate = width_from_rates(AVX2_LIKE, 8, 8)
    assert (width, rate) == (8, pytest.approx(91.5))


class LocalFake(FakeBackend):
    """The fake backend dressed as a loaded GGUF: a model file, an engine and a GPU plan."""

    def __init__(self, model_path: Path, threads: int = 2) -> None:
        super().__init__()
        self.model_path = model_path
        self.gpu_plan = None
        self.engine_info = {"llama_cpp_python": "0.0", "cpu_features": "AVX2", "n_threads": threads}
        self.batch_sizes: list[int] = []

    def chat_batch(self, conversations, settings, on_token=None, on_done=None):  # type: ignore[no-untyped-def]
        self.batch_sizes.append(len(conversations))
        return super().chat_batch(conversations, settings, on_token, on_done)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    return path


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """measure_rate answers AVX2_LIKE (interpolated); the widths it was asked about are listed."""
    asked: list[int] = []

    def fake_measure(backend: Any, width: int, tokens: int = 8) -> float:
        asked.append(width)
        backend.chat_batch([width_probe.PROBE_PROMPT] * width, [width_probe.GenerationSettings()] * width)
        return rate_at(AVX2_LIKE, width)

    monkeypatch.setattr(width_probe, "measure_rate", fake_measure)
    monkeypatch.setattr(width_probe, "cpu_wait_us", lambda: 0)  # an idle CPU, whatever else runs
    return asked


def test_probe_measures_once_per_model_and_machine(model: Path, scripted: list[int]) -> None:
    backend = LocalFake(model)
    probe = width_probe.probe_rates(backend, 8)
    assert probe.measured == [1, 2, 3, 4, 5, 6, 7, 8] and probe.kept
    assert scripted == [1, 2, 3, 4, 5, 6, 7, 8, 8, 7, 6, 5, 4, 3, 2, 1]  # up, then down
    assert backend.batch_sizes[0] == 8  # one call at the widest width first: the decoder sized once
    cache = json.loads(width_probe.cache_path().read_text())
    (entry,) = cache.values()
    assert entry["identity"]["file"] == "tiny.gguf" and entry["identity"]["engine"]["n_threads"] == 2
    assert entry["rates"]["4"] == 70.7
    # The same model and machine: nothing measured again; wider widths are measured when allowed.
    again = width_probe.probe_rates(LocalFake(model), 8)
    assert again.rates == probe.rates and again.measured == [] and again.describe() == "measured before"
    assert width_probe.probe_rates(LocalFake(model), 12).measured == [10, 12]
    assert width_probe.probe_rates(LocalFake(model), 13).measured == [13]  # the widest allowed too
    # Another thread count is another machine.
    assert width_probe.probe_rates(LocalFake(model, threads=1), 2).measured == [1, 2]
    assert len(json.loads(width_probe.cache_path().read_text())) == 2


def test_width_for_uses_the_measured_rates_and_says_so(model: Path, scripted: list[int]) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    spec = ModelSpec(kind="path", path=str(model), name="tiny")

    def event(level: str, message: str, **fields: Any) -> None:
        events.append((message, fields))

    width = width_for(spec, LocalFake(model), GenerationSettingsConfig(), 15, event, lambda: False)
    assert width == 8
    ((message, fields),) = events
    assert fields == {"batch_width": 8}
    assert (
        "15 conversations in 2 round(s) of 8" in message
        and "4: 70.7" in message
        and "memory allows 15" in message
    )
    # An explicit parallel_runs is the width: nothing measured.
    scripted.clear()
    assert (
        width_for(spec, LocalFake(model), GenerationSettingsConfig(parallel_runs=3), 15, event, lambda: False)
        == 3
    )
    assert scripted == []
    # Turned off: what memory allows.
    assert (
        width_for(spec, LocalFake(model), GenerationSettingsConfig(), 15, event, lambda: False, measure=False)
        == 15
    )


def test_a_measured_width_of_one_is_said_too(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(width_probe, "measure_rate", lambda backend, width, tokens=8: 100.0 / width)
    monkeypatch.setattr(width_probe, "cpu_wait_us", lambda: 0)
    events: list[str] = []
    spec = ModelSpec(kind="path", path=str(model), name="tiny")
    gen = GenerationSettingsConfig()
    assert (
        width_for(spec, LocalFake(model), gen, 6, lambda level, m, **f: events.append(m), lambda: False) == 1
    )
    assert len(events) == 1 and events[0].startswith("tiny: batch width 1: 6 conversations in 6 round(s)")


def test_probe_turned_off_by_the_environment(
    model: Path, scripted: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(width_probe.PROBE_ENV, "0")
    spec = ModelSpec(kind="path", path=str(model), name="tiny")
    assert (
        width_for(spec, LocalFake(model), GenerationSettingsConfig(), 6, lambda *a, **k: None, lambda: False)
        == 6
    )
    assert scripted == []


def test_a_probe_on_a_busy_cpu_is_used_but_not_kept(
    model: Path, scripted: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    waited = iter([0, 10**9])  # a thousand seconds of waiting during the probe
    monkeypatch.setattr(width_probe, "cpu_wait_us", lambda: next(waited))
    probe = width_probe.probe_rates(LocalFake(model), 4)
    assert probe.rates[4] == 70.7 and not probe.kept and "busy CPU" in probe.describe()
    assert not width_probe.cache_path().exists()


def test_a_stop_during_the_probe_propagates(model: Path, scripted: list[int]) -> None:
    with pytest.raises(StopRequested):
        width_probe.probe_rates(LocalFake(model), 4, should_stop=lambda: True)
    assert not width_probe.cache_path().exists()


@pytest.mark.slow
def test_probe_on_the_real_model(bundled_model: Path) -> None:
    from storybench_core.backends.llama import create_llama_backend

    backend = create_llama_backend(
        ModelSpec(kind="bundled", options={"n_threads": 1}),
        GenerationSettingsConfig(n_ctx=512, max_tokens=16),
    )
    try:
        probe = width_probe.probe_rates(backend, 3)
        assert probe.measured == [1, 2, 3] and all(r > 0 for r in probe.rates.values())
        assert backend.context_size() == 512
        assert not probe.kept or width_probe.cached_rates(backend) == probe.rates
    finally:
        backend.close()
