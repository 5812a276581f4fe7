"""Bradley–Terry ratings against hand-computed cases, bootstrap intervals, agreement and turn trends."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from storybench_core import ratings

ELO = 400 / math.log(10)


def games(a: str, b: str, wins: int, losses: int, ties: int = 0) -> list[tuple[str, str, float]]:
    return [(a, b, 1.0)] * wins + [(a, b, 0.0)] * losses + [(a, b, 0.5)] * ties


def test_two_models_match_the_closed_form():
    # Two models: the maximum-likelihood win probability is wins / games, so θa − θb = ln(p / (1 − p)).
    theta = ratings.bradley_terry(games("a", "b", 7, 3), prior_sd=None)
    assert theta["a"] - theta["b"] == pytest.approx(math.log(7 / 3), abs=1e-9)
    assert theta["a"] + theta["b"] == pytest.approx(0.0, abs=1e-9)
    table = ratings.fit_ratings(games("a", "b", 7, 3), prior_sd=None, n_boot=0).set_index("model")
    assert table.loc["a", "rating"] - table.loc["b", "rating"] == pytest.approx(400 * math.log10(7 / 3))
    assert table.loc["a", "rating"] + table.loc["b", "rating"] == pytest.approx(2000)


def test_ties_count_as_half_wins():
    # 2 wins, 2 ties, 0 losses = 3 of 4: θa − θb = ln 3.
    theta = ratings.bradley_terry(games("a", "b", 2, 0, ties=2), prior_sd=None)
    assert theta["a"] - theta["b"] == pytest.approx(math.log(3), abs=1e-9)


def test_three_models_with_proportions_that_fit_the_model_exactly():
    # a beats b 2:1, b beats c 2:1, a beats c 4:1. These proportions satisfy the model with
    # θa − θb = θb − θc = ln 2 (and 4:1 = e^{2 ln 2}), so the MLE reproduces them exactly.
    outcomes = games("a", "b", 2, 1) + games("b", "c", 2, 1) + games("a", "c", 4, 1)
    theta = ratings.bradley_terry(outcomes, prior_sd=None)
    assert theta["a"] - theta["b"] == pytest.approx(math.log(2), abs=1e-9)
    assert theta["b"] - theta["c"] == pytest.approx(math.log(2), abs=1e-9)
    table = ratings.fit_ratings(outcomes, prior_sd=None, n_boot=0)
    assert list(table["model"]) == ["a", "b", "c"] and list(table["rank"]) == [1, 2, 3]
    assert list(table["comparisons"]) == [8, 6, 8]
    assert table["wins"].tolist() == [6.0, 3.0, 2.0]


def test_the_prior_keeps_a_clean_sweep_finite_and_shrinks_toward_the_mean():
    sweep = ratings.bradley_terry(games("a", "b", 3, 0))
    assert 0 < sweep["a"] - sweep["b"] < 10
    mle = math.log(7 / 3)
    shrunk = ratings.bradley_terry(games("a", "b", 7, 3), prior_sd=2.0)
    assert 0.8 * mle < shrunk["a"] - shrunk["b"] < mle


def test_margins_may_weigh_as_fractional_scores():
    frame = pd.DataFrame({"model_a": ["a"] * 4, "model_b": ["b"] * 4, "score_a": [0.75] * 4})
    theta = ratings.bradley_terry(frame, prior_sd=None)
    assert theta["a"] - theta["b"] == pytest.approx(math.log(3), abs=1e-9)


def test_synthetic_strengths_are_recovered_within_the_intervals():
    rng = np.random.default_rng(7)
    true_elo = {"m1": 850.0, "m2": 950.0, "m3": 1000.0, "m4": 1080.0, "m5": 1120.0}
    mean = np.mean(list(true_elo.values()))
    true_elo = {m: r - mean + 1000 for m, r in true_elo.items()}
    names = list(true_elo)
    rows = []
    for _ in range(3000):
        i, j = rng.choice(len(names), 2, replace=False)
        p = ratings.win_probability(true_elo[names[i]], true_elo[names[j]])
        rows.append((names[i], names[j], float(rng.random() < p)))
    table = ratings.fit_ratings(rows, n_boot=400, seed=1).set_index("model")
    for model, truth in true_elo.items():
        assert table.loc[model, "ci_low"] <= truth <= table.loc[model, "ci_high"], (model, truth, table)
        assert table.loc[model, "ci_low"] <= table.loc[model, "rating"] <= table.loc[model, "ci_high"]
    assert list(table.sort_values("rank").index) == ["m5", "m4", "m3", "m2", "m1"]
    # Fewer games, wider intervals.
    few = ratings.fit_ratings(rows[:150], n_boot=400, seed=1).set_index("model")
    assert (few["ci_high"] - few["ci_low"]).mean() > 2 * (table["ci_high"] - table["ci_low"]).mean()


def test_outcomes_accept_tuples_and_drop_what_cannot_count():
    frame = ratings.outcomes_frame([("a", "b", 1.0, 2.0), ("a", "a", 1.0, 1.0), ("a", "b", 1.5, 1.0)])
    assert len(frame) == 1 and frame.loc[0, "weight"] == 2.0
    assert ratings.fit_ratings([]).empty
    assert list(ratings.fit_ratings([]).columns) == ratings.RATING_COLUMNS


def test_intervals_overlap():
    table = pd.DataFrame({"model": ["a", "b", "c"], "ci_low": [10, 5, 0], "ci_high": [20, 12, 4]})
    assert ratings.intervals_overlap(table, "a", "b")
    assert not ratings.intervals_overlap(table, "a", "c")
    assert ratings.intervals_overlap(table, "a", "unknown")


def test_rank_agreement_with_the_rubric_leaderboard():
    rated = pd.DataFrame({"model": ["a", "b", "c", "only-pairwise"], "rating": [1100, 1000, 900, 800]})
    board = pd.DataFrame({"model_name": ["a", "b", "c"], "overall": [7.5, 6.0, 4.0]})
    same = ratings.rank_agreement(rated, board)
    assert same.spearman == pytest.approx(1.0) and same.n_models == 3
    assert list(same.table["rubric_rank"]) == [1, 2, 3]
    reversed_board = board.assign(overall=[4.0, 6.0, 7.5])
    assert ratings.rank_agreement(rated, reversed_board).spearman == pytest.approx(-1.0)


def test_human_vs_judge_agreement():
    rows = [
        # pair, judge, score for model_a
        ("p1", "judge-x", 1.0), ("p1", "human", 1.0), ("p1", "human", 1.0),
        ("p2", "judge-x", 0.0), ("p2", "human", 1.0),
        ("p3", "judge-x", 0.5), ("p3", "human", 0.5),
        ("p4", "judge-x", 1.0),  # no human vote: not counted
    ]  # fmt: skip
    models = {"p1": ("a", "b"), "p2": ("b", "c"), "p3": ("a", "c"), "p4": ("a", "c")}
    frame = pd.DataFrame(
        [
            {"pair_key": p, "judge": j, "model_a": models[p][0], "model_b": models[p][1], "score_a": s}
            for p, j, s in rows
        ]
    )
    table = ratings.human_judge_agreement(frame).set_index("judge")
    assert table.loc["judge-x", "n_pairs"] == 3
    assert table.loc["judge-x", "agree_pct"] == pytest.approx(200 / 3)
    assert table.loc["judge-x", "n_models"] == 3
    assert -1.0 <= table.loc["judge-x", "spearman"] <= 1.0
    assert ratings.human_judge_agreement(frame[frame["judge"] != "human"]).empty


def test_turn_trend_from_a_plain_frame():
    frame = pd.DataFrame(
        {
            "model_name": ["fades"] * 6 + ["steady"] * 3,
            "prompt_index": [0, 0, 1, 1, 2, 2, 0, 1, 2],
            "overall": [8, 8, 6, 6, 4, 4, 5, 5, 5],
        }
    )
    trend = ratings.turn_trend(frame).set_index("model_name")
    assert trend.loc["fades", "slope"] == pytest.approx(-2.0)
    assert trend.loc["fades", "scores"] == [8.0, 6.0, 4.0]
    assert trend.loc["fades", "change"] == -4.0 and trend.loc["fades", "turns"] == 3
    assert trend.loc["steady", "slope"] == pytest.approx(0.0)
    means = ratings.turn_means(frame)
    assert list(means.columns) == ["model_name", "turn", "mean", "n"]
    assert means[means["model_name"] == "fades"]["n"].tolist() == [2, 2, 2]


def test_turn_trend_from_a_judgement_frame_averages_judges_and_skips_failures():
    frame = pd.DataFrame(
        {
            "response_id": ["r1", "r1", "r1", "r2", "r3"],
            "model_name": ["m"] * 5,
            "prompt_index": [0, 0, 0, 1, 2],
            "overall": [6.0, 8.0, np.nan, 5.0, np.nan],
            "judgement_failed": [False, False, True, False, True],
        }
    )
    trend = ratings.turn_trend(frame).set_index("model_name")
    assert trend.loc["m", "scores"][:2] == [7.0, 5.0] and math.isnan(trend.loc["m", "scores"][2])
    assert trend.loc["m", "n"] == 2 and trend.loc["m", "slope"] == pytest.approx(-2.0)
    assert ratings.turn_trend(frame.iloc[0:0]).empty


def test_turn_trend_reads_the_results_frame(storybench_home):
    from test_pairwise import make_evaluation

    from storybench_core import catalog, results
    from storybench_core.store.sqlite import SQLiteStore

    store = SQLiteStore(storybench_home / "storybench.db")
    eid = make_evaluation(store, {"fades": 1, "steady": 2}, runs=1)
    rubric = catalog.load_rubric()
    for r in store.list_responses(eid):
        score = 5 if r["model_name"] == "steady" else 8 - 2 * r["prompt_index"]
        store.add_judgement(
            {
                "response_id": r["id"],
                "evaluation_id": eid,
                "judge_model": "j",
                "rubric_hash": rubric.rubric_hash,
                "attempt": 1,
                "scores": {c: {"score": score, "justification": "x"} for c in rubric.criterion_ids},
                "overall": float(score),
                "error": None,
            }
        )
    trend = ratings.turn_trend(results.responses_frame(store, eid)).set_index("model_name")
    store.close()
    assert trend.loc["fades", "scores"] == [8.0, 6.0, 4.0] and trend.loc["fades", "slope"] == pytest.approx(
        -2
    )
    assert trend.loc["steady", "slope"] == pytest.approx(0.0)
