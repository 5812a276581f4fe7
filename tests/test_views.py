"""The dashboard's view models (storybench_core.views), tested without streamlit."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from storybench_core import catalog, jobs, judge, pairwise, paths, ratings
from storybench_core import results as rs
from storybench_core.access import LOCAL_ADMIN
from storybench_core.backends.fake import FakeBackend
from storybench_core.config import ConfigError, JudgeConfig, ModelSpec, config_hash, load_config, parse_config
from storybench_core.errors import DownloadError
from storybench_core.hardware import GpuInfo, HardwareSnapshot
from storybench_core.hub import ModelRef
from storybench_core.store.sqlite import SQLiteStore
from storybench_core.views import compare, configure, hardware, models, results, run, scores

T0 = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path):
    s = SQLiteStore(tmp_path / "views.db")
    yield s
    s.close()


def fake_config(**generation):
    return parse_config(
        {
            "name": "views",
            "models": [
                # delay_s: stored generation times are rounded to 0.1 ms; keep them above zero.
                {"kind": "fake", "name": "short", "options": {"words": 10, "delay_s": 0.001}},
                {"kind": "fake", "name": "long", "options": {"words": 40}},
            ],
            "sequences": ["film"],
            "generation": {"runs": 1, "max_tokens": 64} | generation,
        }
    )


# --- run ----------------------------------------------------------------------------------


def evaluation(**fields):
    doc = {
        "id": "e1",
        "name": "night run",
        "status": "running",
        "config_hash": "abc",
        "total_tasks": 10,
        "completed_tasks": 3,
        "failed_tasks": 1,
        "started_at": T0,
        "finished_at": None,
        "progress": {
            "model_name": "short",
            "sequence": "film",
            "run": 2,
            "prompt_index": 1,
            "prompt_name": "scene",
            "tokens_per_s": 12.5,
            "partial_text": "Once",
        },
    }
    return doc | fields


def test_run_view_progress_elapsed_and_eta():
    view = run.run_view(evaluation(), now=T0 + timedelta(seconds=40))
    assert view.fraction == pytest.approx(0.4) and view.percent == 40
    assert view.progress_label == "4 / 10 tasks (40%, 1 failed)"
    assert view.elapsed_s == 40 and view.eta_s == pytest.approx(60)  # 10 s per task, 6 to go
    assert view.current_label == "short · film · run 2 · prompt 2 (scene)"
    assert view.tokens_per_s == 12.5 and view.partial_text == "Once" and view.is_live


def test_run_view_of_a_batch_shows_the_aggregate_and_each_runs_speed():
    progress = evaluation()["progress"] | {
        "tokens_per_s": 40.0,
        "aggregate_tokens_per_s": 41.5,
        "batch_width": 3,
        "batch_runs": [1, 2, 3],
        "run_tokens_per_s": {"1": 14.0, "2": 13.5, "3": 14.0},
    }
    view = run.run_view(evaluation(progress=progress), now=T0 + timedelta(seconds=40))
    assert view.tokens_per_s == 41.5 and view.speed_label == "Tokens/s (3 runs together)"
    assert view.current_label == "short · film · runs 1, 2, 3 together · prompt 2 (scene)"
    assert view.per_run_speed == "per run: run 1: 14.0 · run 2: 13.5 · run 3: 14.0 tok/s"
    single = run.run_view(evaluation(), now=T0 + timedelta(seconds=40))
    assert single.speed_label == "Tokens/s" and single.per_run_speed == "" and single.batch_width == 1


def test_run_view_of_finished_and_queued_evaluations():
    done = run.run_view(
        evaluation(
            status="completed", completed_tasks=10, failed_tasks=0, finished_at=T0 + timedelta(seconds=90)
        ),
        now=T0 + timedelta(hours=5),
    )
    assert done.elapsed_s == 90 and done.eta_s is None and done.fraction == 1.0 and not done.is_live
    queued = run.run_view({"id": "q", "status": "queued", "total_tasks": 3, "progress": {}})
    assert (
        queued.elapsed_s is None and queued.eta_s is None and queued.current_label == "" and queued.is_active
    )
    assert run.run_view({"id": "z", "status": "queued"}).fraction == 0.0  # no division by zero


def test_estimate_and_format_duration():
    assert run.estimate_remaining_s(None, 1, 4) is None
    assert run.estimate_remaining_s(30.0, 0, 4) is None
    assert run.estimate_remaining_s(30.0, 3, 4) == pytest.approx(10)
    assert [run.format_duration(s) for s in (None, 4.4, 65, 3725)] == ["—", "4 s", "1 min 05 s", "1 h 02 min"]


def test_status_states_and_actions():
    assert run.status_state("running") == "running" and run.status_state("failed") == "error"
    assert run.status_state("completed") == "complete"
    assert run.allowed_actions("running") == {"stop", "reset"}
    assert run.allowed_actions("stopped") == {"resume"} and run.allowed_actions("completed") == set()


def test_watched_evaluation_prefers_selection_then_running_then_oldest_queued():
    docs = [  # newest first
        {"id": "q2", "status": "queued"},
        {"id": "q1", "status": "queued"},
        {"id": "r", "status": "running"},
        {"id": "old", "status": "completed"},
    ]
    assert run.watched_evaluation(docs, "old")["id"] == "old"
    assert run.watched_evaluation(docs, "missing")["id"] == "r"
    assert run.watched_evaluation(docs[:2])["id"] == "q1"
    assert run.watched_evaluation(docs[3:])["id"] == "old"
    assert run.watched_evaluation([]) is None


def test_console_buffer_reads_incrementally(store):
    eid = jobs.enqueue(store, fake_config(), LOCAL_ADMIN)
    buffer = run.ConsoleBuffer(eid)
    assert len(buffer.refresh(store)) == 1 and "queued 'views'" in buffer.text
    store.append_event(eid, "warning", "something odd")
    lines = buffer.refresh(store)
    assert len(lines) == 2 and lines[-1].endswith("WARNING something odd")
    assert buffer.refresh(store) == lines and buffer.last_seq == 2
    assert buffer.height() == "content" and run.ConsoleBuffer("x", ["line"] * 40).height() == 14 * 22 + 16


def test_evaluations_frame_and_other_workers(store):
    eid = jobs.enqueue(store, fake_config(), LOCAL_ADMIN)
    jobs.Worker(store).run_once()
    frame = run.evaluations_frame(store.list_evaluations())
    row = frame.iloc[0].to_dict()
    assert row["id"] == eid and row["status"] == "completed" and row["tasks"] == "6/6"
    assert row["models"] == 2 and row["sequences"] == "film"
    docs = [
        {"id": "a", "status": "running", "worker_id": "me"},
        {"id": "b", "status": "running", "worker_id": "cli"},
    ]
    assert run.workers_seen(docs, "me") == ["cli"]


# --- results --------------------------------------------------------------------------------


@pytest.fixture
def response_docs(store):
    eid = jobs.enqueue(store, fake_config(), LOCAL_ADMIN)
    jobs.Worker(store).run_once()
    docs = store.list_responses(eid, include_messages=False)
    api = dict(docs[0], id="api1", model_name="api", model_ref={"kind": "api"}, error="429 after retries")
    return [*docs, api]


def test_responses_frame_and_filters(response_docs):
    frame = results.responses_frame(response_docs)
    assert len(frame) == 7
    assert set(frame["source"]) == {"fake", "API"}
    assert frame["prompt"].min() == 1  # 1-based for people
    long_rows = frame[frame["model"] == "long"]
    assert (long_rows["words"] > frame[frame["model"] == "short"]["words"].max()).all()
    options = results.filter_options(frame)
    assert options.models == ["api", "long", "short"] and options.prompts == [1, 2, 3] and options.runs == [1]
    only = results.apply_filters(frame, results.ResponseFilters(models=("long",), prompts=(2, 3)))
    assert list(only["model"]) == ["long", "long"] and list(only["prompt"]) == [2, 3]
    assert len(results.apply_filters(frame, results.ResponseFilters(evaluation_id="nope"))) == 0


def test_filters_round_trip_through_query_params(response_docs):
    filters = results.ResponseFilters(evaluation_id="e1", models=("a", "b"), prompts=(2,), runs=(1, 3))
    query = results.filters_to_query(filters)
    assert query == {"evaluation": ["e1"], "model": ["a", "b"], "prompt": ["2"], "run": ["1", "3"]}
    assert results.filters_from_query(query) == filters
    assert results.filters_from_query({"prompt": ["x", "2"]}).prompts == (2,)
    options = results.filter_options(results.responses_frame(response_docs))
    clean = results.sanitize_filters(filters, options)
    assert clean == results.ResponseFilters(prompts=(2,), runs=(1,))


def test_model_summary_and_chart_frame_leave_failures_out(response_docs):
    frame = results.responses_frame(response_docs)
    summary = results.model_summary(frame).set_index("model")
    assert summary.loc["api", "responses"] == 0 and summary.loc["api", "failed"] == 1
    assert summary.loc["short", "responses"] == 3 and summary.loc["short", "tokens_per_s"] > 0
    assert "api" not in set(results.chart_frame(frame)["model"])
    csv = results.csv_bytes(frame).decode()
    assert csv.splitlines()[0].startswith("id,evaluation_id,model") and "preview" not in csv.splitlines()[0]


def test_response_detail_has_prompt_answer_and_conversation(store):
    eid = jobs.enqueue(store, fake_config(), LOCAL_ADMIN)
    jobs.Worker(store).run_once()
    doc = store.list_responses(eid, model_name="short", prompt_index=1)[0]
    detail = results.response_detail(doc)
    assert detail.title == "short · film · run 1 · prompt 2 (scene)"
    assert detail.response_text == doc["response"] and detail.prompt_text == doc["prompt_text"]
    roles = [m["role"] for m in detail.conversation]
    assert roles == ["system", "user", "assistant", "user"]  # the earlier turn is in the context
    assert detail.facts["words"] == results.word_count(doc["response"])


def stored_with_an_api_failure(store):
    """The fake run of response_docs plus a failed API response, all in the store; returns the evaluation id."""
    eid = jobs.enqueue(store, fake_config(), LOCAL_ADMIN)
    jobs.Worker(store).run_once()
    first = store.list_responses(eid)[0]
    api = {k: v for k, v in first.items() if k != "id"}
    api |= {"task_key": f"{eid}|api", "model_name": "api", "model_ref": {"kind": "api"}, "error": "429"}
    store.upsert_response(api)
    return eid


def test_response_stats_are_the_documents_frame_without_texts(store):
    eid = stored_with_an_api_failure(store)
    stats = results.response_stats(store)
    assert list(stats.columns) == results.STAT_COLUMNS and "response" not in stats and "preview" not in stats
    docs = results.responses_frame(store.list_responses(eid, include_messages=False))
    key = ["model", "prompt"]
    pd.testing.assert_frame_equal(
        stats.sort_values(key).reset_index(drop=True),
        docs[results.STAT_COLUMNS].sort_values(key).reset_index(drop=True),
        check_dtype=False,
    )
    assert set(stats["source"]) == {"fake", "API"}
    assert results.response_stats(store, "nope").empty
    assert list(results.stats_frame([]).columns) == results.STAT_COLUMNS


def test_the_table_is_shown_a_page_at_a_time_with_only_those_texts(store, monkeypatch):
    eid = stored_with_an_api_failure(store)
    stats = results.response_stats(store, eid)
    assert results.page_count(0) == 1 and results.page_count(50) == 1 and results.page_count(51) == 2
    page = results.table_page(stats, 2, page_size=3)
    assert list(page["id"]) == list(stats["id"][3:6])
    assert list(results.table_page(stats, 99, page_size=3)["id"]) == list(stats["id"][6:])  # clamped
    assert results.page_caption(7, 2, page_size=3) == "Responses 4–6 of 7 (page 2 of 3)"
    assert results.page_caption(0, 1) == "No responses match the filters."
    read: list[str] = []
    original = type(store).get_response
    monkeypatch.setattr(
        type(store), "get_response", lambda self, rid: read.append(rid) or original(self, rid)
    )
    shown = results.with_previews(page, results.text_docs(store, page["id"]))
    assert read == list(page["id"])  # the rows on screen, nothing else
    texts = {d["id"]: d for d in store.list_responses(eid)}
    for rid, preview in zip(page["id"], shown["preview"], strict=True):
        full = " ".join((texts[rid]["error"] or texts[rid]["response"]).split())
        assert (
            preview and full.startswith(preview.removesuffix("…")) and len(preview) <= results.PREVIEW_CHARS
        )


def test_change_token_moves_when_an_evaluation_gains_responses_or_ends():
    running = evaluation()
    token = results.change_token([running])
    assert results.change_token([evaluation()]) == token
    assert results.change_token([evaluation(completed_tasks=4)]) != token
    assert results.change_token([evaluation(status="completed", finished_at=T0)]) != token


def test_metric_figures_draw_quartiles_not_points(store):
    eid = stored_with_an_api_failure(store)
    stats = results.response_stats(store, eid)
    many = pd.concat([stats] * 40, ignore_index=True)  # 280 rows, 240 successful
    figures = results.metric_figures(many)
    assert [column for column, _ in figures] == [c for c, _ in results.CHART_METRICS]
    for _, figure in figures:
        for trace in figure.data:
            assert trace.type == "box" and trace.y is None  # precomputed: no per-response values
            assert len(trace.x) == len(trace.q1) == len(trace.median) <= 2
    words = {t.name: dict(zip(t.x, t.median, strict=True)) for t in figures[0][1].data}
    assert words["fake"]["long"] > words["fake"]["short"] and "api" not in words.get("API", {})
    assert results.metric_figures(many[many["error"] != ""]) == []


def test_filtered_csv_reads_the_store_only_when_called(store):
    eid = stored_with_an_api_failure(store)
    data = results.filtered_csv(store, results.ResponseFilters(evaluation_id=eid, models=("long",)))
    header, *rows = data.decode().splitlines()
    assert header.startswith("id,evaluation_id,model") and "response" in header and len(rows) == 3
    assert results.filtered_csv(store, results.ResponseFilters(), hidden=[eid]).decode().count("\n") == 1


# --- hardware ---------------------------------------------------------------------------------


def test_hardware_view_without_and_with_gpu():
    gib = 1024**3
    cpu_only = HardwareSnapshot(
        cpu_count_logical=2,
        cpu_load_percent=37.4,
        ram_total_bytes=8 * gib,
        ram_available_bytes=6 * gib,
        disk_free_bytes=100 * gib,
        nvml_error="no NVIDIA GPU found",
    )
    view = hardware.hardware_view(cpu_only)
    assert view.no_gpu_message == "No GPU: models run on CPU." and view.gpus == []
    assert (
        view.cpu_cores == "2 logical" and view.cpu_load == "37%" and view.cpu_fraction == pytest.approx(0.374)
    )
    assert view.ram_label == "2.0 GiB / 8.0 GiB used" and view.ram_fraction == 0.25
    assert view.disk_free == "100.0 GiB"
    gpu = GpuInfo(0, "NVIDIA H100", 80 * gib, 60 * gib, 20 * gib, "550.54", 12.0)
    view = hardware.hardware_view(HardwareSnapshot(gpus=[gpu], cpu_count_logical=16, cpu_count_physical=8))
    assert view.no_gpu_message is None
    assert view.gpus[0].title == "GPU 0: NVIDIA H100" and view.gpus[0].vram_fraction == 0.25
    assert view.gpus[0].vram_label == "20.0 GiB / 80.0 GiB used" and view.gpus[0].driver == "550.54"
    assert view.cpu_cores == "8 physical / 16 logical" and view.cpu_load == "—" and view.ram_label == "—"
    assert hardware.format_bytes(None) == "—" and hardware.format_bytes(5 * 1024**2) == "5 MiB"


# --- configure --------------------------------------------------------------------------------


def test_default_form_round_trips_to_the_same_config():
    data = configure.default_config_dict()
    values, model_list, base = configure.form_values(data)
    assert model_list == [{"kind": "bundled"}] and values["judge_model"] == configure.JUDGE_NONE
    check = configure.check_form(values, model_list, base)
    assert check.ok and check.config_hash == config_hash(parse_config(data))


def test_form_keeps_fields_it_does_not_show():
    data = fake_config(parallel_runs=2).model_dump(mode="json")
    values, model_list, base = configure.form_values(data)
    values["temperature"] = 0.3
    check = configure.check_form(values, model_list, base)
    assert check.ok
    assert check.config.generation.parallel_runs == 2 and check.config.generation.temperature == 0.3
    assert check.config.models[1].options["words"] == 40


def test_field_errors_land_on_their_fields():
    values, model_list, base = configure.form_values(configure.default_config_dict())
    check = configure.check_form(values | {"temperature": 3.5, "runs": 0, "sequences": []}, model_list, base)
    assert not check.ok
    assert check.for_field("generation.temperature") == [
        "3.5 is invalid: Input should be less than or equal to 2 (allowed: le 2.0)"
    ]
    assert check.for_field("generation.runs")[0].startswith("0 is invalid")
    assert check.for_field("sequences")
    budget = configure.check_form(values | {"max_tokens": 600, "n_ctx": 512}, model_list, base)
    assert budget.for_field("generation") == [
        "max_tokens (600) must be smaller than n_ctx (512): the prompt needs room too"
    ]
    unknown = configure.check_form(values | {"sequences": ["nope"]}, model_list, base)
    assert "unknown sequence(s) nope" in unknown.for_field("sequences")[0]
    auto = configure.check_form(values | {"auto_evaluate": True}, model_list, base)
    assert auto.for_field("auto_evaluate") == ["auto_evaluate needs judge.model to be set"]
    assert configure.field_errors("something else entirely") == {
        configure.GENERAL: ["something else entirely"]
    }


def test_judge_choices_map_to_model_specs(monkeypatch):
    monkeypatch.setenv("STORYBENCH_MODEL_DIRS", "/models")  # the operator allows the judge's folder
    values, model_list, base = configure.form_values(configure.default_config_dict())
    api = configure.check_form(
        values | {"judge_model": configure.JUDGE_API, "judge_preset": "openrouter"}, model_list, base
    )
    assert api.for_field("judge.model") == ["a model of kind 'api' needs api_model"]
    values |= {
        "judge_model": configure.JUDGE_API,
        "judge_preset": "openrouter",
        "judge_api_model": "x/y",
        "judge_enabled": True,
    }
    check = configure.check_form(values, model_list, base)
    judge = check.config.judge.model
    assert (
        judge.kind == "api"
        and judge.base_url == "https://openrouter.ai/api/v1"
        and judge.api_key_env == "OPENROUTER_API_KEY"
    )
    again, _, base2 = configure.form_values(check.data)  # and back into the form
    assert again["judge_model"] == configure.JUDGE_API and again["judge_api_model"] == "x/y"
    listed = configure.judge_choices(model_list, base2)
    smollm2 = "bundled model (SmolLM2 135M Instruct)"
    assert listed[:4] == [configure.JUDGE_NONE, configure.JUDGE_BUNDLED, smollm2, configure.JUDGE_API]
    assert listed[4] == "listed: gemma-3-270m-q4_k_m (bundled)"
    same = configure.check_form(values | {"judge_model": listed[4]}, model_list, base)
    assert same.config.judge.model.kind == "bundled"
    # A built-in judge other than the default keeps its builtin id, and reads back as the same choice.
    other = configure.check_form(values | {"judge_model": smollm2}, model_list, base)
    assert other.config.judge.model == ModelSpec(kind="bundled", builtin="smollm2-135m-instruct")
    assert configure.form_values(other.data)[0]["judge_model"] == smollm2
    gemma = configure.check_form(values | {"judge_model": configure.JUDGE_BUNDLED}, model_list, base)
    assert gemma.data["judge"]["model"]["builtin"] is None  # the default needs no builtin id
    path_judge = {"kind": "path", "path": "/models/judge.gguf"}
    loaded_values, loaded_models, loaded_base = configure.form_values(
        check.data | {"judge": {"model": path_judge}}
    )
    assert loaded_values["judge_model"] == "as loaded: judge.gguf"
    assert (
        configure.check_form(loaded_values, loaded_models, loaded_base).config.judge.model.path
        == "/models/judge.gguf"
    )


def test_model_forms_validate_and_names_stay_unique(monkeypatch):
    hf = configure.model_from_form(
        "hf", {"repo_id": " owner/repo ", "filename": "m.gguf", "subdirectory": "", "name": ""}
    )
    assert hf == {"kind": "hf", "repo_id": "owner/repo", "filename": "m.gguf"}
    with pytest.raises(ConfigError, match="must be a .gguf file"):
        configure.model_from_form("hf", {"repo_id": "owner/repo", "filename": "m.bin"})
    with pytest.raises(ConfigError, match="needs repo_id"):
        configure.model_from_form("hf", {"filename": "m.gguf"})
    with pytest.raises(ConfigError, match="must point to a .gguf file"):
        configure.model_from_form("path", {"path": "/tmp/model.bin"})
    api = configure.model_from_form(
        "api", {"preset": "deepinfra", "api_model": "meta/llama", "api_key_env": ""}
    )
    assert (
        api["base_url"] == "https://api.deepinfra.com/v1/openai" and api["api_key_env"] == "DEEPINFRA_API_KEY"
    )
    with pytest.raises(ConfigError, match="NAME of an environment variable"):
        configure.model_from_form("api", {"preset": "openai", "api_model": "m", "api_key_env": "sk-abc123"})
    listed = configure.add_model([{"kind": "bundled"}], hf)
    with pytest.raises(ConfigError, match="already in the list"):
        configure.add_model(listed, {"kind": "bundled"})
    assert len(configure.add_model(listed, {"kind": "bundled", "name": "second"})) == 3
    # The Bundled tab's picker: each built-in model, default first; the default needs no builtin id.
    builtins = configure.builtin_choices()
    assert list(builtins) == ["gemma-3-270m", "smollm2-135m-instruct"]
    gemma = configure.model_from_form("bundled", {"builtin": "gemma-3-270m", "name": ""})
    assert gemma == {"kind": "bundled"}
    smol = configure.model_from_form("bundled", {"builtin": "smollm2-135m-instruct", "name": ""})
    assert smol == {"kind": "bundled", "builtin": "smollm2-135m-instruct"}
    two = configure.add_model([{"kind": "bundled"}], smol)  # two built-ins: two names, no clash
    assert list(configure.models_frame(two)["name"]) == [
        "gemma-3-270m-q4_k_m (bundled)",
        "smollm2-135m-instruct-q4_1 (bundled)",
    ]
    assert list(configure.models_frame(two)["source"]) == [
        "packaged with Storybench: Gemma 3 270M",
        "packaged with Storybench: SmolLM2 135M Instruct",
    ]
    with pytest.raises(ConfigError, match="builtin 'nope' is not known"):
        configure.model_from_form("bundled", {"builtin": "nope"})


def test_models_frame_masks_keys(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value-99")
    monkeypatch.delenv("DEEPINFRA_API_KEY", raising=False)
    gguf = tmp_path / "here.gguf"
    gguf.write_bytes(b"GGUF")
    frame = configure.models_frame(
        [
            {
                "kind": "api",
                "preset": "openai",
                "base_url": "https://api.openai.com/v1",
                "api_model": "m",
                "api_key_env": "OPENAI_API_KEY",
            },
            {
                "kind": "api",
                "name": "di",
                "base_url": "https://x/v1",
                "api_model": "n",
                "api_key_env": "DEEPINFRA_API_KEY",
            },
            {"kind": "path", "path": str(gguf)},
            {"kind": "path", "path": "/nowhere/x.gguf"},
        ]
    )
    # Only "set / not set", and only for a key bound to the endpoint: a preset's key is not
    # for another base_url, and nothing says whether an unbound variable is set.
    assert list(frame["api key"][:2]) == [
        "OPENAI_API_KEY: set",
        "DEEPINFRA_API_KEY: not allowed for this endpoint",
    ]
    assert "sk-secret-value-99" not in frame.to_string() and "…" not in frame.to_string()
    monkeypatch.setenv("HF_TOKEN", "hf_visitor_wants_to_know")
    assert configure.api_key_status("HF_TOKEN") == "HF_TOKEN: not bound to any endpoint"
    assert configure.api_key_status("OPENAI_API_KEY") == "OPENAI_API_KEY: set"
    assert list(frame["source"][2:]) == [str(gguf), "/nowhere/x.gguf (not found on this machine)"]
    assert configure.api_key_status(None) == "no key needed"


def test_named_configs_and_uploads(store):
    config = fake_config()
    path = configure.save_named_config(config, LOCAL_ADMIN, store, "My Run #2")
    assert path == paths.configs_dir() / "my-run-2.json" and load_config(path) == config
    assert configure.saved_config_names() == ["my-run-2"]
    assert configure.load_named_config("my-run-2") == config
    assert configure.safe_slug("###") is None
    with pytest.raises(ConfigError, match="config file not found"):
        configure.load_named_config("missing")
    text = configure.config_json(config)
    assert configure.parse_uploaded_config(text.encode(), "x.json") == config
    with pytest.raises(ConfigError, match="x.json: not valid JSON at line 1"):
        configure.parse_uploaded_config(b"{", "x.json")
    with pytest.raises(ConfigError, match="UTF-16.*not UTF-8"):
        configure.parse_uploaded_config(b"\xff\xfe", "x.json")
    yaml_text = "models: [{kind: bundled}]\nsequences: [film]\n"
    assert configure.parse_uploaded_config(yaml_text.encode(), "c.yaml").sequences == ("film",)
    with pytest.raises(ConfigError, match="generation.top_p"):
        configure.parse_uploaded_config(
            json.dumps({"models": [{}], "sequences": ["film"], "generation": {"top_p": 0}}).encode()
        )


def test_sequence_preview_lists_every_prompt():
    from storybench_core import catalog

    film = catalog.get_sequence("film")
    text = configure.sequence_preview_markdown(film)
    assert all(p.text in text for p in film.prompts) and text.count("\n1. ") + text.startswith("1. ") == 1


# --- models -----------------------------------------------------------------------------------


def test_model_ref_from_form():
    ref = models.model_ref_from_form(" owner/repo ", "sub/m.gguf", "", "")
    assert ref == ModelRef("owner/repo", "m.gguf", "sub", None)
    with pytest.raises(ConfigError, match="owner/name"):
        models.model_ref_from_form("justaname", "m.gguf")
    with pytest.raises(ConfigError, match=".gguf"):
        models.model_ref_from_form("o/r", "m.safetensors")


def test_cached_models_frame_describes_each_file(tmp_path):
    from fixtures_gguf import write_tiny_gguf

    from storybench_core.hub import cached_models

    target = paths.models_dir() / "hub" / "owner--repo" / "tiny.gguf"
    target.parent.mkdir(parents=True)
    write_tiny_gguf(target)
    (paths.models_dir() / "broken.gguf").write_bytes(b"not a gguf")
    frame = models.cached_models_frame(cached_models()).set_index("name")
    assert len(frame) == 2
    tiny = frame.loc[next(n for n in frame.index if "tiny" in n)]
    assert (
        tiny["source"] == "hub: owner/repo" and tiny["architecture"] == "llama" and tiny["context"] == "2,048"
    )
    assert models.format_count(7_000_000_000) == "7.0 B" and models.format_count(None) == "—"


def test_download_tracker_reports_progress_success_and_failure(tmp_path, store):
    release = threading.Event()
    out = tmp_path / "m.gguf"

    def resolve(ref: ModelRef, progress) -> Path:
        progress(50, 200)
        release.wait(10)
        if ref.filename == "bad.gguf":
            raise DownloadError("repository owner/repo has no file bad.gguf")
        if ref.filename == "bug.gguf":
            raise RuntimeError("boom")
        progress(200, 200)
        out.write_bytes(b"x" * 200)
        return out

    tracker = models.DownloadTracker(resolve)
    first = tracker.start(ModelRef("owner/repo", "good.gguf"), LOCAL_ADMIN, store)
    assert tracker.start(ModelRef("owner/repo", "good.gguf"), LOCAL_ADMIN, store) is not None
    assert _wait(lambda: tracker.snapshot()[0].done_bytes == 50)
    state = tracker.snapshot()[0]
    assert state.fraction == 0.25 and state.progress_label.endswith("/ 200 MiB") is False and tracker.busy
    tracker.start(ModelRef("owner/repo", "bad.gguf"), LOCAL_ADMIN, store)
    tracker.start(ModelRef("owner/repo", "bug.gguf"), LOCAL_ADMIN, store)
    release.set()
    tracker.wait()
    states = {s.label: s for s in tracker.snapshot()}
    assert first.label in states and len(states) == 3
    assert states["owner/repo/good.gguf"].status == "done" and states["owner/repo/good.gguf"].fraction == 1.0
    assert states["owner/repo/bad.gguf"].error == "repository owner/repo has no file bad.gguf"
    assert (
        "unexpected RuntimeError" in states["owner/repo/bug.gguf"].error
        and "boom" not in states["owner/repo/bug.gguf"].error
    )
    assert not tracker.busy
    tracker.clear_finished()
    assert tracker.snapshot() == []


def _wait(predicate, timeout=10.0):

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_evaluation_label_and_facts_line():
    label = run.evaluation_label({"id": "abc", "name": "night", "status": "running", "created_at": T0})
    assert label.startswith("night · ") and label.endswith(" · abc") and "running" not in label
    detail = results.ResponseDetail("t", "p", "r", "", [], {"words": 3, "seed": None, "chat template": ""})
    assert detail.facts_line == "words: 3"


def test_refresh_interval_is_fast_only_while_active():
    assert run.refresh_interval_s(True) == 1.0 and run.refresh_interval_s(False) == 5.0


# --- scores: leaderboard, ratings, trends, compare, judge now ---------------------------------


def _reply(score: int, note: str = "fine") -> str:
    rubric = catalog.load_rubric()
    return json.dumps({c: {"score": score, "justification": f"{note} {c}"} for c in rubric.criterion_ids})


@pytest.fixture
def judged_store(store):
    """short/long × three prompts; long scores 4, short 2, and long's prompt 1 has one failed judgement."""
    eid = jobs.enqueue(store, fake_config(), LOCAL_ADMIN)
    jobs.Worker(store).run_once()
    rubric, cfg = catalog.load_rubric(), JudgeConfig(max_retries=0)
    for response in store.list_responses(eid):
        score = 4 if response["model_name"] == "long" else 2
        backend = FakeBackend(reply=_reply(score, response["model_name"]))
        store.add_judgement(judge.judge_response(backend, "j1", response, rubric, cfg))
        if response["model_name"] == "long" and response["prompt_index"] == 0:
            failed = judge.judge_response(FakeBackend(reply="no"), "j1", response, rubric, cfg, attempt=2)
            store.add_judgement(failed)
    return store, eid


