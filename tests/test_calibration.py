"""Judge calibration: transforms, ladders, the card's figures by hand, a scripted judge end to end.

The scripted judge (ScriptedJudge below) is a fake that scores by a rule we know, so every figure
of its card can be computed by hand; tests/test_calibration_slow.py calibrates the real bundled
Gemma. A real SQLite file throughout.
"""

from __future__ import annotations

import json
import math
import random

import pytest

from storybench_core import calibration, job_kinds, jobs
from storybench_core.access import LOCAL_ADMIN
from storybench_core.backends.base import Completion
from storybench_core.calibration import transforms
from storybench_core.calibration.metrics import PairVerdict, RungScore, compute_card, kendall_tau_b
from storybench_core.catalog import load_rubric
from storybench_core.config import parse_config
from storybench_core.errors import JudgeError
from storybench_core.store.sqlite import SQLiteStore

STORY = (
    "Mara found the key under the loose stone by the well. She turned it over twice. The iron was warm, "
    "as if someone had held it a moment ago. Behind her, Tomas called her name from the orchard. "
    '"Did you find it?" he asked, breathless. She hid the key in her sleeve and shook her head. '
    "That night the well sang, low and patient, and Mara lay awake listening to it call for the key. "
    "By morning she knew she would have to open the door beneath the village."
)


@pytest.fixture
def store(tmp_path):
    s = SQLiteStore(tmp_path / "cal.db")
    yield s
    s.close()


# --- transforms and ladders -----------------------------------------------------------------


def test_each_transform_degrades_the_text_it_is_given_reproducibly():
    rng = lambda: random.Random(7)  # noqa: E731
    shuffled = transforms.shuffle_sentences(STORY, rng())
    assert shuffled != STORY and sorted(transforms.sentences(shuffled)) == sorted(transforms.sentences(STORY))
    assert shuffled == transforms.shuffle_sentences(STORY, rng())
    swapped = transforms.swap_names(STORY, rng())
    assert "Mara" in swapped and swapped.count("Mara") < STORY.count("Mara")  # every other mention changed
    repeated = transforms.repeat_opening(STORY, rng())
    assert len(repeated.split()) > len(STORY.split()) and repeated.count("Mara found the key") == 4
    assert len(transforms.cut_to(0.5)(STORY, rng()).split()) == len(STORY.split()) // 2


def response(rid: str, prompt_index: int, text: str = STORY, model: str = "m") -> dict:
    return {
        "id": rid,
        "evaluation_id": "e",
        "model_name": model,
        "sequence": "film",
        "run": 1,
        "prompt_index": prompt_index,
        "prompt_name": f"p{prompt_index}",
        "prompt_text": f"brief {prompt_index}",
        "messages": [{"role": "user", "content": f"brief {prompt_index}"}],
        "response": text,
        "seed": 1,
        "error": None,
    }


def test_a_ladder_degrades_cumulatively_and_ends_off_topic():
    other = response("r2", 1, "A tax memo about quarterly revenue. " * 10)
    ladder = calibration.build_ladder(response("r1", 0), [other], rungs=5)
    assert [r.transform for r in ladder.rungs] == ["original", "swap_names", "shuffle", "repeat", "off_topic"]
    texts = [r.doc["response"] for r in ladder.rungs]
    assert texts[0] == STORY and len(set(texts)) == 5 and texts[-1] == other["response"]
    assert [r.doc["calibration_level"] for r in ladder.rungs] == [0, 1, 2, 3, 4]
    assert all(r.doc["prompt_text"] == "brief 0" for r in ladder.rungs)  # the same brief throughout
    assert [r.transform for r in calibration.build_ladder(response("r1", 0), [other], rungs=2).rungs] == [
        "original",
        "off_topic",
    ]
    with pytest.raises(JudgeError, match="2 to 6 rungs"):
        calibration.build_ladder(response("r1", 0), [other], rungs=9)
    with pytest.raises(JudgeError, match="two different prompts"):
        calibration.build_ladder(response("r1", 0), [response("r3", 0)], rungs=3)
    with pytest.raises(JudgeError, match="40\\+ words"):
        calibration.choose_sources([response("r4", 0, "too short")])


# --- the card's figures, by hand -----------------------------------------------------------------


def test_kendall_tau_b_by_hand():
    assert kendall_tau_b([0, 1, 2], [0, 1, 2]) == 1.0
    assert kendall_tau_b([0, 1, 2], [2, 1, 0]) == -1.0
    assert kendall_tau_b([0, 1, 2], [1, 1, 1]) is None
    # levels 0..4 (negated: better first) against scores 5,1,1,1,1: 4 concordant, 6 tied in y.
    assert kendall_tau_b([0, -1, -2, -3, -4], [5, 1, 1, 1, 1]) == pytest.approx(4 / math.sqrt(4 * 10))


