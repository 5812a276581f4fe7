"""Config validation: every error names the field, the bad value and the allowed range."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from storybench_core.config import (
    ModelSpec,
    config_hash,
    load_config,
    parse_config,
    save_config,
)
from storybench_core.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def base(**over):
    data = {"models": [{"kind": "bundled"}], "sequences": ["film"]}
    data.update(over)
    return data


def test_examples_load():
    for path in sorted((ROOT / "examples").glob("*.json")):
        config = load_config(path)
        assert config.models and config.sequences


def test_out_of_range_temperature_names_field_value_and_range():
    with pytest.raises(ConfigError) as exc:
        parse_config(base(generation={"temperature": 3.5}), source="cfg.json")
    msg = str(exc.value)
    assert "generation.temperature" in msg
    assert "3.5" in msg
    assert "le 2.0" in msg
    assert "cfg.json" in msg


def test_several_errors_reported_together():
    with pytest.raises(ConfigError) as exc:
        parse_config(base(generation={"runs": 0, "top_p": 1.5}))
    assert "generation.runs" in str(exc.value) and "generation.top_p" in str(exc.value)


def test_unknown_field_and_unknown_sequence():
    with pytest.raises(ConfigError, match="unknown field"):
        parse_config(base(generation={"temprature": 0.5}))
    with pytest.raises(ConfigError, match="unknown sequence.*nosuch.*available: .*film"):
        parse_config(base(sequences=["nosuch"]))


def test_hf_model_needs_repo_and_gguf_filename():
    with pytest.raises(ConfigError, match="needs repo_id, filename"):
        parse_config(base(models=[{"kind": "hf"}]))
    with pytest.raises(ConfigError, match="must be a .gguf"):
        parse_config(base(models=[{"kind": "hf", "repo_id": "a/b", "filename": "x.bin"}]))


def test_api_key_env_must_be_a_variable_name_not_a_key():
    model = {"kind": "api", "base_url": "http://x/v1", "api_model": "m", "api_key_env": "sk-abc-123"}
    with pytest.raises(ConfigError, match="NAME of an environment variable") as exc:
        parse_config(base(models=[model]))
    assert "sk-abc-123" not in str(exc.value)
    assert ModelSpec.model_validate(model | {"api_key_env": "MY_KEY"}).api_key_env == "MY_KEY"


def test_max_tokens_must_leave_room_for_prompt():
    with pytest.raises(ConfigError, match="smaller than n_ctx"):
        parse_config(base(generation={"max_tokens": 4096, "n_ctx": 4096}))


def test_duplicate_model_names_rejected():
    with pytest.raises(ConfigError, match="unique"):
        parse_config(base(models=[{"kind": "bundled"}, {"kind": "bundled"}]))


def test_builtin_picks_a_built_in_model_and_the_default_has_one_spelling():
    config = parse_config(
        base(models=[{"kind": "bundled"}, {"kind": "bundled", "builtin": "smollm2-135m-instruct"}])
    )
    assert [m.display_name for m in config.models] == [
        "gemma-3-270m-q4_k_m (bundled)",
        "smollm2-135m-instruct-q4_1 (bundled)",
    ]
    assert config.models[1].ref()["builtin"] == "smollm2-135m-instruct"
    assert "builtin" not in config.models[0].ref()
    explicit = ModelSpec(kind="bundled", builtin="gemma-3-270m")
    assert explicit == ModelSpec(kind="bundled") and explicit.builtin is None  # same ref, same hash
    with pytest.raises(
        ConfigError, match=r"models.0: .*builtin 'gemma' is not known \(use one of gemma-3-270m, "
    ):
        parse_config(base(models=[{"kind": "bundled", "builtin": "gemma"}]))
    with pytest.raises(ConfigError, match="builtin is only for a model of kind 'bundled'"):
        parse_config(base(models=[{"kind": "path", "path": "/m.gguf", "builtin": "smollm2-135m-instruct"}]))


def test_auto_evaluate_needs_judge():
    with pytest.raises(ConfigError, match="judge.model"):
        parse_config(base(auto_evaluate=True))


def test_not_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{ nope")
    with pytest.raises(ConfigError, match="line 1"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.json")


def test_save_load_round_trip_and_hash(tmp_path):
    config = parse_config(base(generation={"temperature": 0.3, "runs": 2}))
    path = save_config(config, tmp_path / "c.json")
    again = load_config(path)
    assert again == config
    assert config_hash(again) == config_hash(config)
    assert json.loads(path.read_text())["generation"]["runs"] == 2


def test_hash_covers_settings_prompts_and_rubric_but_not_name(monkeypatch, tmp_path):
    config = parse_config(base())
    h = config_hash(config)
    assert config_hash(parse_config(base(name="renamed"))) == h
    assert config_hash(parse_config(base(generation={"seed": 7}))) != h
    # Override the film prompts: same config, different text → different hash.
    from storybench_core import catalog

    seq = catalog.get_sequence("film").model_dump()
    seq["prompts"][0]["text"] = "A different first brief about a lighthouse keeper."
    folder = Path(monkeypatch_home()) / "catalog" / "sequences"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "film.json").write_text(json.dumps(seq))
    assert config_hash(config) != h


def monkeypatch_home() -> str:
    import os

    return os.environ["STORYBENCH_HOME"]


def test_overrides_revalidate():
    config = parse_config(base())
    assert config.with_overrides(runs=5, max_tokens=None).generation.runs == 5
    with pytest.raises(ConfigError, match="generation.runs"):
        config.with_overrides(runs=0)
    assert config.with_sequences(["thriller"]).sequences == ("thriller",)
