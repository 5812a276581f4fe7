"""Every dashboard page under AppTest, against a real SQLite store filled by the fake backend."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from storybench_core import jobs, paths
from storybench_core.access import LOCAL_ADMIN
from storybench_core.config import config_hash, load_config, parse_config
from storybench_core.views import configure as configure_view

CONFIGURE, RUN, RESULTS = "app_pages/configure.py", "app_pages/run.py", "app_pages/results.py"
MODELS, HARDWARE = "app_pages/models.py", "app_pages/hardware.py"


def wait_for(predicate, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


# --- the app shell ------------------------------------------------------------------------


def test_sidebar_shows_store_and_worker_state(ui, store):
    at = ui.open_app()
    assert at.title[0].value == "Configure"  # the default page
    assert store.describe() in ui.texts(at.sidebar.code)
    sidebar = " ".join(ui.texts(at.sidebar.markdown))
    assert "STORYBENCH_DISABLE_WORKER" in sidebar


def test_every_page_renders_without_errors_on_an_empty_store(ui, store):
    at = ui.open_app()
    for page, title in ((RUN, "Run"), (RESULTS, "Results"), (MODELS, "Models"), (HARDWARE, "Hardware")):
        at.switch_page(page)
        ui.rerun(at)
        assert at.title[0].value == title
        assert not at.error, ui.texts(at.error)


# --- Configure ------------------------------------------------------------------------------


def test_configure_starts_valid_and_shows_the_config_hash(ui, store):
    at = ui.open_app(CONFIGURE)
    values, models, base = configure_view.form_values(configure_view.default_config_dict())
    expected = config_hash(parse_config(configure_view.config_dict(values, models, base)))
    assert any(expected in s for s in ui.texts(at.success))
    assert not at.error
    # Each sequence has a preview with its prompts.
    assert any("Near-future film" in e.label for e in at.expander)


def test_configure_shows_validation_errors_next_to_the_fields(ui, store):
    at = ui.open_app(CONFIGURE)
    at.number_input(key="configure.temperature").set_value(3.5)
    at.number_input(key="configure.max_tokens").set_value(300)
    ui.button(at, "Check").click()
    ui.rerun(at)
    errors = ui.texts(at.error)
    assert any("3.5 is invalid" in e and "le 2.0" in e for e in errors), errors
    assert any("problems" in e for e in errors)
    assert not at.success or not any("valid" in s for s in ui.texts(at.success))

    at.number_input(key="configure.temperature").set_value(0.7)
    at.number_input(key="configure.n_ctx").set_value(256)
    ui.button(at, "Check").click()
    ui.rerun(at)
    assert any("max_tokens (300) must be smaller than n_ctx (256)" in e for e in ui.texts(at.error))


def test_configure_queues_a_run_and_links_to_the_run_page(ui, store):
    at = ui.open_app(CONFIGURE)
    at.text_input(key="configure.name").set_value("ui queued")
    at.number_input(key="configure.runs").set_value(1)
    at.multiselect(key="configure.sequences").set_value(["film", "thriller"])
    ui.button(at, "Queue run").click()
    ui.rerun(at)
    [doc] = store.list_evaluations()
    assert doc["name"] == "ui queued" and doc["status"] == "queued"
    assert doc["total_tasks"] == 6 and doc["config"]["sequences"] == ["film", "thriller"]
    assert any(doc["id"] in s for s in ui.texts(at.success))
    assert [link.value for link in at.get("page_link")] == ["Watch it on Run"]


def test_configure_adds_models_and_masks_api_keys(ui, store, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-1234567890abcdef")
    at = ui.open_app(CONFIGURE)
    at.text_input(key="configure.add.api.api_model").set_value("gpt-4o-mini")
    ui.button(at, "Add API model").click()
    ui.rerun(at)
    captions = " ".join(ui.texts(at.caption))
    assert "OPENAI_API_KEY: set" in captions and "…ef" not in captions  # "set / not set", no characters
    assert "sk-test-1234567890abcdef" not in json.dumps([str(e) for e in at.main])

    at.text_input(key="configure.add.hf.repo_id").set_value("owner/repo")
    at.text_input(key="configure.add.hf.filename").set_value("model.bin")
    ui.button(at, "Add Hugging Face model").click()
    ui.rerun(at)
    assert any("must be a .gguf file" in e for e in ui.texts(at.error))

    at.text_input(key="configure.add.hf.filename").set_value("model-Q4_K_M.gguf")
    at.text_input(key="configure.add.hf.subdirectory").set_value("quants")
    ui.button(at, "Add Hugging Face model").click()
    ui.rerun(at)
    assert "owner/repo · quants/model-Q4_K_M.gguf" in " ".join(ui.texts(at.caption))
    assert [m["kind"] for m in at.session_state["configure.models"]] == ["bundled", "api", "hf"]

    # A second bundled model needs its own name.
    ui.button(at, "Add Bundled model").click()
    ui.rerun(at)
    assert any("already in the list" in e for e in ui.texts(at.error))


def test_configure_offers_both_built_in_models_as_candidates_and_judges(ui, store):
    at = ui.open_app(CONFIGURE)
    picker = at.selectbox(key="configure.add.bundled.builtin")
    assert len(picker.options) == 2 and "ChatML chat template" in picker.options[1]  # shown by what it is
    picker.set_value("smollm2-135m-instruct")
    ui.button(at, "Add Bundled model").click()
    ui.rerun(at)
    assert at.session_state["configure.models"] == [
        {"kind": "bundled"},
        {"kind": "bundled", "builtin": "smollm2-135m-instruct"},
    ]
    shown = " ".join(ui.texts(at.markdown)) + " ".join(ui.texts(at.caption))
    assert "smollm2-135m-instruct-q4_1 (bundled)" in shown
    assert "packaged with Storybench: SmolLM2 135M Instruct" in shown
    judges = at.selectbox(key="configure.judge_model").options
    assert {"bundled model (Gemma 3 270M)", "bundled model (SmolLM2 135M Instruct)"} <= set(judges)


def test_configure_saves_loads_and_rejects_bad_uploads(ui, store):
    at = ui.open_app(CONFIGURE)
    at.text_input(key="configure.name").set_value("Saved Setup")
    at.number_input(key="configure.seed").set_value(7)
    ui.button(at, "Check").click()
    ui.rerun(at)
    ui.button(at, "Save as 'saved-setup'").click()
    ui.rerun(at)
    saved = paths.configs_dir() / "saved-setup.json"
    assert saved.is_file() and load_config(saved).generation.seed == 7

    fresh = ui.open_app(CONFIGURE)
    assert fresh.number_input(key="configure.seed").value == 42
    fresh.selectbox(key="configure.saved").set_value("saved-setup")
    ui.button(fresh, "Load").click()
    ui.rerun(fresh)
    assert fresh.number_input(key="configure.seed").value == 7
    assert fresh.text_input(key="configure.name").value == "Saved Setup"

    fresh.file_uploader(key="configure.upload").upload("broken.json", b'{"models": [', "application/json")
    ui.rerun(fresh)
    assert any("broken.json: not valid JSON" in e for e in ui.texts(fresh.error))

    bad = {"models": [{"kind": "bundled"}], "sequences": ["film"], "generation": {"top_p": 0}}
    fresh.file_uploader(key="configure.upload").set_value(
        ("bad.json", json.dumps(bad).encode(), "application/json")
    )
    ui.rerun(fresh)
    assert any("generation.top_p" in e for e in ui.texts(fresh.error))

    # Not UTF-8 text, or a YAML alias bomb: one clear error, nothing loaded.
    for name, content, said in [
        ("utf16.json", json.dumps(bad).encode("utf-16"), "utf16.json: the file is UTF-16"),
        ("lol.yaml", b'a: &a ["lol"]\nb: [*a, *a]\n', "lol.yaml: YAML anchors and aliases"),
    ]:
        fresh.file_uploader(key="configure.upload").set_value((name, content, "application/octet-stream"))
        ui.rerun(fresh)
        assert any(said in e for e in ui.texts(fresh.error)), ui.texts(fresh.error)
        assert not fresh.exception


# --- Run ------------------------------------------------------------------------------------


def console_text(at) -> str:
    blocks = [c.value for c in at.main.code if "queued '" in c.value]
    assert blocks, "no console on the page"
    return blocks[0]


def test_run_page_shows_a_finished_evaluation(ui, store):
    eid = ui.run_evaluation(store, ui.fake_config("finished run", runs=2))
    at = ui.open_app(RUN)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Tasks done"] == "6 / 6"
    assert metrics["Remaining (est.)"] == "—"
    assert "finished run" in ui.texts(at.subheader)
    console = console_text(at)
    assert console.count("stored fake-short") == 6 and "completed: 6 responses stored" in console
    assert at.status[0].label.startswith("Console")
    history = at.dataframe[0].value
    assert list(history["id"]) == [eid] and list(history["status"]) == ["completed"]
    assert not [b for b in at.button if b.label in ("Stop", "Resume", "Reset") and not b.disabled]


def test_run_page_stops_and_resumes(ui, store):
    eid = jobs.enqueue(store, ui.fake_config("to stop"), LOCAL_ADMIN)
    at = ui.open_app(RUN)
    assert not ui.button(at, "Stop").disabled and ui.button(at, "Resume").disabled
    ui.button(at, "Stop").click()
    ui.rerun(at)
    assert store.get_evaluation(eid)["status"] == "stopped"
    assert any("Stop requested" in s for s in ui.texts(at.success))
    ui.button(at, "Resume").click()
    ui.rerun(at)
    assert store.get_evaluation(eid)["status"] == "queued"
    assert "requeued: resume requested" in console_text(at)


def test_run_page_resets_a_run_whose_worker_died(ui, store):
    eid = jobs.enqueue(store, ui.fake_config("orphan"), LOCAL_ADMIN)
    store.claim_next_evaluation("gone-host:1:abc")  # claimed by another host's worker
    at = ui.open_app(RUN)
    assert "Now writing" not in " ".join(ui.texts(at.caption))
    assert "Also working: worker gone-host:1:abc" in ui.texts(
        at.sidebar.caption
    )  # e.g. a `storybench worker`
    # While it heartbeats, Reset is refused (in the core) with what to do instead.
    ui.button(at, "Reset").click()
    ui.rerun(at)
    assert store.get_evaluation(eid)["status"] == "running"
    assert any("still being worked on" in t and "use Stop" in t for t in ui.texts(at.error))
    # Then the worker vanished: a minute without a heartbeat, by the store's clock.
    store.update_evaluation(eid, {"heartbeat_at": store.clock() - timedelta(seconds=120)})
    ui.button(at, "Reset").click()
    ui.rerun(at)
    assert store.get_evaluation(eid)["status"] == "stopped"
    assert "reset by local" in console_text(at)


def test_run_page_queues_a_saved_configuration(ui, store):
    configure_view.save_named_config(ui.fake_config("from disk"), LOCAL_ADMIN, store)
    at = ui.open_app(RUN)
    ui.button(at, "Queue run").click()
    ui.rerun(at)
    [doc] = store.list_evaluations()
    assert doc["name"] == "from disk" and doc["status"] == "queued"
    assert at.query_params["evaluation"] == doc["id"]
    assert "from disk" in ui.texts(at.subheader)


def test_two_sessions_and_a_refresh_mid_run_see_one_run_and_the_whole_console(ui, store):
    eid = jobs.enqueue(store, ui.fake_config("shared run", runs=2, delay_s=0.05), LOCAL_ADMIN)
    worker = jobs.Worker(store)
    thread = threading.Thread(target=worker.run_once, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: store.count_responses(eid) >= 2)
        first, second = ui.open_app(RUN), ui.open_app(RUN)
        for at in (first, second):
            assert at.subheader[0].value == "shared run"
            assert f"`{eid}`" in " ".join(ui.texts(at.markdown))
            assert at.status[0].proto.expanded  # open while running

        assert wait_for(lambda: store.count_responses(eid) >= 4)
        events_so_far = [e["message"] for e in store.list_events(eid)]
        refreshed = ui.open_app(RUN)  # a new session = a browser refresh
        console = console_text(refreshed)
        assert all(message in console for message in events_so_far)
        assert (
            console.index("queued 'shared run'")
            < console.index("worker ")
            < console.index("stored fake-short")
        )
        captions = " ".join(ui.texts(refreshed.caption))
        assert "Now writing: fake-short · film" in captions
    finally:
        thread.join(30)
    assert not thread.is_alive()

    ui.rerun(first)
    ui.rerun(second)
    for at in (first, second):
        assert {m.label: m.value for m in at.metric}["Tasks done"] == "6 / 6"
        assert "completed: 6 responses stored" in console_text(at)


# --- Results --------------------------------------------------------------------------------


@pytest.fixture
def filled(ui, store) -> dict[str, str]:
    first = ui.run_evaluation(store, ui.fake_config("two models", models=ui.TWO_MODELS, sequences=("film",)))
    ui.add_api_response(store, first)
    second = ui.run_evaluation(store, ui.fake_config("thriller only", sequences=("thriller",), runs=2))
    return {"first": first, "second": second}


def test_results_lists_local_and_api_responses_with_charts(ui, store, filled):
    at = ui.open_app(RESULTS)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {"Responses": "13", "Models": "3", "Failed": "0"}
    table = at.dataframe[0].value
    assert set(table["model"]) == {"fake-short", "fake-long", "api-model"}
    assert set(table["source"]) == {"fake", "API"}
    summary = at.dataframe[1].value  # Charts tab: the per-model summary
    assert dict(zip(summary["model"], summary["responses"], strict=True)) == {
        "api-model": 1,
        "fake-long": 3,
        "fake-short": 9,
    }
    assert len(at.get("plotly_chart")) == 3
    assert any("arrive with the judge" in i for i in ui.texts(at.info))


def test_results_filters_are_shared_through_the_url(ui, store, filled):
    at = ui.open_app(RESULTS)
    at.selectbox(key="results.evaluation").set_value(filled["first"])
    at.multiselect(key="results.models").set_value(["fake-long"])
    ui.rerun(at)
    assert set(at.dataframe[0].value["model"]) == {"fake-long"}
    assert at.query_params["evaluation"] == filled["first"]
    assert at.query_params["model"] == "fake-long"

    # Another session opening that link sees the same view.
    shared = ui.open_app(RESULTS, query={"evaluation": filled["first"], "model": ["fake-long"]})
    assert shared.selectbox(key="results.evaluation").value == filled["first"]
    assert shared.multiselect(key="results.models").value == ["fake-long"]
    assert {m.label: m.value for m in shared.metric}["Responses"] == "3"

    # A stale link (unknown evaluation) falls back to everything.
    stale = ui.open_app(RESULTS, query={"evaluation": "nope", "model": ["gone"]})
    assert {m.label: m.value for m in stale.metric}["Responses"] == "13"


def test_results_shows_a_full_response_with_prompt_and_conversation(ui, store, filled):
    at = ui.open_app(RESULTS)
    at.multiselect(key="results.models").set_value(["fake-long"])
    at.multiselect(key="results.prompts").set_value([2])
    ui.rerun(at)
    picker = at.selectbox(key="results.response")
    assert len(picker.options) == 1
    doc = next(d for d in store.list_responses() if d["model_name"] == "fake-long" and d["prompt_index"] == 1)
    picker.set_value(doc["id"])
    ui.rerun(at)
    shown = ui.texts(at.main.text)
    assert doc["response"] in shown and doc["prompt_text"] in shown
    assert any(e.label.startswith("Conversation the model saw (") for e in at.expander)
    assert len(at.main.chat_message) == len(doc["messages"])


def test_run_page_shows_why_an_evaluation_failed(ui, store):
    from storybench_core import catalog

    marker = catalog.get_sequence("film").prompts[2].text[:30]
    model = {"kind": "fake", "name": "flaky", "options": {"words": 8, "fail_on": marker}}
    eid = ui.run_evaluation(store, ui.fake_config("flaky run", models=(model,)))
    assert store.get_evaluation(eid)["status"] == "failed"
    at = ui.open_app(RUN)
    assert any("1 task(s) failed; see the console" in e for e in ui.texts(at.error))
    assert "scripted failure" in console_text(at)
    assert at.status[0].proto.state == at.status[0].proto.State.ERROR
    assert not ui.button(at, "Resume").disabled


# --- Models and Hardware ------------------------------------------------------------------------


def test_models_page_lists_the_cache_and_reports_download_problems(ui, store, monkeypatch):
    from fixtures_gguf import write_tiny_gguf

    target = paths.models_dir() / "hub" / "owner--tiny" / "tiny.gguf"
    target.parent.mkdir(parents=True)
    write_tiny_gguf(target)
    at = ui.open_app(MODELS)
    table = at.dataframe[0].value
    assert list(table["source"]) == ["hub: owner/tiny"] and list(table["architecture"]) == ["llama"]
    builtins = at.dataframe[1].value  # listed, not prepared in a fresh home, and how a config names each
    assert list(builtins["name"]) == ["gemma-3-270m-q4_k_m (bundled)", "smollm2-135m-instruct-q4_1 (bundled)"]
    assert list(builtins["status"]) == ["not prepared yet", "not prepared yet"]
    assert builtins["config"][1] == '{"kind": "bundled", "builtin": "smollm2-135m-instruct"}'
    assert ui.button(at, "Prepare built-in models") is not None

    at.text_input(key="models.repo_id").set_value("not-a-repo")
    at.text_input(key="models.filename").set_value("x.gguf")
    ui.button(at, "Download").click()
    ui.rerun(at)
    assert any("must look like 'owner/name'" in e for e in ui.texts(at.error))

    # A well-formed request to an unreachable hub fails in the background, and the page says so.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    at.text_input(key="models.repo_id").set_value("owner/other")
    ui.button(at, "Download").click()
    ui.rerun(at)
    assert wait_for(lambda: ui.rerun(at) and any("owner/other/x.gguf" in e for e in ui.texts(at.error)))
    assert any("owner/other/x.gguf: failed" in p.proto.text for p in at.get("progress"))

    at.selectbox(key="models.delete_target").set_value(str(target))
    ui.button(at, "Delete file").click()
    ui.rerun(at)
    assert not target.exists() and any("Deleted" in s for s in ui.texts(at.success))


def test_hardware_page_shows_cpu_ram_and_disk_and_says_when_there_is_no_gpu(ui, store):
    from storybench_core.hardware import hardware_snapshot

    at = ui.open_app(HARDWARE)
    metrics = {m.label: m.value for m in at.metric}
    assert {"CPU cores", "CPU load", "Disk free (model cache)"} <= set(metrics)
    if not hardware_snapshot().gpus:
        assert "No GPU: models run on CPU." in ui.texts(at.info)
    else:
        assert any(p.proto.text.startswith("VRAM") for p in at.get("progress"))
    assert any(p.proto.text.startswith("RAM ") for p in at.get("progress"))


def test_unexpected_errors_show_a_generic_message_and_go_to_the_log(ui, store, monkeypatch, caplog):
    import logging

    def broken(*args, **kwargs):
        raise RuntimeError("internal detail that must not reach the page")

    monkeypatch.setattr(jobs, "request_stop", broken)
    logger = logging.getLogger("storybench")  # does not propagate to the root logger once configured
    logger.addHandler(caplog.handler)
    try:
        jobs.enqueue(store, ui.fake_config("will not stop"), LOCAL_ADMIN)
        at = ui.open_app(RUN)
        ui.button(at, "Stop").click()
        ui.rerun(at)
    finally:
        logger.removeHandler(caplog.handler)
    [error] = [e for e in ui.texts(at.error) if "Something went wrong" in e]
    assert "while stopping the run (RuntimeError)" in error and "log file" in error
    assert "internal detail" not in json.dumps([str(e) for e in at.main])
    assert any(r.exc_info and "internal detail" in str(r.exc_info[1]) for r in caplog.records)


def test_pages_live_outside_a_pages_folder():
    """A pages/ folder beside streamlit_app.py turns on Streamlit's legacy page discovery for the
    first request after a restart (a bookmarked page URL would then skip the app's frame)."""
    root = Path(__file__).resolve().parents[2]
    assert not (root / "pages").exists()
    pages = {p.name for p in (root / "app_pages").glob("*.py")}
    assert {"configure.py", "run.py", "results.py", "models.py", "hardware.py"} <= pages


def test_a_damaged_row_is_skipped_and_flagged_on_every_page(ui, store):
    import sqlite3

    eid = ui.run_evaluation(store, ui.fake_config("kept run"))
    bad = store.create_evaluation({"name": "damaged", "config": {"models": []}, "status": "completed"})
    with sqlite3.connect(paths.sqlite_path()) as conn:
        # `extra` (not the config): brief listings, which leave the config out, still read it.
        conn.execute("UPDATE evaluations SET extra = '{oops' WHERE id = ?", (bad,))
        conn.execute("UPDATE responses SET model_ref = '[' WHERE id IN (SELECT id FROM responses LIMIT 1)")
    at = ui.open_app()
    for page in (RUN, RESULTS):
        at.switch_page(page)
        ui.rerun(at)
        assert not at.exception and not at.error, ui.texts(at.error)
        flags = " ".join(ui.texts(at.sidebar.warning))
        assert "could not be read and are left out" in flags
    at.switch_page(RUN)
    ui.rerun(at)
    assert list(at.dataframe[0].value["id"]) == [eid]  # the history lists the readable evaluation