def test_card_figures_match_a_hand_computation():
    # Two ladders of three rungs, two attempts. Ladder x: 4,3,2 then 4,3,1 → means 4, 3, 1.5 (ordered).
    # Ladder y: 3,3,3 then 3,3,3 → ties everywhere (not ordered, τ counted as 0).
    rows = []
    for attempt, values in ((1, (4, 3, 2)), (2, (4, 3, 1))):
        for level, v in enumerate(values):
            coherence = {0: 4, 1: 1, 2: 1}[level]  # level 1 (a shuffle) hits coherence hardest
            rows.append(
                RungScore("x", level, attempt, float(v), {"coherence": coherence, "dialogue_quality": v})
            )
    for attempt in (1, 2):
        for level in range(3):
            rows.append(RungScore("y", level, attempt, 3.0, {"coherence": 3, "dialogue_quality": 3}))
    rows.append(RungScore("y", 2, 3, None))  # a failed judgement: counted, never scored
    verdicts = [
        PairVerdict("x", 0, 1, True, "A"),  # better first, better wins
        PairVerdict("x", 0, 1, False, "A"),  # worse first, worse wins: a flip
        PairVerdict("x", 1, 2, True, "A"),
        PairVerdict("x", 1, 2, False, "B"),  # consistent: better wins both
        PairVerdict("y", 0, 1, True, "tie"),
        PairVerdict("y", 0, 1, False, None),  # failed
    ]
    card = compute_card(
        rows, verdicts, transforms={1: ("shuffle", "coherence"), 2: ("off_topic", None)}, retested=True
    )
    assert (card.ladders, card.rungs, card.attempts, card.judgements, card.failed_judgements) == (
        2,
        3,
        3,
        13,
        1,
    )
    assert card.ladder_accuracy == 0.5  # x: 2 of 2 adjacent pairs, y: 0 of 2
    assert card.kendall_tau == 0.5  # x: 1.0, y: 0 (constant)
    # Level means over both ladders: 0: (4,4,3,3) = 3.5, 1: (3,3,3,3) = 3.0, 2: (2,1,3,3) = 2.25.
    assert [r["mean"] for r in card.rung_means] == [3.5, 3.0, 2.25]
    assert card.separability == 0.0  # four values per level: the intervals overlap
    # Shuffle check: in x coherence drops 3 vs dialogue 1 (passes); in y nothing drops (fails).
    assert card.criterion_checks == [
        {"transform": "shuffle", "criterion": "coherence", "ladders": 2, "passed": 1, "share": 0.5}
    ]
    # Retest: x rung 2 differs (2 vs 1 → 0.5 from the mean), the other five rungs identical.
    assert card.retest_mean_abs_diff == pytest.approx(round(0.5 / 6, 3))
    assert card.retest_identical_share == pytest.approx(round(5 / 6, 3))
    # Pairwise: x(0,1) flipped (+1, -1 → not right); x(1,2) right both times; y(0,1) a tie only.
    assert (card.pairwise_pairs, card.pairwise_accuracy, card.position_flip_rate) == (3, round(1 / 3, 3), 0.5)
    assert card.first_position_preference == 0.75  # A won 3 of the 4 decided verdicts
    assert card.verdict == "weak"  # accuracy 0.5 ≥ 0.5 and τ 0.5 ≥ 0.2, but short of "separates"
    assert any("ordered 50% of adjacent rungs" in r for r in card.reasons)


def test_a_judge_that_gives_everything_the_same_score_cannot_order_a_ladder():
    rows = [RungScore(ladder, level, 1, 1.0) for ladder in "ab" for level in range(4)]
    card = compute_card(rows, retested=False)
    assert card.verdict == "cannot order a degraded ladder"
    assert card.ladder_accuracy == 0.0 and card.kendall_tau == 0.0 and card.separability == 0.0
    assert any("same mean score (1.00)" in r for r in card.reasons)
    assert any("not retested" in r for r in card.reasons)
    assert card.retest_mean_abs_diff is None and card.retest_identical_share is None


def test_a_judge_that_orders_every_ladder_separates():
    rows = [
        RungScore(ladder, level, attempt, 5.0 - level + 0.1 * attempt)
        for ladder in "abcd"
        for level in range(4)
        for attempt in (1, 2)
    ]
    card = compute_card(rows, retested=True)
    assert (card.ladder_accuracy, card.kendall_tau, card.separability) == (1.0, 1.0, 1.0)
    assert card.verdict == "separates"