def test_format_ci():
    assert scores.format_ci(3.4321, 3.1, 3.71) == "3.43 [3.10–3.71]"
    assert scores.format_ci(1050.4, 990.2, 1101.9, digits=0) == "1050 [990–1102]"
    assert scores.format_ci(3.0, float("nan"), 3.2) == "3.00"
    assert scores.format_ci(float("nan"), 1.0, 2.0) == "–"


def test_leaderboard_table_puts_text_metrics_beside_scores(judged_store):
    store, eid = judged_store
    df = rs.responses_frame(store, eid)
    metrics = rs.text_metrics_frame(rs.responses_frame(store, eid, include_text=True))
    table = scores.leaderboard_table(rs.leaderboard(df), scores.text_summary(metrics))
    assert list(table["model"]) == ["long", "short"]
    assert list(table["overall"]) == [4.0, 2.0] and list(table["ci"]) == [
        "4.00 [4.00–4.00]",
        "2.00 [2.00–2.00]",
    ]
    assert list(table["n_failed_judgements"]) == [1, 0]
    assert list(table.columns[:6]) == ["rank", "model", "overall", "ci", "n_responses", "n_failed_judgements"]
    assert {"distinct_2", "distinct_3", "repeated_4gram_rate", "stock_phrase_count", "tokens_per_s"} <= set(
        table
    )
    labels = scores.leaderboard_labels(table)
    assert labels["score_creativity"] == "Creativity" and labels["ci"] == "95% CI"
    # Text metrics of some responses only (the page's filters).
    only = scores.text_summary(metrics, list(metrics["response_id"][metrics["model_name"] == "short"]))
    assert list(only["model_name"]) == ["short"]
    assert scores.leaderboard_table(rs.leaderboard(df.iloc[0:0])).empty


