"""Calibrate a judge on the user's own stored responses: ladders, rubric and pairwise mode, a card.

The judge scores every rung of every ladder `attempts` times in the rubric mode; attempts differ
(a temperature above 0 gives each its own seed; at temperature 0 each attempt after the first
lists the rubric's criteria in another order), or the card says the judge was not retested. In
pairwise mode it compares adjacent rungs in both orders. Nothing is written to the evaluation's
judgements or verdicts (a ladder's rungs are not candidates); the card is the job's result, filed
under the judge's identity (cards.py) so every evaluation that judge scores shows it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from .. import catalog
from ..backends.base import ModelBackend
from ..catalog import Rubric
from ..config import GenerationSettingsConfig, JudgeConfig, ModelSpec
from ..errors import JudgeError, StopRequested
from ..jobqueue import evaluation_config, get_evaluation
from ..judge import judge_in_chunks, judge_width
from ..pairwise.judging import judge_pair_orders
from ..pairwise.pairs import DEFAULT_GROUPS, MARGIN, ORDERS, Pair
from ..runner import ModelPool
from ..stopping import stop_check
from ..store.base import Doc, Store
from .cards import judge_identity
from .ladder import DEFAULT_LADDERS, DEFAULT_RUNGS, Ladder, build_ladder, choose_sources
from .metrics import Card, PairVerdict, RungScore, compute_card
from .transforms import OFF_TOPIC, TRANSFORMS

EventFn = Callable[..., None]
ProgressFn = Callable[[dict[str, Any]], None]
DEFAULT_ATTEMPTS = 2
MODES = ("rubric", "pairwise")


def permuted_rubric(rubric: Rubric, attempt: int) -> Rubric:
    """The rubric with its criteria in another (reproducible) order for attempts after the first."""
    if attempt <= 1 or len(rubric.criteria) < 2:
        return rubric
    criteria = list(rubric.criteria)
    random.Random(attempt).shuffle(criteria)
    if criteria == list(rubric.criteria):
        criteria = criteria[1:] + criteria[:1]
    return rubric.model_copy(update={"criteria": tuple(criteria)})


def ladder_transforms(ladder: Ladder) -> dict[int, tuple[str, str | None]]:
    hits = {t.id: t.hits for t in TRANSFORMS}
    return {r.level: (r.transform, hits.get(r.transform)) for r in ladder.rungs if r.level}


def _winner(verdict: Doc) -> str | None:
    if verdict.get("error") or not isinstance(verdict.get("groups"), dict):
        return None
    margin = sum(MARGIN.get(str(label), 0) for label in verdict["groups"].values())
    return "A" if margin > 0 else "B" if margin < 0 else "tie"


def self_preference(store: Store, evaluation_id: str, judge_name: str) -> float | None:
    """Mean score this judge gave responses of a candidate with its own name minus what it gave the others."""
    judgements = [
        j
        for j in store.list_judgements(evaluation_id, judge_model=judge_name)
        if j.get("overall") is not None
    ]
    own = [j["overall"] for j in judgements if j.get("model_name") == judge_name]
    others = [j["overall"] for j in judgements if j.get("model_name") != judge_name]
    if not own or not others:
        return None
    return sum(own) / len(own) - sum(others) / len(others)


def family_preference(
    store: Store, evaluation_id: str, judge_name: str, judge: ModelSpec | None, config: Any
) -> float | None:
    """Mean score this judge gave candidates of its own model family (not itself) minus the others."""
    if judge is None:
        return None
    from ..pairwise.family import model_family

    family, _how = model_family(judge)
    if family is None:
        return None
    kin = {
        m.display_name for m in config.models if m.display_name != judge_name and model_family(m)[0] == family
    }
    if not kin:
        return None
    judgements = [
        j
        for j in store.list_judgements(evaluation_id, judge_model=judge_name)
        if j.get("overall") is not None
    ]
    mine = [j["overall"] for j in judgements if j.get("model_name") in kin]
    others = [
        j["overall"]
        for j in judgements
        if j.get("model_name") not in kin and j.get("model_name") != judge_name
    ]
    if not mine or not others:
        return None
    return sum(mine) / len(mine) - sum(others) / len(others)


def vote_agreement(store: Store, evaluation_id: str, judge_name: str) -> tuple[float, int] | None:
    """Share of the team's decided blind votes whose winner this judge also scored higher."""
    overall: dict[str, list[float]] = {}
    for j in store.list_judgements(evaluation_id, judge_model=judge_name):
        if j.get("overall") is not None:
            overall.setdefault(j["response_id"], []).append(float(j["overall"]))
    agree = total = 0
    for vote in store.list_votes(evaluation_id):
        if vote.get("choice") not in ("A", "B"):
            continue
        a, b = overall.get(str(vote.get("response_a"))), overall.get(str(vote.get("response_b")))
        if not a or not b:
            continue
        score_a, score_b = sum(a) / len(a), sum(b) / len(b)
        if score_a == score_b:
            total += 1
            continue
        total += 1
        agree += int((score_a > score_b) == (vote["choice"] == "A"))
    return (agree / total, total) if total else None