# --- a scripted judge, end to end ------------------------------------------------------------------


class ScriptedJudge:
    """A judge by a known rule: a rubric answer scores 5 on every criterion when the candidate text is
    the original stored story, else 1; a pairwise answer always prefers text A."""

    name = "scripted"
    supports_json_schema = False
    supports_batch = False

    def __init__(self, original: str) -> None:
        self.original = original
        self.calls = 0

    def chat(self, messages, settings, on_token=None):
        self.calls += 1
        prompt = "\n".join(m["content"] for m in messages)
        if '"story"' in prompt or "one label per group" in prompt or "A+++" in prompt:
            text = json.dumps({"story": "A+", "craft": "A+", "imagery": "A+", "reason": "A reads better"})
        else:
            score = 5 if self.original in prompt else 1
            rubric = load_rubric()
            text = json.dumps({c.id: {"score": score, "justification": "by rule"} for c in rubric.criteria})
        return Completion(
            text=text, finish_reason="stop", prompt_tokens=10, completion_tokens=20, generation_time_s=0.01
        )

    def count_tokens(self, messages):
        return sum(len(m["content"]) for m in messages) // 4

    def context_size(self):
        return 1_000_000

    def close(self):
        pass


def _evaluation(store) -> str:
    config = parse_config(
        {
            "name": "cal",
            "models": [{"kind": "fake", "name": "cand", "options": {"words": 60}}],
            "sequences": ["film"],
            "generation": {"runs": 1, "max_tokens": 128},
            "judge": {"model": {"kind": "fake", "name": "fj"}},
        }
    )
    eid = jobs.enqueue(store, config, LOCAL_ADMIN)
    assert jobs.Worker(store).run_once()
    # One response becomes the story the scripted judge recognises; the others stay as the fake wrote them.
    first = store.list_responses(eid)[0]
    store.upsert_response(first | {"response": STORY})
    return eid


def test_a_scripted_judge_gets_the_card_computed_by_hand(store):
    eid = _evaluation(store)
    judge = ScriptedJudge(STORY)
    card = calibration.calibrate_judge(store, eid, backend=judge, rungs=4, attempts=2, ladders=1)
    # One ladder from the story: 5, 1, 1, 1 in both attempts.
    assert (card["ladders"], card["rungs"], card["attempts"], card["judgements"]) == (1, 4, 2, 8)
    assert card["ladder_accuracy"] == round(1 / 3, 3)  # only rung 0 > rung 1 is ordered
    tau = 3 / math.sqrt(3 * 6)  # levels 0..3 vs 5,1,1,1: 3 concordant, 3 tied in scores
    assert card["kendall_tau"] == pytest.approx(round(tau, 3))
    assert [r["mean"] for r in card["rung_means"]] == [5.0, 1.0, 1.0, 1.0]
    assert card["separability"] == round(1 / 3, 3)  # only 0 vs 1 apart (both attempts agree)
    assert card["retested"] and card["retest_identical_share"] == 1.0  # the rule ignores the order
    # Pairwise: A always wins, so every pair flips and the first position always wins.
    assert (card["pairwise_pairs"], card["pairwise_accuracy"], card["position_flip_rate"]) == (3, 0.0, 1.0)
    assert card["first_position_preference"] == 1.0
    assert card["verdict"] == "cannot order a degraded ladder"  # accuracy 1/3 is under 1/2
    assert any("first-shown text 100%" in r for r in card["reasons"])
    assert judge.calls == 8 + 6  # no retries: every answer was valid
    assert store.list_judgements(eid) == [] and store.list_verdicts(eid) == []  # rungs are not candidates


def test_calibration_is_a_job_with_progress_stop_and_a_card_filed_by_identity(store, monkeypatch):
    eid = _evaluation(store)
    job_id, _ = job_kinds.enqueue_job(store, "calibrate", eid, LOCAL_ADMIN, rungs=3, attempts=1, ladders=2)
    assert jobs.Worker(store).run_once()
    done = job_kinds.get_job(store, job_id)
    assert done["status"] == "completed", done.get("error")
    card = done["result"]
    assert card["judge"] == "fj" and card["identity"]["rubric_hash"] == load_rubric().rubric_hash
    assert done["progress"]["done"] == done["progress"]["total"] == 2 * 3 + 2 * 2
    view = calibration.card_for(store, "fj", card["identity"]["key"])
    assert view.calibrated and view.job_id == job_id and view.verdict == card["verdict"]
    assert not calibration.card_for(store, "another judge").calibrated
    assert any(name.startswith("Ladder accuracy") for name, _ in calibration.card_lines(view))
    # Stop: a queued calibration stops at once; a running one stops at its next check (no partial card).
    second, _ = job_kinds.enqueue_job(store, "calibrate", eid, LOCAL_ADMIN, rungs=3, attempts=1)
    assert job_kinds.request_stop_job(store, second, LOCAL_ADMIN) == "stopped"
    assert not jobs.Worker(store).run_once()
    assert job_kinds.get_job(store, second).get("result") is None