def test_score_figures_are_drawn_from_aggregates(judged_store):
    store, eid = judged_store
    df = rs.responses_frame(store, eid)
    figures = scores.score_figures(df)
    assert list(figures) == list(scores.SCORE_CHARTS)
    boxes = figures["score_distribution"].data
    assert {t.name for t in boxes} == {"long", "short"} and all(t.y is None for t in boxes)
    assert {t.name: t.median[0] for t in boxes} == {"long": 4.0, "short": 2.0}
    lines = figures["length_scatter"].data
    assert {t.name for t in lines} == {"long", "short"} and all(len(t.x) <= 12 for t in lines)
    assert sum(sum(t.customdata) for t in lines) == 6  # every scored response counted once, in a bin
    empty = scores.score_figures(df.iloc[0:0])
    assert empty["score_distribution"].layout.annotations[0].text.startswith("No scores yet")


def test_leaderboard_text_metrics_from_a_sample(judged_store):
    store, eid = judged_store
    df = rs.responses_frame(store, eid)
    sample = rs.text_sample(df)
    assert sample.complete and scores.text_sample_caption(sample) == ""
    metrics = rs.sample_text_metrics(store, eid, sample.conversations)
    full = rs.text_metrics_frame(rs.responses_frame(store, eid, include_text=True))
    pd.testing.assert_frame_equal(
        scores.text_summary(metrics), scores.text_summary(full), check_dtype=False, check_categorical=False
    )
    assert rs.text_sample(df, per_model=1) == sample  # whole conversations: one per model is all there is
    part = rs.TextSample(sample.conversations[:1], 3, 6)
    assert "over 3 of 6 responses" in scores.text_sample_caption(part)


