"""Ladders: a stored response and versions of it degraded step by step, in a known order."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import JudgeError
from ..store.base import Doc
from .transforms import OFF_TOPIC, TRANSFORMS, Transform

MIN_WORDS = 40  # shorter responses cannot be degraded in steps a judge could see
DEFAULT_RUNGS = 5
DEFAULT_LADDERS = 6
MAX_RUNGS = len(TRANSFORMS) + 1


@dataclass(frozen=True)
class Rung:
    """One text of a ladder; `level` 0 is the original, higher is worse."""

    level: int
    transform: str  # the transform that made it from the rung above ("original" for level 0)
    doc: Doc  # a response-shaped document: the original's brief and history, this text


@dataclass(frozen=True)
class Ladder:
    source_id: str
    rungs: tuple[Rung, ...]


def _seed(response_id: str) -> int:
    return int.from_bytes(hashlib.sha256(response_id.encode()).digest()[:4], "big")


def _rung_doc(source: Doc, level: int, text: str) -> Doc:
    doc = dict(source)
    doc["id"] = f"cal-{source['id']}-{level}"
    doc["response"] = text
    doc["calibration_level"] = level
    doc["calibration_ladder"] = str(source["id"])
    return doc


def build_ladder(source: Doc, others: Sequence[Doc], rungs: int = DEFAULT_RUNGS) -> Ladder:
    """The original and rungs-1 cumulative degradations (TRANSFORMS in severity order)."""
    if not 2 <= rungs <= MAX_RUNGS:
        raise JudgeError(f"a ladder has 2 to {MAX_RUNGS} rungs, not {rungs}")
    rng = random.Random(_seed(str(source["id"])))
    # Every ladder ends off-topic, the clearest bottom rung there is; the others degrade in between.
    degrade = [t for t in TRANSFORMS if t.id != OFF_TOPIC]
    steps: list[Transform] = [*degrade[: rungs - 2], next(t for t in TRANSFORMS if t.id == OFF_TOPIC)]
    text = str(source.get("response") or "")
    made = [Rung(0, "original", _rung_doc(source, 0, text))]
    for level, step in enumerate(steps, start=1):
        if step.id == OFF_TOPIC:
            other = _other_brief(source, others, rng)
            text = str(other.get("response") or "")
        else:
            text = step.apply(text, rng)
        made.append(Rung(level, step.id, _rung_doc(source, level, text)))
    return Ladder(str(source["id"]), tuple(made))


def _other_brief(source: Doc, others: Sequence[Doc], rng: random.Random) -> Doc:
    brief = source.get("prompt_text")
    candidates = [d for d in others if d.get("prompt_text") != brief and d.get("response")]
    if not candidates:
        raise JudgeError(
            "calibration needs responses to at least two different prompts (an off-topic rung answers another "
            "brief); run more than one prompt or sequence first"
        )
    return candidates[rng.randrange(len(candidates))]


def choose_sources(responses: Sequence[Doc], ladders: int = DEFAULT_LADDERS) -> list[Doc]:
    """Up to `ladders` successful, long-enough responses spread over models and prompts (deterministic)."""
    usable = [
        r for r in responses if not r.get("error") and len(str(r.get("response") or "").split()) >= MIN_WORDS
    ]
    if not usable:
        raise JudgeError(
            f"no stored response has {MIN_WORDS}+ words to build a calibration ladder from; run the evaluation "
            "with a larger max_tokens first"
        )
    usable.sort(
        key=lambda r: (
            r.get("prompt_index") or 0,
            r.get("sequence") or "",
            r.get("model_name") or "",
            r["id"],
        )
    )
    chosen: list[Doc] = []
    seen: set[tuple[object, object]] = set()
    for r in usable:  # first pass: one per (model, prompt) so the ladders differ
        key = (r.get("model_name"), (r.get("sequence"), r.get("prompt_index")))
        if key not in seen:
            seen.add(key)
            chosen.append(r)
    for r in usable:
        if len(chosen) >= ladders:
            break
        if r not in chosen:
            chosen.append(r)
    return chosen[:ladders]
