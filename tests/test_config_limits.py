"""Configs from someone else: files that are not text, alias bombs, sizes, caps, the test double, model paths."""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

import pytest

from storybench_core import config as config_module
from storybench_core.backends.registry import create_backend
from storybench_core.cli import main
from storybench_core.config import (
    FAKE_BACKEND_ENV,
    MAX_CONFIG_BYTES,
    GenerationSettingsConfig,
    ModelSpec,
    load_config,
    parse_config,
    parse_config_bytes,
)
from storybench_core.errors import ConfigError
from storybench_core.views.configure import parse_uploaded_config


def base(**over: object) -> dict[str, object]:
    return {"models": [{"kind": "bundled"}], "sequences": ["film"], **over}


def _alias_bomb() -> str:
    """Issue 15's YAML "billion laughs": 9 levels of 9 aliases, 9^9 strings once expanded."""
    lines = ["name: lol", "models:", "  - kind: bundled", "    options:"]
    lines.append('      a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]')
    previous = "a"
    for name in "bcdefghi":
        lines.append(f"      {name}: &{name} [" + ", ".join(f"*{previous}" for _ in range(9)) + "]")
        previous = name
    lines.append("sequences: [film]")
    return "\n".join(lines) + "\n"


# --- files that are not a config ------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ("{}".encode("utf-16"), "UTF-16"),  # with a byte-order mark
        ('{"models": []}'.encode("utf-16-le"), "UTF-16"),  # without one
        (b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)), "binary"),
        (b'{"name": "caf\xe9"}', "not UTF-8 text"),  # Latin-1
    ],
)
def test_a_file_that_is_not_utf8_text_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, said: str
) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(content)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and said in err and str(path) in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(ConfigError, match=said):
        parse_uploaded_config(content, "upload.json")  # the dashboard says the same


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(base()).encode())
    assert load_config(path).sequences == ("film",)


def test_a_config_larger_than_the_cap_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_bytes(b" " * MAX_CONFIG_BYTES + json.dumps(base()).encode())
    with pytest.raises(ConfigError, match=f"larger than {MAX_CONFIG_BYTES:,} bytes"):
        load_config(path)
    with pytest.raises(ConfigError, match="larger than"):
        parse_uploaded_config(path.read_bytes(), "big.json")


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"name": ' + b"9" * 5000 + b"}", "not a valid config"),
    ],
)
def test_pathological_json_is_a_config_error(content: bytes, said: str) -> None:
    with pytest.raises(ConfigError, match=said):
        parse_config_bytes(content, "odd.json")


# --- YAML anchors and aliases -------------------------------------------------------------


def test_the_alias_bomb_is_refused_without_expanding_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bomb = _alias_bomb()
    assert len(bomb.encode()) < 600
    path = tmp_path / "lol.yaml"
    path.write_text(bomb)
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match=r"anchors and aliases .* not allowed .*line 5"):
            load_config(path)
        with pytest.raises(ConfigError, match="anchors and aliases"):
            parse_uploaded_config(bomb.encode(), "lol.yaml")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000, f"peak {peak:,} bytes"
    assert main(["run", str(path)]) == 2
    assert "anchors and aliases" in capsys.readouterr().err


def test_yaml_without_aliases_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("models:\n  - kind: bundled\n    options: {n_threads: 2}\nsequences: [film]\n")
    assert load_config(path).models[0].options == {"n_threads": 2}
    merge = "base: &b {kind: bundled}\nmodels: [{<<: *b}]\nsequences: [film]\n"
    with pytest.raises(ConfigError, match="anchors and aliases"):
        parse_config_bytes(merge.encode(), "merge.yaml")


# --- options, models and tasks ------------------------------------------------------------