def test_filter_scores_judges_and_turn_trend(judged_store):
    store, eid = judged_store
    df = rs.responses_frame(store, eid)
    assert scores.judges_of(df) == ["j1"] and scores.has_judgements(df) and scores.has_several_turns(df)
    first = scores.filter_scores(df, results.ResponseFilters(prompts=(1,), models=("long",)))
    assert set(first["prompt_index"]) == {0} and set(first["model_name"]) == {"long"} and len(first) == 2
    assert len(scores.for_judge(df, "nobody")) == 0 and scores.for_judge(df, None) is df
    assert scores.judge_filter(scores.ALL_JUDGES) is None and scores.judge_filter("j1") == "j1"
    trend = scores.trend_table(ratings.turn_trend(df))
    assert list(trend["model"]) == ["long", "short"] and list(trend["scores"].iloc[0]) == [4.0, 4.0, 4.0]
    gap = pd.DataFrame({"model_name": ["m"], "scores": [[3.0, float("nan")]], "first": [3.0], "last": [3.0],
                        "change": [0.0], "slope": [float("nan")], "n": [1]})  # fmt: skip
    assert scores.trend_table(gap)["scores"].iloc[0] == [3.0, None]


def test_compare_columns_carry_scores_justifications_and_failures(judged_store):
    store, eid = judged_store
    frame = rs.compare_frame(store, eid, "film", 0, 1, ["long", "short"])
    prompt, columns = compare.compare_columns(frame)
    assert prompt == store.list_responses(eid, prompt_index=0)[0]["prompt_text"]
    long, short = columns
    assert (long.model, short.model) == ("long", "short") and long.overall == 4.0 and short.overall == 2.0
    assert [c.title for c in long.judgements] == ["j1 · attempt 1 · overall 4.00", "j1 · attempt 2 · failed"]
    assert long.judgements[0].scores[0].why == "long creativity" and long.judgements[1].error
    assert long.score_line.startswith("Creativity **4**") and long.status == ""
    assert compare.compare_columns(frame, judge="other")[1][0].status == "not judged yet"
    assert compare.compare_columns(frame.iloc[0:0]) == ("", [])


