"""Results frames, statistics, text metrics and exports on small fixed data in a real SQLite file."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from storybench_core import catalog, charts, results
from storybench_core.cli import main
from storybench_core.runner import now_utc, task_key
from storybench_core.store.sqlite import SQLiteStore

EID = "ev-fixed"
RUBRIC = {
    "id": "tiny",
    "version": 1,
    "scale": {"min": 1, "max": 5},
    "criteria": [
        {
            "id": cid,
            "name": cid.title(),
            "description": f"How good the {cid} is.",
            "anchors": {str(i): f"level {i}" for i in range(1, 6)},
        }
        for cid in ("plot", "style")
    ],
}


@pytest.fixture(autouse=True)
def tiny_rubric(storybench_home):
    """A two-criterion rubric, so every overall score below is easy to check by hand."""
    folder = storybench_home / "catalog"
    folder.mkdir(exist_ok=True)
    (folder / "rubric.json").write_text(json.dumps(RUBRIC))
    return catalog.load_rubric()


@pytest.fixture
def store(tmp_path):
    s = SQLiteStore(tmp_path / "results.db")
    s.create_evaluation(
        {"id": EID, "name": "fixed", "config": {}, "config_hash": "abc", "status": "completed"}
    )
    yield s
    s.close()


def add_response(
    store, model, prompt=0, *, run=1, sequence="film", text="one two three", error=None, tps=10.0
):
    doc = {
        "evaluation_id": EID,
        "task_key": task_key(EID, model, sequence, run, prompt),
        "model_name": model,
        "sequence": sequence,
        "run": run,
        "prompt_index": prompt,
        "prompt_name": f"p{prompt}",
        "prompt_text": f"Brief {prompt}",
        "messages": [],
        "response": text,
        "finish_reason": "stop",
        "prompt_tokens": 10,
        "completion_tokens": len(text.split()),
        "generation_time_s": 1.0,
        "tokens_per_s": tps,
        "seed": 1,
        "error": error,
    }
    return store.upsert_response(doc)


def add_judgement(store, response_id, judge="J1", attempt=1, plot=None, style=None, rubric_hash=None):
    failed = plot is None
    scores = (
        None
        if failed
        else {
            "plot": {"score": plot, "justification": f"plot {plot}"},
            "style": {"score": style, "justification": f"style {style}"},
        }
    )
    store.add_judgement(
        {
            "response_id": response_id,
            "evaluation_id": EID,
            "judge_model": judge,
            "rubric_hash": rubric_hash or catalog.load_rubric().rubric_hash,
            "attempt": attempt,
            "scores": scores,
            "overall": None if failed else (plot + style) / 2,
            "raw_output": "garbage" if failed else json.dumps(scores),
            "error": "no valid judgement after 3 tries: no JSON" if failed else None,
            "retries": 2 if failed else 0,
            "structured_output": "json_schema",
            "created_at": now_utc(),
        }
    )


@pytest.fixture
def fixed(store):
    """Model A: overall 4, 3, 5 (+1 failed judgement); model B: 2, 3; one failed response of B."""
    a = [add_response(store, "A", p, text=t) for p, t in enumerate(["w " * 10, "w " * 20, "w " * 30])]
    add_judgement(store, a[0], plot=4, style=4)
    add_judgement(store, a[0], attempt=2, plot=None)
    add_judgement(store, a[1], plot=2, style=4)
    add_judgement(store, a[2], plot=5, style=5)
    b = [add_response(store, "B", p, text="w " * 5, tps=20.0) for p in range(2)]
    add_judgement(store, b[0], plot=1, style=3)
    add_judgement(store, b[1], plot=3, style=3)
    add_response(store, "B", 2, text="", error="model crashed")
    return store


# --- statistics against hand-computed values ------------------------------------------------------


def test_bootstrap_ci_on_hand_computable_data():
    # Resampling 2 values: means 1, 3, 5 with p = ¼, ½, ¼ → the 2.5% and 97.5% points are 1 and 5.
    assert results.bootstrap_ci([1, 5]) == (1.0, 5.0)
    # [0, 0, 3]: P(mean 0) = 8/27, P(mean 3) = 1/27 = 3.7% > 2.5% → (0, 3).
    assert results.bootstrap_ci([0, 0, 3]) == (0.0, 3.0)
    assert results.bootstrap_ci([3.5] * 20) == (3.5, 3.5)
    assert results.bootstrap_ci([2.0]) == (2.0, 2.0)
    low, high = results.bootstrap_ci([])
    assert math.isnan(low) and math.isnan(high)
    assert results.bootstrap_ci([1, 2, np.nan, 4], seed=3) == results.bootstrap_ci([1, 2, 4], seed=3)


def test_bootstrap_ci_matches_the_normal_approximation_on_a_large_sample():
    x = np.random.default_rng(7).normal(3.0, 0.8, 2000)
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x))
    low, high = results.bootstrap_ci(x, n_boot=4000)
    assert low == pytest.approx(x.mean() - half, abs=0.2 * half)
    assert high == pytest.approx(x.mean() + half, abs=0.2 * half)


def test_bootstrap_count_shortcut_agrees_with_plain_resampling():
    x = np.random.default_rng(1).integers(1, 6, 400).astype(float)  # 5 distinct values: counts path
    jittered = x + np.arange(len(x)) * 1e-9  # all distinct: index path
    a = results.bootstrap_ci(x, n_boot=4000)
    b = results.bootstrap_ci(jittered, n_boot=4000)
    assert a == pytest.approx(b, abs=0.03)


def test_spearman_against_hand_computed_values():
    assert results.spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    # Ties get average ranks: a → 1, 2.5, 2.5, 4; b → 1, 3, 2, 4; ρ = 4.5 / √(4.5·5) = 3/√10.
    assert results.spearman([1, 2, 2, 4], [1, 3, 2, 4]) == pytest.approx(3 / math.sqrt(10))
    assert math.isnan(results.spearman([1, 1, 1], [1, 2, 3]))
    assert math.isnan(results.spearman([1], [2]))


# --- frames -------------------------------------------------------------------------------------


def test_responses_frame_has_one_row_per_judgement_and_keeps_failures(fixed):
    df = results.responses_frame(fixed, EID)
    assert len(df) == 6  # one row per judgement; the failed response is left out
    assert results.criteria_of(df) == ["plot", "style"]
    failed = df[df["judgement_failed"]]
    assert len(failed) == 1 and failed["overall"].isna().all() and failed["score_plot"].isna().all()
    assert failed["judgement_error"].iloc[0].startswith("no valid judgement")
    assert set(df["words"]) == {10, 20, 30, 5}
    with_failed = results.responses_frame(fixed, EID, include_failed_responses=True)
    assert len(with_failed) == 7 and with_failed["response_error"].notna().sum() == 1


def test_leaderboard_ranks_models_with_ci_and_counts(fixed):
    board = results.leaderboard(results.responses_frame(fixed, EID))
    assert list(board["model_name"]) == ["A", "B"] and list(board["rank"]) == [1, 2]
    a, b = board.iloc[0], board.iloc[1]
    assert a["overall"] == pytest.approx(4.0) and b["overall"] == pytest.approx(2.5)
    # A's per-response scores 4, 3, 5: P(all three draws = 3) = 1/27 > 2.5%, so the CI is the full range.
    assert (a["ci_low"], a["ci_high"]) == (3.0, 5.0)
    assert (b["ci_low"], b["ci_high"]) == (2.0, 3.0)
    assert (a["n_responses"], a["n_scored"], a["n_judgements"], a["n_failed_judgements"]) == (3, 3, 4, 1)
    assert (b["n_responses"], b["n_failed_judgements"]) == (2, 0)
    assert a["score_plot"] == pytest.approx(11 / 3) and a["score_style"] == pytest.approx(13 / 3)
    assert a["mean_words"] == 20 and b["mean_tokens_per_s"] == 20


def test_unjudged_responses_count_but_have_no_score(store):
    add_response(store, "C", 0)
    board = results.leaderboard(results.responses_frame(store, EID))
    row = board.iloc[0]
    assert row["n_responses"] == 1 and row["n_scored"] == 0 and math.isnan(row["overall"])


def test_per_criterion_per_sequence_and_chart_frames(fixed):
    df = results.responses_frame(fixed, EID)
    crit = results.per_criterion(df)
    assert list(crit.columns) == ["model_name", "criterion", "mean", "std", "n"]
    row = crit[(crit["model_name"] == "B") & (crit["criterion"] == "plot")].iloc[0]
    assert row["mean"] == 2 and row["n"] == 2 and row["std"] == pytest.approx(math.sqrt(2))
    matrix = results.criterion_matrix(df)
    assert list(matrix.columns) == ["plot", "style"] and matrix.loc["A", "style"] == pytest.approx(13 / 3)
    seq = results.per_sequence(df)
    assert seq.set_index("model_name").loc["A", "mean"] == pytest.approx(4.0)
    dist = results.score_distribution(df)
    assert sorted(dist[dist["model_name"] == "A"]["overall"]) == [3, 4, 5]
    length = results.length_vs_score(df)
    assert set(zip(length["words"], length["overall"], strict=True)) >= {(10, 4.0), (20, 3.0), (30, 5.0)}
    bias = results.length_bias(df).set_index("model_name")
    assert bias.loc["A", "spearman_words_score"] == pytest.approx(0.5)  # ranks (1,2,3) vs (2,1,3)


def test_old_rubric_judgements_are_left_out_when_current_ones_exist(fixed):
    rid = fixed.list_responses(EID, model_name="B")[0]["id"]
    add_judgement(fixed, rid, plot=5, style=5, rubric_hash="0123456789abcdef")
    board = results.leaderboard(results.responses_frame(fixed, EID)).set_index("model_name")
    assert board.loc["B", "overall"] == pytest.approx(2.5)
    every = results.leaderboard(results.responses_frame(fixed, EID, rubric_hash="all")).set_index(
        "model_name"
    )
    assert every.loc["B", "overall"] == pytest.approx((3.5 + 3) / 2)


def two_judges(store):
    """Three models, one response each; judge means J1: A 4, B 3, C 2 — J2: A 3, B 4, C 1."""
    for model, (j1, j2) in {"A": (4, 3), "B": (3, 4), "C": (2, 1)}.items():
        rid = add_response(store, model, 0)
        add_judgement(store, rid, "J1", plot=j1, style=j1)
        add_judgement(store, rid, "J2", plot=j2, style=j2)
    return results.responses_frame(store, EID)


def test_judge_agreement_against_hand_computed_values(store):
    agreement = results.judge_agreement(two_judges(store))
    assert len(agreement) == 1
    row = agreement.iloc[0]
    assert (row["judge_a"], row["judge_b"], row["n_models"], row["n_responses"]) == ("J1", "J2", 3, 3)
    # Ranks (3, 2, 1) vs (2, 3, 1): Σd² = 2 → ρ = 1 − 6·2 / (3·8) = 0.5.
    assert row["spearman_model_means"] == pytest.approx(0.5)
    # Differences J1 − J2 per response: +1, −1, +1.
    assert row["mean_diff"] == pytest.approx(1 / 3) and row["mean_abs_diff"] == 1 and row["max_abs_diff"] == 1


def test_leaderboard_per_judge_and_all_judges_averaged(store):
    df = two_judges(store)
    only_j2 = results.leaderboard(df, judge="J2")
    assert list(only_j2["model_name"]) == ["B", "A", "C"]
    both = results.leaderboard(df).set_index("model_name")
    assert both.loc["A", "overall"] == 3.5 and both.loc["C", "overall"] == 1.5
    assert results.judge_agreement(df[df["judge_model"] == "J1"]).empty


def test_attempt_spread_is_the_std_across_attempts(store):
    r1 = add_response(store, "A", 0)
    add_judgement(store, r1, attempt=1, plot=3, style=3)
    add_judgement(store, r1, attempt=2, plot=4, style=4)
    r2 = add_response(store, "A", 1)
    add_judgement(store, r2, attempt=1, plot=5, style=5)  # one attempt only: no spread
    spread = results.attempt_spread(results.responses_frame(store, EID))
    row = spread.iloc[0]
    assert (row["model_name"], row["judge_model"], row["n_responses"]) == ("A", "J1", 1)
    assert row["mean_std_overall"] == pytest.approx(math.sqrt(0.5))
    assert row["mean_std_criterion"] == pytest.approx(math.sqrt(0.5))


# --- text metrics ---------------------------------------------------------------------------------


def test_text_metrics_hand_checked():
    text = "The cat sat on the mat. The cat sat on the mat!"
    m = results.text_metrics(text, stock_phrases=[])
    # 12 tokens; bigrams 11 (6 distinct), trigrams 10 (6 distinct), 4-grams 9 (6 distinct → 3 repeats).
    assert m["words"] == 12
    assert m["distinct_2"] == pytest.approx(6 / 11)
    assert m["distinct_3"] == pytest.approx(6 / 10)
    assert m["repeated_4gram_rate"] == pytest.approx(3 / 9)
    assert m["stock_phrase_count"] == 0


def test_stock_phrases_are_counted_case_insensitively_as_whole_words():
    phrases = ["a testament to", "couldn't help but", "nestled in"]
    text = "A Testament to grit. She couldn’t help but smile, nestled inside the nook; nestled in moss. a testament to"
    assert (
        results.text_metrics(text, phrases)["stock_phrase_count"] == 4
    )  # "nestled inside" is not "nestled in"
    short = results.text_metrics("Hi there", [])
    assert short["words"] == 2 and short["distinct_2"] == 1.0 and math.isnan(short["distinct_3"])


def test_text_metrics_use_the_editable_catalog_list(storybench_home):
    (storybench_home / "catalog" / "stock_phrases.txt").write_text("# mine\nred door\n")
    assert results.text_metrics("The red door. The Red Door.")["stock_phrase_count"] == 2


def test_text_metrics_frame_and_summary(fixed):
    df = results.responses_frame(fixed, EID, include_text=True)
    frame = results.text_metrics_frame(df)
    assert len(frame) == 5 and set(frame["words"]) == {10, 20, 30, 5}
    summary = results.text_metrics_summary(df).set_index("model_name")
    assert summary.loc["A", "words"] == 20 and summary.loc["A", "repeated_4gram_rate"] > 0.8


class CountingStore:
    """A store that counts the response texts it hands out (list_responses and get_response)."""

    def __init__(self, store):
        self._store, self.calls, self.texts = store, [], 0

    def __getattr__(self, name):
        return getattr(self._store, name)

    def list_responses(self, evaluation_id=None, **filters):
        docs = self._store.list_responses(evaluation_id, **filters)
        self.calls.append(("list_responses", evaluation_id, filters))
        self.texts += len(docs)
        return docs

    def get_response(self, response_id):
        self.calls.append(("get_response", response_id, {}))
        self.texts += 1
        return self._store.get_response(response_id)


def test_text_metrics_read_a_bounded_sample_of_whole_runs(store):
    for run in range(1, 11):
        for model in ("A", "B"):
            for prompt in range(3):
                add_response(store, model, prompt, run=run, text=f"{model} run {run} says {prompt} " * 3)
    df = results.responses_frame(store, EID)
    sample = results.text_sample(df, per_model=7)  # 3 responses per run: runs 1-3 reach 7
    assert sample.conversations == tuple((m, "film", r) for m in ("A", "B") for r in (1, 2, 3))
    assert (sample.n_sampled, sample.n_total, sample.complete) == (18, 60, False)
    counting = CountingStore(store)
    metrics = results.sample_text_metrics(counting, EID, sample.conversations)
    assert counting.texts == 18 and len(counting.calls) == 6  # one conversation per read, texts only
    assert all(c[2]["model_name"] and c[2]["run"] and not c[2]["include_messages"] for c in counting.calls)
    full = results.text_metrics_frame(results.responses_frame(store, EID, include_text=True))
    same = full[full["response_id"].isin(metrics["response_id"])].sort_values("response_id")
    pd.testing.assert_frame_equal(
        metrics.sort_values("response_id").reset_index(drop=True),
        same.reset_index(drop=True),
        check_dtype=False,
        check_categorical=False,
    )
    assert results.text_sample(df[df["run"] == 7]).conversations == (("A", "film", 7), ("B", "film", 7))
    assert results.text_sample(df.iloc[0:0]) == results.TextSample((), 0, 0)


def test_box_stats_and_binned_means_by_hand():
    frame = pd.DataFrame(
        {"m": list("aaaabbbbc"), "v": [1, 2, 3, 4, 4, 5, 6, 100, np.nan], "w": [1, 2, 3, 4, 5, 6, 7, 8, 9]}
    )
    box = results.box_stats(frame, "v", ["m"]).set_index("m")
    assert list(box.index) == ["a", "b"]  # c has no value
    assert box.loc["a", ["q1", "median", "q3", "mean", "n"]].tolist() == [1.75, 2.5, 3.25, 2.5, 4]
    # b: q1 4.75, q3 29.5 → the upper whisker stops at 6, the furthest value within 1.5 IQR of q3.
    assert box.loc["b", ["lowerfence", "upperfence"]].tolist() == [4.0, 6.0]
    binned = results.binned_means(frame, "w", "v", "m", bins=2)
    assert binned["n"].sum() == 8 and set(binned["bin"]) == {0, 1}
    a = binned[binned["m"] == "a"].set_index("bin")
    assert a.loc[0, ["x", "y", "n"]].tolist() == [2.5, 2.5, 4]
    assert results.box_stats(frame.iloc[0:0], "v", ["m"]).empty
    assert results.binned_means(frame.iloc[0:0], "w", "v", "m").empty


# --- compare and exports -----------------------------------------------------------------------


def test_compare_frame_puts_models_side_by_side_with_justifications(fixed):
    frame = results.compare_frame(fixed, EID, "film", prompt_index=1, run=1, models=["B", "A"])
    assert list(frame["model_name"]) == ["B", "A"]
    b = frame.iloc[0]
    assert b["response"].startswith("w w") and b["prompt_text"] == "Brief 1"
    assert (b["score_plot"], b["score_style"], b["overall"]) == (3, 3, 3)
    assert b["why_plot"] == "plot 3" and frame.iloc[1]["why_style"] == "style 4"


def test_compare_frame_shows_failed_judgements_and_unjudged_models(fixed):
    add_response(fixed, "C", 0, text="fresh")
    frame = results.compare_frame(fixed, EID, "film", prompt_index=0, run=1)
    assert frame["model_name"].tolist().count("A") == 2  # a valid and a failed judgement
    a_failed = frame[(frame["model_name"] == "A") & frame["judgement_failed"]].iloc[0]
    assert math.isnan(a_failed["overall"]) and a_failed["judgement_error"]
    c = frame[frame["model_name"] == "C"].iloc[0]
    assert c["response"] == "fresh" and pd.isna(c["judge_model"])


def test_exports_csv_json_and_markdown(fixed, tmp_path):
    df = results.responses_frame(fixed, EID, include_text=True, justifications=True)
    path = results.export_csv(df, tmp_path / "out" / "r.csv")
    back = pd.read_csv(path)
    assert len(back) == 6 and {"score_plot", "why_style", "overall", "response"} <= set(back.columns)
    data = json.loads(results.export_json(fixed, EID, tmp_path / "r.json").read_text())
    assert data["evaluation"]["id"] == EID and len(data["responses"]) == 6
    a0 = next(r for r in data["responses"] if r["model_name"] == "A" and r["prompt_index"] == 0)
    assert [j["attempt"] for j in a0["judgements"]] == [1, 2] and a0["judgements"][1]["scores"] is None
    report = results.markdown_report(fixed, EID)
    assert report.startswith("# Storybench report: fixed")
    assert "## Leaderboard" in report and "| 1 | A | 4.00 | 3.00 | 5.00 | 3 | 1 |" in report
    assert "## Per criterion" in report and "| A | 3.67 | 4.33 |" in report
    assert "## Per sequence" in report and "## Best and worst responses" in report
    assert "### Best: A · film · run 1 · prompt 3 — overall 5.00" in report


def test_the_report_reads_only_the_texts_it_quotes(fixed):
    counting = CountingStore(fixed)
    report = results.markdown_report(counting, EID, n_samples=1)
    assert [c[0] for c in counting.calls] == ["get_response", "get_response"]  # best and worst, nothing else
    assert "> w w w w w w w w w w w w w w w w w w w w w w w w w w w w w w" in report  # the best one's text


def test_flat_store_projections_give_the_same_frames(fixed):
    bench = Path(__file__).resolve().parent.parent / "bench" / "results_scale.py"
    spec = importlib.util.spec_from_file_location("results_scale", bench)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    slow = results.responses_frame(module.DocumentsOnly(fixed), EID)  # the documents path
    fast = results.responses_frame(fixed, EID)  # the store's flat projections
    assert len(fast) == len(slow)
    key = ["model_name", "prompt_index", "attempt"]
    cols = ["overall", "score_plot", "score_style", "words", "judgement_failed", "judge_model"]
    a = slow.sort_values(key)[cols].astype(str).reset_index(drop=True)
    b = fast.sort_values(key)[cols].astype(str).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(
        results.leaderboard(slow), results.leaderboard(fast), check_dtype=False, check_categorical=False
    )


def test_chart_builders_return_figures(fixed):
    figures = charts.all_figures(results.responses_frame(fixed, EID))
    assert set(figures) == {
        "criterion_heatmap",
        "criterion_radar",
        "sequence_bars",
        "length_scatter",
        "score_distribution",
        "speed_bars",
    }
    assert all(len(f.data) >= 1 for f in figures.values())
    assert (
        charts.score_distribution(
            results.score_distribution(results.responses_frame(fixed, EID)), kind="violin"
        )
        .data[0]
        .type
        == "violin"
    )
    empty = charts.criterion_heatmap(pd.DataFrame())
    assert empty.layout.annotations[0].text.startswith("No scores yet")


# --- CLI ------------------------------------------------------------------------------------------


def test_cli_leaderboard_and_export(fixed, tmp_path, capsys):
    uri = f"sqlite:///{fixed.path}"
    assert main(["--store", uri, "leaderboard", EID]) == 0
    out = capsys.readouterr().out
    assert "95% CI" in out and "3.00–5.00" in out and out.index(" A ") < out.index(" B ")
    for fmt in ("csv", "json", "md"):
        target = tmp_path / f"report.{fmt}"
        assert main(["--store", uri, "export", EID, "--format", fmt, "--out", str(target)]) == 0
        assert target.stat().st_size > 100
    assert "## Leaderboard" in (tmp_path / "report.md").read_text()
    assert main(["--store", uri, "export", "nope", "--format", "md", "--out", str(tmp_path / "x.md")]) == 2


def test_leaderboard_intervals_include_the_judges_own_noise():
    """Resampling judgements within each response widens an interval exactly when attempts disagree."""
    import numpy as np

    from storybench_core.results.stats import bootstrap_ci, nested_bootstrap_ci

    responses = np.repeat(np.arange(20), 2)  # 20 responses, two attempts each
    steady = np.repeat(np.linspace(2, 4, 20), 2)  # both attempts agree
    noisy = steady + np.tile([-1.0, 1.0], 20)  # same per-response means, attempts 2 apart
    low_s, high_s = nested_bootstrap_ci(steady, responses, 2000, 1)
    low_n, high_n = nested_bootstrap_ci(noisy, responses, 2000, 1)
    assert (high_n - low_n) > 1.2 * (high_s - low_s)
    # With one judgement per response it is the plain bootstrap.
    assert nested_bootstrap_ci(steady[::2], np.arange(20), 500, 3) == bootstrap_ci(steady[::2], 500, 3)
    # A judge that gives everything 1.00 has nothing to resample: a zero-width interval, flagged below.
    assert nested_bootstrap_ci(np.ones(40), responses, 200, 0) == (1.0, 1.0)