def test_options_are_typed_per_backend() -> None:
    assert ModelSpec(kind="hf", repo_id="o/r", filename="m.gguf", options={"n_threads": 4}).options
    with pytest.raises(ConfigError, match=r"options\.x is not an option of kind 'bundled'.*n_threads"):
        parse_config(base(models=[{"kind": "bundled", "options": {"x": [1] * 5}}]))
    with pytest.raises(ConfigError, match=r"options\.n_threads = '4' is invalid"):
        parse_config(base(models=[{"kind": "bundled", "options": {"n_threads": "4"}}]))
    api = {"kind": "api", "base_url": "https://api.example.com/v1", "api_model": "m"}
    parse_config(base(models=[api | {"options": {"max_retries": 3, "extra_body": {"route": "fallback"}}}]))
    with pytest.raises(ConfigError, match=r"options\.max_retries = 1000 is invalid"):
        parse_config(base(models=[api | {"options": {"max_retries": 1000}}]))
    with pytest.raises(ConfigError, match=r"options\.delay_s = 3600 is invalid"):
        parse_config(base(models=[{"kind": "fake", "options": {"delay_s": 3600}}]))


def test_options_have_a_size_and_depth_limit() -> None:
    with pytest.raises(ConfigError, match=r"options take [\d,]+ bytes; at most 16,384"):
        parse_config(base(models=[{"kind": "fake", "options": {"reply": "x" * 20_000}}]))
    deep: dict[str, object] = {}
    for _ in range(20):
        deep = {"k": deep}
    api = {"kind": "api", "base_url": "https://api.example.com/v1", "api_model": "m"}
    with pytest.raises(ConfigError, match="nested more than 8 levels"):
        parse_config(base(models=[api | {"options": {"extra_body": deep}}]))


def test_models_per_evaluation_are_capped_and_the_limit_named(monkeypatch: pytest.MonkeyPatch) -> None:
    many = [{"kind": "fake", "name": f"m{i}"} for i in range(5000)]
    with pytest.raises(
        ConfigError, match=r"5000 models; an evaluation may have at most 16 .*STORYBENCH_MAX_MODELS"
    ):
        parse_config(base(models=many))
    monkeypatch.setenv("STORYBENCH_MAX_MODELS", "40")
    assert len(parse_config(base(models=many[:40])).models) == 40


def test_tasks_per_evaluation_are_capped_and_the_limit_named(monkeypatch: pytest.MonkeyPatch) -> None:
    models = [{"kind": "fake", "name": f"m{i}"} for i in range(16)]
    sequences = ["film", "literary", "commercial", "thriller", "cross_genre"]
    data = base(models=models, sequences=sequences, generation={"runs": 100})
    with pytest.raises(
        ConfigError, match=r"asks for 24,000 responses .* at most 10,000 .*STORYBENCH_MAX_TASKS"
    ):
        parse_config(data)
    monkeypatch.setenv("STORYBENCH_MAX_TASKS", "30000")
    assert parse_config(data).generation.runs == 100