def test_compare_choice_sanitizes_and_round_trips_through_the_url():
    options = results.FilterOptions(["e"], ["a", "b", "c", "d"], ["film", "thriller"], [1, 2, 3], [1, 2])
    default = compare.sanitize_compare(compare.CompareChoice(), options)
    assert default == compare.CompareChoice("film", 1, 1, ("a", "b", "c"))
    kept = compare.sanitize_compare(compare.CompareChoice("thriller", 3, 2, ("d", "gone")), options)
    assert kept == compare.CompareChoice("thriller", 3, 2, ("d",))
    stale = compare.sanitize_compare(compare.CompareChoice("nope", 9, 9, ("gone",)), options)
    assert stale == compare.CompareChoice("film", 1, 1, ())
    query = compare.compare_to_query(kept)
    assert query == {"cmp_sequence": ["thriller"], "cmp_prompt": ["3"], "cmp_run": ["2"], "cmp_model": ["d"]}
    assert compare.compare_from_query(query) == kept
    assert compare.compare_from_query({"cmp_prompt": ["x"]}).prompt is None
    assert compare.selections_to_query("j1", None) == {"judge": ["j1"]}


def test_rating_sections_agreement_and_position_bias():
    def fitted(models):
        return ratings.fit_ratings(
            [(models[0], models[1], 1.0)] * 3 + [(models[0], models[1], 0.0)], n_boot=20
        )

    bias = pd.DataFrame({"judge": ["j1"], "verdicts": [4], "failed": [0], "first_wins": [3], "second_wins": [1],
                         "ties": [0], "first_win_rate": [0.75], "pairs_both_orders": [2], "consistent_rate": [0.5]})  # fmt: skip
    report = pairwise.PairwiseReport(
        scope="e",
        ratings={"j2": fitted(("a", "b")), "human": fitted(("b", "a")), "j1": fitted(("a", "b"))},
        pooled=fitted(("a", "b")),
        position_bias=bias,
        human_agreement=pd.DataFrame(),
        outcomes=pd.DataFrame(),
    )
    sections = scores.rating_sections(report)
    assert [s.title for s in sections] == ["Judge j1", "Judge j2", "Team votes (human)", "All judges pooled"]
    table = sections[0].table
    assert list(table.columns) == ["rank", "model", "rating", "ci", "comparisons", "win_rate"]
    assert list(table["model"]) == ["a", "b"] and list(table["comparisons"]) == [4, 4]
    assert table["ci"].iloc[0].startswith(f"{table['rating'].iloc[0]:.0f} [")
    board = pd.DataFrame({"model_name": ["a", "b"], "overall": [4.0, 2.0]})
    agreement = ratings.rank_agreement(scores.agreement_reference(report), board)
    assert scores.rank_agreement_text(agreement) == "1.00"
    alone = pairwise.PairwiseReport(
        "e", {"human": fitted(("a", "b"))}, pd.DataFrame(), bias, pd.DataFrame(), pd.DataFrame()
    )
    assert list(scores.agreement_reference(alone)["model"]) == ["a", "b"]
    figure = scores.position_bias_figure(bias)
    assert list(figure.data[0].y) == [0.75] and figure.layout.yaxis.range == (0, 1)