def calibrate_judge(
    store: Store,
    evaluation_id: str,
    judge_spec: ModelSpec | None = None,
    pool: ModelPool | None = None,
    *,
    rungs: int = DEFAULT_RUNGS,
    attempts: int = DEFAULT_ATTEMPTS,
    ladders: int = DEFAULT_LADDERS,
    modes: Sequence[str] = MODES,
    event: EventFn | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    backend: ModelBackend | None = None,
) -> dict[str, Any]:
    """Build ladders from the evaluation's responses, have the judge score them, return the card dict.

    `backend` (tests: a scripted judge) is used as the judge instead of loading judge_spec.
    Raises StopRequested when stopped: a partial card would mislead.
    """
    if not 1 <= attempts <= 10:
        raise JudgeError(f"--attempts {attempts} is out of range 1–10")
    unknown = set(modes) - set(MODES)
    if unknown or not modes:
        raise JudgeError(
            f"calibration modes are {', '.join(MODES)}, not {', '.join(sorted(unknown)) or 'none'}"
        )
    evaluation = get_evaluation(store, evaluation_id)
    config = evaluation_config(evaluation)
    cfg: JudgeConfig = config.judge
    spec = judge_spec or next(iter(cfg.judges()), None)
    if spec is None and backend is None:
        raise JudgeError(
            f"evaluation {evaluation_id} has no judge configured; choose one (e.g. --judge bundled)"
        )
    generation: GenerationSettingsConfig = config.generation
    emit = event or (lambda level, message, **f: store.append_event(evaluation_id, level, message, **f))
    stop = should_stop or (lambda: False)
    rubric = catalog.load_rubric()
    responses = [r for r in store.list_responses(evaluation_id) if not r.get("error")]
    sources = choose_sources(responses, ladders)
    built = [build_ladder(source, responses, rungs) for source in sources]
    retested = attempts > 1  # at temperature 0 the criteria order differs per attempt
    own_pool = pool is None and backend is None
    pool = pool or ModelPool()
    name = spec.display_name if spec is not None else str(getattr(backend, "name", "scripted judge"))
    rubric_work = len(built) * rungs * attempts if "rubric" in modes else 0
    pair_work = len(built) * (rungs - 1) if "pairwise" in modes else 0
    total = rubric_work + pair_work
    done = 0

    def report() -> None:
        if progress is not None:
            progress({"judge_model": name, "done": done, "total": total, "phase": "calibration"})

    try:
        if backend is None:
            assert spec is not None
            emit("info", f"calibrating judge {name}: loading")
            with stop_check(stop):
                backend, _fresh = pool.get(spec, generation)
        identity = judge_identity(spec, backend, rubric)
        emit(
            "info",
            f"calibrating judge {name}: {len(built)} ladder(s) of {rungs} rungs, {attempts} attempt(s), "
            f"modes {', '.join(modes)}",
        )
        report()
        scores: list[RungScore] = []
        if "rubric" in modes:
            width, _why = judge_width(backend, generation, len(built) * rungs)
            for attempt in range(1, attempts + 1):
                asked = permuted_rubric(rubric, attempt) if cfg.temperature == 0 else rubric
                todo = [(rung.doc, attempt) for ladder in built for rung in ladder.rungs]
                for _i, rung_doc, judgement in judge_in_chunks(backend, name, todo, asked, cfg, width, stop):
                    scores.append(
                        RungScore(
                            ladder=str(rung_doc["calibration_ladder"]),
                            level=int(rung_doc["calibration_level"]),
                            attempt=attempt,
                            overall=judgement.get("overall"),
                            scores={k: float(v["score"]) for k, v in (judgement.get("scores") or {}).items()},
                        )
                    )
                    done += 1
                    report()
                if stop():
                    raise StopRequested()
        verdicts: list[PairVerdict] = []
        if "pairwise" in modes:
            for ladder in built:
                docs = {r.doc["id"]: r.doc for r in ladder.rungs}
                for upper, lower in zip(ladder.rungs, ladder.rungs[1:], strict=False):
                    if stop():
                        raise StopRequested()
                    pair = Pair(
                        pair_key=f"cal-{upper.doc['id']}-{lower.level}",
                        scope=evaluation_id,
                        sequence=str(upper.doc.get("sequence") or ""),
                        run=int(upper.doc.get("run") or 0),
                        prompt_index=int(upper.doc.get("prompt_index") or 0),
                        model_1=f"rung {upper.level}",
                        model_2=f"rung {lower.level}",
                        response_1=upper.doc["id"],
                        response_2=lower.doc["id"],
                    )
                    for verdict in judge_pair_orders(
                        backend, name, pair, ORDERS, docs, groups=DEFAULT_GROUPS
                    ):
                        verdicts.append(
                            PairVerdict(
                                ladder=ladder.source_id,
                                better=upper.level,
                                worse=lower.level,
                                better_shown_first=verdict.get("order") == "12",
                                winner=_winner(verdict),
                            )
                        )
                    done += 1
                    report()
        transforms = ladder_transforms(built[0]) if built else {}
        card: Card = compute_card(
            scores,
            verdicts,
            transforms=transforms,
            retested=retested,
            self_preference=self_preference(store, evaluation_id, name),
            family_preference=family_preference(store, evaluation_id, name, spec, config),
            vote_agreement=vote_agreement(store, evaluation_id, name),
        )
        result = card.to_dict() | {
            "judge": name,
            "identity": identity,
            "evaluation_id": evaluation_id,
            "rubric_hash": rubric.rubric_hash,
            "modes": list(modes),
            "temperature": cfg.temperature,
            "transforms": [
                {"level": k, "transform": t, "hits": h} for k, (t, h) in sorted(transforms.items())
            ],
            "off_topic_rung": next((k for k, (t, _h) in transforms.items() if t == OFF_TOPIC), None),
        }
        emit(
            "info" if card.verdict == "separates" else "warning",
            f"judge {name} calibrated: {card.verdict} (ladder accuracy {_pct(card.ladder_accuracy)}, "
            f"τ {card.kendall_tau if card.kendall_tau is not None else '–'})",
        )
        return result
    finally:
        if own_pool:
            pool.release()


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"