def test_the_built_in_judges_limits_are_stated_and_an_ensemble_weights_by_reliability(store):
    import pandas as pd

    from storybench_core.views import reliability

    bundled = parse_config(
        {"models": [{"kind": "bundled"}], "sequences": ["film"], "judge": {"model": {"kind": "bundled"}}}
    )
    assert reliability.small_judge_note(bundled) == reliability.SMALL_JUDGE_NOTE
    api = parse_config(
        {
            "models": [{"kind": "bundled"}],
            "sequences": ["film"],
            "judge": {
                "model": {"kind": "api", "base_url": "https://api.openai.com/v1", "api_model": "gpt-4o-mini"}
            },
        }
    )
    assert reliability.small_judge_note(api) is None
    # Two judges: "good" ordered its ladders (τ 1), "flat" could not (τ 0, weight 0); "new" is uncalibrated.
    for name, tau, verdict in (("good", 1.0, "separates"), ("flat", 0.0, "cannot order a degraded ladder")):
        job = store.create_job({"kind": "calibrate", "evaluation_id": "e", "status": "completed"})
        store.update_job(
            job, {"result": {"judge": name, "kendall_tau": tau, "verdict": verdict, "reasons": []}}
        )
    cards = reliability.judge_cards(store, ["good", "flat", "new"])
    assert [(c.flag, c.weight) for c in cards] == [("trusted", 1.0), ("failed", 0.0), ("uncalibrated", 0.5)]
    board = pd.DataFrame(
        [
            ("good", "m1", 4.0), ("good", "m2", 2.0),
            ("flat", "m1", 1.0), ("flat", "m2", 5.0),
            ("new", "m1", 3.0), ("new", "m2", 3.0),
        ],
        columns=["judge_model", "model_name", "mean"],
    )  # fmt: skip
    ranked, weights = reliability.ensemble(board, cards)
    # m1: (4·1 + 1·0 + 3·0.5) / 1.5 = 3.667; m2: (2·1 + 5·0 + 3·0.5) / 1.5 = 2.333.
    assert list(ranked["model_name"]) == ["m1", "m2"]
    assert ranked["ensemble_mean"].round(3).tolist() == [3.667, 2.333]
    assert weights.set_index("judge")["weight"].to_dict() == {"good": 1.0, "flat": 0.0, "new": 0.5}


def test_self_family_preference_and_vote_agreement_by_hand(store):
    from types import SimpleNamespace

    from storybench_core.calibration import run as cal_run
    from storybench_core.config import ModelSpec

    def judgement(rid: str, model: str, overall: float) -> dict:
        return {"response_id": rid, "evaluation_id": "e", "judge_model": "gemma-judge", "rubric_hash": "h",
                "attempt": 1, "overall": overall, "model_name": model, "scores": {}}  # fmt: skip

    for rid, model, overall in (("r1", "gemma-judge", 4.0), ("r2", "gemma-small", 3.0), ("r3", "qwen-x", 2.0),
                                ("r4", "qwen-x", 1.0)):  # fmt: skip
        store.add_judgement(judgement(rid, model, overall))
    # Own 4.0 vs others (3, 2, 1) → 4 − 2 = 2; family (gemma-small 3.0) vs others (qwen 2, 1) → 3 − 1.5 = 1.5.
    assert cal_run.self_preference(store, "e", "gemma-judge") == 2.0
    config = SimpleNamespace(
        models=[ModelSpec(kind="fake", name=n) for n in ("gemma-judge", "gemma-small", "qwen-x")]
    )
    judge_spec = ModelSpec(kind="fake", name="gemma-judge")
    assert cal_run.family_preference(store, "e", "gemma-judge", judge_spec, config) == 1.5
    # Votes: r2 over r3 (judge agrees: 3 > 2), r4 over r3 (disagrees: 1 < 2), a tie (not decided).
    for n, (a, b, choice) in enumerate((("r2", "r3", "A"), ("r3", "r4", "B"), ("r1", "r2", "tie"))):
        store.add_vote({"evaluation_id": "e", "voter": f"v{n}", "pair_key": f"p{n}", "choice": choice,
                        "response_a": a, "response_b": b})  # fmt: skip
    assert cal_run.vote_agreement(store, "e", "gemma-judge") == (0.5, 2)