def test_judge_options_and_warnings():
    plain = fake_config()
    options = scores.judge_options(plain)
    assert list(options) == [
        "Bundled model: gemma-3-270m-q4_k_m (bundled)",
        "Bundled model: smollm2-135m-instruct-q4_1 (bundled)",
        "Same as candidate: short",
        "Same as candidate: long",
    ]
    assert options["Same as candidate: long"] == plain.models[1]
    assert scores.judge_warnings(options["Same as candidate: short"], plain)[0].startswith(
        "the judge short is also"
    )
    configured = parse_config(plain.model_dump() | {"judge": {"model": {"kind": "fake", "name": "fj"}}})
    options = scores.judge_options(configured)
    assert next(iter(options)) == "Configured judge: fj" and options["Configured judge: fj"] is None
    assert scores.judge_warnings(None, configured) == []


def test_export_stem_and_export_files(judged_store):
    store, eid = judged_store
    assert (
        scores.export_stem({"name": "Night run #2!", "id": "abcdef123456"})
        == "storybench-night-run-2-abcdef12"
    )
    assert scores.export_stem({}) == "storybench"
    csv = scores.scores_csv(store, eid).decode()
    assert csv.count("\n") == 8 and "why_creativity" in csv.splitlines()[0]  # header + 7 judgements
    assert len(json.loads(scores.evaluation_json_bytes(store, eid))["responses"]) == 6
    assert scores.markdown_report_bytes(store, eid).startswith(b"# Storybench report: views")


# Judge now is a queued job: tests/test_job_kinds.py.