def test_model_names_are_checked_in_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each model's name (given or derived) is computed once: no pairwise comparison of models."""
    monkeypatch.setenv("STORYBENCH_MAX_MODELS", "100000")
    monkeypatch.setenv("STORYBENCH_MAX_TASKS", "100000000")
    computed = []
    derive = ModelSpec.display_name.fget
    monkeypatch.setattr(ModelSpec, "display_name", property(lambda spec: computed.append(1) or derive(spec)))
    n = 3000
    named = [{"kind": "fake", "name": f"m{i}"} for i in range(n // 2)]
    derived = [{"kind": "hf", "repo_id": f"owner/repo{i}", "filename": "model.gguf"} for i in range(n // 2)]
    assert len(parse_config(base(models=named + derived)).models) == n
    assert len(computed) == n

    computed.clear()
    twice = named + derived + named  # every given name repeated
    with pytest.raises(ConfigError, match=r"repeated: m0, m1, m10, .* and 1490 more\)") as caught:
        parse_config(base(models=twice))
    assert len(computed) == len(twice)
    assert len(str(caught.value)) < 500  # the message names ten, not every repeated model


def test_judges_are_capped() -> None:
    judge = {
        "model": {"kind": "fake", "name": "j0"},
        "extra_models": [{"kind": "fake", "name": f"j{i}"} for i in range(1, 9)],
    }
    with pytest.raises(ConfigError, match="judge.extra_models"):
        parse_config(base(judge=judge))


# --- the test double ------------------------------------------------------------------------


def test_the_fake_backend_is_refused_outside_the_tests(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    forged = base(models=[{"kind": "fake", "name": "gpt-5", "options": {"reply": "forged"}}])
    spec = ModelSpec(kind="fake", name="gpt-5")  # built while the tests allow it
    monkeypatch.delenv(FAKE_BACKEND_ENV)
    with pytest.raises(ConfigError, match="kind 'fake' is Storybench's test double"):
        parse_config(forged)
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(forged))
    assert main(["run", str(path)]) == 2
    # A stored config never passes the form: the worker's backend factory refuses it too.
    with pytest.raises(ConfigError, match="test double and is off"):
        create_backend(spec, GenerationSettingsConfig())


def test_a_fake_delay_honours_stop() -> None:
    from storybench_core.backends.base import GenerationSettings
    from storybench_core.backends.fake import FakeBackend
    from storybench_core.errors import StopRequested

    calls: list[str] = []

    def on_token(piece: str) -> None:
        calls.append(piece)
        if len(calls) > 3:
            raise StopRequested()

    backend = FakeBackend(delay_s=5.0, words=3)
    with pytest.raises(StopRequested):
        backend.chat([{"role": "user", "content": "go"}], GenerationSettings(max_tokens=10), on_token)
    assert calls[0] and "" in calls  # heartbeats between the words: the caller's chance to stop


# --- path models ----------------------------------------------------------------------------


def test_path_models_are_confined_to_the_model_folders(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, storybench_home: Path
) -> None:
    from storybench_core.backends.llama import resolve_model_path

    monkeypatch.delenv("STORYBENCH_MODEL_DIRS")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    secret = outside / "id_rsa"
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    messages = []
    for target in (secret, outside / "missing.gguf", Path("/etc/shadow"), Path("/nonexistent/x.gguf")):
        with pytest.raises(ConfigError) as err:
            parse_config(base(models=[{"kind": "path", "path": str(target)}]))
        messages.append(str(err.value).replace(str(target), "TARGET"))
        with pytest.raises(ConfigError):  # the loader checks again (stored configs)
            resolve_model_path(ModelSpec(kind="path", path=str(target)))
    # Whether the file exists, and what it holds, changes nothing in what a visitor reads.
    assert len(set(messages)) == 1 and "outside the model folders" in messages[0]
    assert "BEGIN" not in messages[0] and "STORYBENCH_MODEL_DIRS" in messages[0]

    inside = storybench_home / "models" / "mine.gguf"
    assert parse_config(base(models=[{"kind": "path", "path": str(inside)}]))
    link = storybench_home / "models" / "sneaky.gguf"
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(secret, link)  # a link out of the folder is outside too
    with pytest.raises(ConfigError, match="outside the model folders"):
        parse_config(base(models=[{"kind": "path", "path": str(link)}]))
    monkeypatch.setenv("STORYBENCH_MODEL_DIRS", f"/srv/none{os.pathsep}{outside}")
    assert resolve_model_path(ModelSpec(kind="path", path=str(secret))) == secret


def test_the_operator_can_list_model_folders_in_secrets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("STORYBENCH_MODEL_DIRS")
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "secrets.toml").write_text('[storybench]\nmodel_dirs = ["/srv/models"]\n')
    assert parse_config(base(models=[{"kind": "path", "path": "/srv/models/a.gguf"}]))
    with pytest.raises(ConfigError, match="outside"):
        parse_config(base(models=[{"kind": "path", "path": "/srv/other/a.gguf"}]))


@pytest.mark.parametrize(
    "fields",
    [
        {"filename": "../../../../etc/x.gguf"},
        {"filename": "m.gguf", "subdirectory": "../.."},
        {"filename": "/abs/m.gguf"},
    ],
)
def test_hub_files_cannot_leave_the_hub_folder(fields: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="inside the repository"):
        parse_config(base(models=[{"kind": "hf", "repo_id": "o/r", **fields}]))


def test_limits_are_module_constants_an_operator_can_read() -> None:
    assert config_module.max_models() == config_module.DEFAULT_MAX_MODELS
    assert config_module.max_tasks() == config_module.DEFAULT_MAX_TASKS
