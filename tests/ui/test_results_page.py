"""The Results page's score side under AppTest: leaderboard, compare, export, Judge now, pairwise ratings.

Fixture data is real: fake models write the responses, the judge code scores
them (a fake judge with scripted JSON replies, one scripted failure) and the
pairwise judge and the Vote code store verdicts and votes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from streamlit.runtime.media_file_manager import MediaFileManager

from storybench_core import catalog, jobs, judge, pairwise, results, votes
from storybench_core.access import LOCAL_ADMIN
from storybench_core.backends.fake import FakeBackend
from storybench_core.config import JudgeConfig, ModelSpec, config_to_dict, parse_config
from storybench_core.runner import now_utc, task_key
from storybench_core.store.sqlite import SQLiteStore
from storybench_core.views import results as results_view

RESULTS = "app_pages/results.py"
LONG_SCORES = {0: 5, 1: 4, 2: 4}  # fake-long: overall per prompt index
SHORT_SCORES = {0: 3, 1: 2, 2: 2}


def scripted_reply(score: int, model: str) -> str:
    """A valid judge answer: every criterion the same score, with a justification naming the model."""
    rubric = catalog.load_rubric()
    return json.dumps(
        {
            cid: {"score": score, "justification": f"{model} earns {score} on {cid}."}
            for cid in rubric.criterion_ids
        }
    )


@pytest.fixture
def judged(ui, store) -> str:
    """Two fake models × three prompts, judged by 'fake-judge'; one extra judgement of fake-long failed."""
    eid = ui.run_evaluation(store, ui.fake_config("judged run", models=ui.TWO_MODELS))
    rubric, cfg = catalog.load_rubric(), JudgeConfig(max_retries=0)
    for response in store.list_responses(eid):
        model, index = response["model_name"], int(response["prompt_index"])
        score = (LONG_SCORES if model == "fake-long" else SHORT_SCORES)[index]
        backend = FakeBackend(reply=scripted_reply(score, model))
        store.add_judgement(judge.judge_response(backend, "fake-judge", response, rubric, cfg))
        if model == "fake-long" and index == 1:
            broken = FakeBackend(reply="I liked it.")
            store.add_judgement(judge.judge_response(broken, "fake-judge", response, rubric, cfg, attempt=2))
    return eid


def open_results(ui, eid: str, **query: Any):
    return ui.open_app(RESULTS, query={"evaluation": eid, **query})


def table_with(at, column: str):
    """The first dataframe on the page that has this column."""
    for frame in at.dataframe:
        if column in frame.value.columns:
            return frame.value
    raise AssertionError(f"no table with a '{column}' column")


def page_text(at) -> str:
    parts = [*at.markdown, *at.caption, *at.info, *at.success, *at.warning, *at.subheader, *at.main.text]
    return " ".join(str(e.value) for e in parts)


def test_without_an_evaluation_the_score_tabs_ask_for_one(ui, store, judged):
    at = ui.open_app(RESULTS)
    assert sum("one evaluation at a time" in i for i in ui.texts(at.info)) == 2  # Leaderboard, Compare
    assert not [b for b in at.button if b.label == "Judge now"]


def test_leaderboard_ranks_models_with_cis_failed_judgements_and_text_metrics(ui, store, judged):
    at = open_results(ui, judged)
    board = table_with(at, "n_failed_judgements")
    assert list(board["model"]) == ["fake-long", "fake-short"]
    assert dict(zip(board["model"], board["n_failed_judgements"], strict=True)) == {
        "fake-long": 1,
        "fake-short": 0,
    }
    assert dict(zip(board["model"], board["overall"], strict=True)) == {"fake-long": 4.33, "fake-short": 2.33}
    assert board["ci"].iloc[0].startswith("4.33 [") and board["ci"].iloc[0].endswith("]")
    assert list(board["n_responses"]) == [3, 3]
    for column in (
        "score_creativity",
        "words",
        "distinct_2",
        "distinct_3",
        "repeated_4gram_rate",
        "stock_phrase_count",
    ):
        assert column in board.columns
    assert board["words"].iloc[0] > board["words"].iloc[1]  # fake-long writes longer

    trend = table_with(at, "slope")
    assert list(trend["model"]) == ["fake-long", "fake-short"]
    assert list(trend["scores"].iloc[0]) == [5.0, 4.0, 4.0]
    assert trend["slope"].iloc[0] < 0

    # Charts tab: the three length/speed charts plus the five score charts.
    assert len(at.get("plotly_chart")) == 8
    assert "No pairwise verdicts or team votes yet" in page_text(at)


def test_filters_narrow_the_leaderboard(ui, store, judged):
    at = open_results(ui, judged, prompt=["1"])
    board = table_with(at, "n_failed_judgements")
    assert dict(zip(board["model"], board["overall"], strict=True)) == {"fake-long": 5.0, "fake-short": 3.0}
    assert list(board["n_failed_judgements"]) == [0, 0]


def test_compare_shows_two_models_side_by_side_with_scores_and_justifications(ui, store, judged):
    at = open_results(ui, judged, cmp_prompt="2")
    texts = ui.texts(at.main.text)
    responses = {r["model_name"]: r for r in store.list_responses(judged) if r["prompt_index"] == 1}
    assert responses["fake-long"]["response"] in texts and responses["fake-short"]["response"] in texts
    assert responses["fake-long"]["prompt_text"] in texts  # the prompt above the columns
    assert {"fake-long", "fake-short"} <= set(ui.texts(at.subheader))
    overall = [m.value for m in at.metric if m.label == "Overall"]
    assert overall == ["4.00", "2.00"]
    labels = [e.label for e in at.expander]
    assert "fake-judge · attempt 1 · overall 4.00" in labels
    assert "fake-judge · attempt 2 · failed" in labels
    assert "fake-short earns 2 on creativity." in page_text(at)

    # Narrowing to one model asks for a second; the choice is mirrored in the URL.
    at.multiselect(key="results.compare.models").set_value(["fake-short"])
    ui.rerun(at)
    assert any("two or more models" in i for i in ui.texts(at.info))
    assert at.query_params["cmp_model"] == "fake-short"
    assert at.query_params["cmp_prompt"] == "2"


def test_export_offers_csv_json_and_markdown_of_the_evaluation(ui, store, judged, monkeypatch):
    built: dict[str, Callable[[], bytes]] = {}
    original = MediaFileManager.add_deferred

    def spy(
        self: MediaFileManager,
        data_callable: Callable[[], bytes],
        mimetype: str | None,
        coordinates: str,
        file_name: str | None = None,
        **kwargs: Any,
    ) -> str:
        built[str(file_name)] = data_callable
        return original(self, data_callable, mimetype, coordinates, file_name=file_name, **kwargs)

    monkeypatch.setattr(MediaFileManager, "add_deferred", spy)
    at = open_results(ui, judged)
    labels = {b.label for b in at.download_button}
    assert {"Responses + judgements (CSV)", "Evaluation (JSON)", "Report (Markdown)"} <= labels
    files = {name.rsplit(".", 1)[1]: make() for name, make in built.items()}
    assert set(files) == {"csv", "json", "md"}
    assert all(files.values())
    csv = files["csv"].decode()
    assert "fake-long" in csv and "fake-short" in csv and "why_creativity" in csv
    data = json.loads(files["json"])
    assert len(data["responses"]) == 6
    assert sum(len(r["judgements"]) for r in data["responses"]) == 7
    report = files["md"].decode()
    assert report.startswith("# Storybench report: judged run") and "fake-long" in report


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_judge_now_judges_an_unjudged_evaluation_in_the_background(ui, store):
    base = ui.fake_config("to judge", models=ui.TWO_MODELS).model_dump()
    config = parse_config(base | {"judge": {"model": {"kind": "fake", "name": "fake-judge"}}})
    eid = ui.run_evaluation(store, config)
    at = open_results(ui, eid)
    assert any("Nothing judged yet" in i for i in ui.texts(at.info))
    picker = at.selectbox(key="results.judge_with")
    assert picker.value == "Configured judge: fake-judge"
    assert "Bundled model: gemma-3-270m-q4_k_m (bundled)" in picker.options
    assert "Same as candidate: fake-short" in picker.options

    ui.button(at, "Judge now").click()
    at.run()
    # Judge now queues a job; the worker (here run by the test, so the page is deterministic) does it.
    [job] = store.list_jobs(evaluation_id=eid)
    assert (job["kind"], job["status"]) == ("judge", "queued")
    ui.rerun(at)
    assert ui.button(at, "Stop judging") is not None  # shown while the job is queued or running
    assert jobs.Worker(store).run_once()
    assert len(store.list_judgements(eid)) == 6
    assert any("judging finished" in e["message"] for e in store.list_events(eid))

    def finished() -> bool:
        ui.rerun(at)
        return any("Judging finished: 6 judged, 0 failed" in s for s in ui.texts(at.success))

    assert wait_until(finished, timeout=10)
    board = table_with(at, "n_failed_judgements")
    assert set(board["model"]) == {"fake-long", "fake-short"}
    assert not any("Nothing judged yet" in i for i in ui.texts(at.info))
    console = [e for e in at.expander if e.label.startswith("Judge console")]
    assert console and "judged fake-" in " ".join(ui.texts(at.code))

    # Judging again only finds what is missing: nothing.
    ui.button(at, "Judge now").click()
    at.run()
    assert jobs.Worker(store).run_once()
    assert any("all 6 responses already judged" in e["message"] for e in store.list_events(eid))
    assert len(store.list_judgements(eid)) == 6


def test_pairwise_ratings_show_when_verdicts_and_votes_exist(ui, store, judged):
    pairwise.compare_judge_evaluation(
        store, judged, ModelSpec(kind="fake", name="pair-judge"), budget=6, n_boot=50
    )
    for voter in ("ann", "ben"):
        pair = votes.next_pair_for(store, judged, voter)
        assert pair is not None
        votes.record_vote(store, LOCAL_ADMIN, pair, "A", typed_name=voter)
    at = open_results(ui, judged)
    text = page_text(at)
    assert "**Judge pair-judge**" in text and "**Team votes (human)**" in text
    rated = table_with(at, "comparisons")
    assert set(rated["model"]) == {"fake-long", "fake-short"}
    assert list(rated["comparisons"]) == [3, 3]
    assert all("[" in ci for ci in rated["ci"])
    assert any(m.label == "Rubric vs pairwise rank (Spearman ρ)" for m in at.metric)
    assert "agree_pct" in table_with(at, "agree_pct").columns  # team votes vs judges
    assert "first_win_rate" in table_with(at, "first_win_rate").columns
    assert len(at.get("plotly_chart")) == 9  # the eight charts plus position bias


def test_a_second_judge_adds_a_judge_picker_and_agreement(ui, store, judged):
    rubric, cfg = catalog.load_rubric(), JudgeConfig(max_retries=0)
    for response in store.list_responses(judged):
        reply = scripted_reply(3, response["model_name"])
        store.add_judgement(
            judge.judge_response(FakeBackend(reply=reply), "other-judge", response, rubric, cfg)
        )
    at = open_results(ui, judged)
    assert "judge_a" in table_with(at, "judge_a").columns
    at.selectbox(key="results.judge").set_value("other-judge")
    ui.rerun(at)
    board = table_with(at, "n_failed_judgements")
    assert list(board["overall"]) == [3.0, 3.0]
    assert at.query_params["judge"] == "other-judge"


def test_compare_renders_judge_justifications_without_images_or_links(ui, store):
    eid = ui.run_evaluation(store, ui.fake_config("hostile judge", models=ui.TWO_MODELS))
    rubric, cfg = catalog.load_rubric(), JudgeConfig(max_retries=0)
    why = "Fine ![px](https://tracker.example/p.png) [see](https://evil.example) <img src=x> :red[OFFICIAL]"
    reply = json.dumps({cid: {"score": 3, "justification": why} for cid in rubric.criterion_ids})
    for response in store.list_responses(eid):
        store.add_judgement(
            judge.judge_response(FakeBackend(reply=reply), "fake-judge", response, rubric, cfg)
        )
    at = open_results(ui, eid, cmp_prompt="1")
    shown = " ".join(str(m.value) for m in at.markdown)
    assert "Fine px see" in shown
    for active in ("](", "![", "<img", "https://", ":red["):
        assert active not in shown, active


# --- a large evaluation: the page reads texts only for what it shows ---------------------------

LARGE_MODELS = ("m-a", "m-b", "m-c", "m-d")


def seed_large(store, config, n: int) -> str:
    """n responses over LARGE_MODELS × film/thriller × 3 prompts × as many runs as it takes, each judged."""
    rubric = catalog.load_rubric()
    eid = store.create_evaluation(
        {"name": "large", "config": config_to_dict(config), "status": "completed", "created_at": now_utc(),
         "total_tasks": n, "completed_tasks": n, "failed_tasks": 0}
    )  # fmt: skip
    i = 0
    while i < n:
        run = i // 24 + 1
        for model in LARGE_MODELS:
            for sequence in ("film", "thriller"):
                for prompt in range(3):
                    if i >= n:
                        break
                    score = 1 + (i + LARGE_MODELS.index(model)) % 5
                    rid = store.upsert_response(
                        {"evaluation_id": eid, "task_key": task_key(eid, model, sequence, run, prompt),
                         "model_name": model, "model_ref": {"kind": "fake"}, "sequence": sequence, "run": run,
                         "prompt_index": prompt, "prompt_name": f"p{prompt}", "prompt_text": "Write.",
                         "messages": [], "response": f"{model} writes story {i} " * 5, "finish_reason": "stop",
                         "prompt_tokens": 10, "completion_tokens": 25, "generation_time_s": 1.0,
                         "tokens_per_s": 25.0, "seed": i, "error": None}
                    )  # fmt: skip
                    store.add_judgement(
                        {"response_id": rid, "evaluation_id": eid, "judge_model": "j", "attempt": 1,
                         "rubric_hash": rubric.rubric_hash, "overall": float(score), "error": None,
                         "scores": {c: {"score": score, "justification": "ok"} for c in rubric.criterion_ids},
                         "raw_output": "{}", "structured_output": "json_schema", "retries": 0}
                    )  # fmt: skip
                    i += 1
    return eid


def test_a_large_evaluation_shows_its_leaderboard_reading_only_the_texts_on_screen(ui, store, monkeypatch):
    n = 4000
    eid = seed_large(store, ui.fake_config("large"), n)
    texts: list[int] = []  # documents with a response text handed to the page, per read
    scopes: list[dict[str, Any]] = []
    list_responses, get_response = SQLiteStore.list_responses, SQLiteStore.get_response

    def counted_list(self, evaluation_id=None, **filters):
        docs = list_responses(self, evaluation_id, **filters)
        texts.append(len(docs))
        scopes.append(filters)
        return docs

    def counted_get(self, response_id):
        texts.append(1)
        return get_response(self, response_id)

    monkeypatch.setattr(SQLiteStore, "list_responses", counted_list)
    monkeypatch.setattr(SQLiteStore, "get_response", counted_get)
    at = open_results(ui, eid)

    board = table_with(at, "n_failed_judgements")
    assert sorted(board["model"]) == list(LARGE_MODELS) and board["n_responses"].sum() == n
    assert {m.label: m.value for m in at.metric}["Responses"] == str(n)
    # Texts: the table's page, a source per model, the text-metric sample, the compared responses.
    bound = results_view.PAGE_SIZE + len(LARGE_MODELS) * (results.TEXT_SAMPLE_PER_MODEL + 6 + 1) + 3
    assert sum(texts) <= bound < n, (sum(texts), bound)
    assert scopes and all(f.get("sequence") and f.get("run") for f in scopes)  # one run of one sequence
    assert any("Text metrics" in c and f"of {n:,} responses" in c for c in ui.texts(at.caption))

    # What goes to the browser is bounded too: one page of rows, a picker for those, aggregated charts.
    assert len(table_with(at, "preview")) == results_view.PAGE_SIZE
    assert len(at.selectbox(key="results.response").options) == results_view.PAGE_SIZE
    for chart in at.get("plotly_chart"):
        figure = json.loads(chart.proto.spec)
        for trace in figure["data"]:
            assert all(len(v) <= 16 for v in trace.values() if isinstance(v, list)), trace.get("name")

    # The next page reads the texts of its own rows only.
    texts.clear()
    at.number_input(key="results.page").set_value(3)
    ui.rerun(at)
    assert any("Responses 101–150 of 4,000" in c for c in ui.texts(at.caption))
    assert sum(texts) <= bound


def test_the_judges_card_and_warning_stand_beside_its_leaderboard(ui, store, judged):
    """Uncalibrated: marked so, with a Calibrate judge button that queues a job; once a card says the
    judge cannot order a degraded ladder, the leaderboard carries that warning."""
    from storybench_core.calibration.metrics import RungScore, compute_card

    at = open_results(ui, judged)
    assert any("fake-judge has not been calibrated" in i for i in ui.texts(at.info))
    ui.button(at, "Calibrate judge").click()
    ui.rerun(at)
    [job] = [j for j in store.list_jobs(evaluation_id=judged) if j["kind"] == "calibrate"]
    assert job["status"] == "queued" and job["queued_by"] == "local"
    store.transition_job(job["id"], ["queued"], {"status": "stopped"})
    # A card filed for this judge (what a finished calibration job leaves): a constant judge.
    card = compute_card([RungScore(x, k, 1, 1.0) for x in "ab" for k in range(4)], retested=False).to_dict()
    done = store.create_job({"kind": "calibrate", "evaluation_id": judged, "status": "completed"})
    store.update_job(done, {"result": card | {"judge": "fake-judge", "identity": {"key": "k"}}})
    at = open_results(ui, judged)
    errors = " ".join(ui.texts(at.error))
    assert "fake-judge cannot order a degraded ladder" in errors and "not evidence of quality" in errors
    assert "same mean score (1.00)" in errors
    expander = [e for e in at.expander if e.label.startswith("Reliability card")]
    assert expander and at.table[0].value["value"].iloc[0] == "cannot order a degraded ladder"
    assert table_with(at, "n_failed_judgements") is not None  # the leaderboard is still shown, flagged
