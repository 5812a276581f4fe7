"""The rubric judge's question and answer: JSON schema, prompt, parsing and validation.

The prompt shows the rubric with every anchor, the brief, the conversation so far (clipped fairly)
and the response between per-call markers (prompt_fence.py), and asks for one JSON object: for
every criterion an integer score and a short justification. Parsing accepts the object in prose
or code fences; validation names what is wrong, so a retry can say it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .backends.base import Message, ModelBackend
from .catalog import Rubric
from .errors import JudgeError
from .prompt_fence import Fence
from .store.base import Doc

HISTORY_CHARS = 6000  # first budget for earlier turns in the judge prompt


# --- schema and prompt ---------------------------------------------------------------


def justification_max_chars(n_criteria: int, max_tokens: int) -> int:
    """A length cap for each justification so that a full answer fits in max_tokens.

    About 20 tokens per criterion go to keys, score and punctuation; the rest is
    shared by the justifications at a conservative 3 characters per token.
    """
    per_criterion = max_tokens / max(n_criteria, 1) - 20
    return int(min(400, max(40, per_criterion * 3)))


def rubric_schema(rubric: Rubric, justification_chars: int | None = None) -> dict[str, Any]:
    """The JSON schema of a judge answer: every criterion → {score: int in scale, justification}."""
    justification: dict[str, Any] = {"type": "string", "minLength": 1}
    if justification_chars is not None:
        justification["maxLength"] = justification_chars
    item = {
        "type": "object",
        "properties": {
            # The enum, not just minimum/maximum: llama-cpp-python's schema-to-grammar converter
            # ignores integer bounds, so only an enum keeps a local judge inside the scale.
            "score": {
                "type": "integer",
                "minimum": rubric.scale_min,
                "maximum": rubric.scale_max,
                "enum": list(range(rubric.scale_min, rubric.scale_max + 1)),
            },
            "justification": justification,
        },
        "required": ["score", "justification"],
        "additionalProperties": False,
    }
    ids = list(rubric.criterion_ids)
    return {
        "type": "object",
        "properties": {cid: item for cid in ids},
        "required": ids,
        "additionalProperties": False,
    }


def _clip_middle(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    if limit < 40:
        return text[: max(limit, 0)]
    marker = " […] "
    head = (limit - len(marker)) * 2 // 3
    tail = limit - len(marker) - head
    return text[:head] + marker + text[-tail:]


def fair_clip(texts: Sequence[str], budget_chars: int) -> list[str]:
    """Clip texts to a shared character budget: short ones stay whole, long ones share what is left."""
    out = list(texts)
    remaining, left = budget_chars, len(out)
    for i in sorted(range(len(out)), key=lambda i: len(out[i])):
        share = remaining // left if left else 0
        out[i] = _clip_middle(out[i], share)
        remaining -= len(out[i])
        left -= 1
    return out


def earlier_turns(response_doc: Doc) -> list[Message]:
    """The user/assistant turns sent before this response's own prompt (system prompt left out)."""
    messages = [m for m in (response_doc.get("messages") or []) if m.get("role") != "system"]
    if messages and messages[-1].get("role") == "user":
        messages = messages[:-1]
    return messages


SYSTEM_PROMPT = (
    "You are an exacting fiction editor who grades writing against a rubric. You grade only the text "
    "you are shown, you apply the anchors literally and consistently, and you answer with JSON only."
)


def judge_messages(rubric: Rubric, response_doc: Doc, history_chars: int = HISTORY_CHARS) -> list[Message]:
    """The judge conversation for one response: rubric, brief, earlier turns (clipped), the response."""
    turns = earlier_turns(response_doc)
    if turns:
        clipped = fair_clip([m.get("content", "") for m in turns], history_chars)
        lines = []
        for n, (m, text) in enumerate(zip(turns, clipped, strict=True)):
            who = "Brief" if m.get("role") == "user" else "Writer"
            lines.append(f"[turn {n // 2 + 1}] {who}:\n{text}")
        history = "\n\n".join(lines)
    else:
        history = "None: this is the first brief of the conversation."
    if response_doc.get("dropped_turns"):
        history += f"\n(The {response_doc['dropped_turns']} oldest turn(s) did not fit the writer's context.)"
    ids = list(rubric.criterion_ids)
    brief = str(response_doc.get("prompt_text") or "")
    response = str(response_doc.get("response") or "")
    fence = Fence([history, brief, response])  # a fresh tag per call (prompt_fence.py)
    user = "\n".join(
        [
            "Grade the RESPONSE at the end against the rubric.",
            fence.notice(),
            "",
            "=== RUBRIC ===",
            rubric.text().rstrip(),
            "",
            "Earlier turns, for context only (do not grade them):",
            fence.block("EARLIER TURNS", history),
            "",
            "The brief the writer answered:",
            fence.block("BRIEF", brief),
            "",
            "The response to grade:",
            fence.block("RESPONSE", response),
            "",
            "Answer with a single JSON object and nothing else. It has exactly these keys, one per "
            f'criterion: {", ".join(ids)}. Each value is an object with "score", a whole number from '
            f'{rubric.scale_min} to {rubric.scale_max} chosen by the anchors, and "justification", one or two '
            "short sentences that point at the text. Score each criterion on its own; a response that is "
            "empty, cut off or ignores the brief scores low. Do not add an overall score.",
        ]
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def fit_judge_messages(
    backend: ModelBackend, rubric: Rubric, response_doc: Doc, max_tokens: int
) -> list[Message]:
    """Judge messages that fit the backend's context, shrinking the earlier turns first."""
    budget = backend.context_size() - max_tokens
    history = HISTORY_CHARS
    while True:
        messages = judge_messages(rubric, response_doc, history)
        needed = backend.count_tokens(messages)
        if needed <= budget:
            return messages
        if history == 0 or not earlier_turns(response_doc):
            raise JudgeError(
                f"the judge prompt needs {needed} tokens but the judge's context leaves {budget} "
                f"(n_ctx {backend.context_size()} minus judge.max_tokens {max_tokens}); "
                "raise generation.n_ctx or lower judge.max_tokens"
            )
        history = history // 2 if history > 200 else 0


# --- parsing and validation --------------------------------------------------------------


def extract_json_object(text: str) -> dict[str, Any]:
    """The one JSON object in text: the whole text, or exactly one object inside prose / code fences."""
    stripped = text.strip()
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError:
        pass
    else:
        if isinstance(value, dict):
            return value
        raise JudgeError(f"expected a JSON object, got a JSON {type(value).__name__}")
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    pos = stripped.find("{")
    while pos >= 0:
        try:
            value, end = decoder.raw_decode(stripped, pos)
        except json.JSONDecodeError:
            pos = stripped.find("{", pos + 1)
            continue
        if isinstance(value, dict):
            found.append(value)
        pos = stripped.find("{", end)
    if len(found) == 1:
        return found[0]
    if not found:
        hint = " (it looks cut off: raise judge.max_tokens)" if stripped.startswith("{") else ""
        raise JudgeError(f"no complete JSON object in the judge output{hint}")
    raise JudgeError(f"found {len(found)} JSON objects in the judge output; expected exactly one")


def validate_scores(data: dict[str, Any], rubric: Rubric) -> dict[str, dict[str, Any]]:
    """Check every criterion has an integer score in range and a justification; return the clean scores."""
    problems: list[str] = []
    scores: dict[str, dict[str, Any]] = {}
    lo, hi = rubric.scale_min, rubric.scale_max
    for cid in rubric.criterion_ids:
        item = data.get(cid)
        if item is None:
            problems.append(f"criterion '{cid}' is missing")
            continue
        if not isinstance(item, dict):
            problems.append(f"'{cid}' must be an object with score and justification")
            continue
        before = len(problems)
        score = item.get("score")
        if isinstance(score, float) and score.is_integer():
            score = int(score)
        if isinstance(score, bool) or not isinstance(score, int):
            problems.append(f"'{cid}.score' = {score!r} is not a whole number")
        elif not lo <= score <= hi:
            problems.append(f"'{cid}.score' = {score} is out of range {lo}–{hi}")
        why = item.get("justification")
        if not isinstance(why, str) or not why.strip():
            problems.append(f"'{cid}.justification' is missing or empty")
        if len(problems) == before:
            scores[cid] = {"score": score, "justification": str(why).strip()}
    if problems:
        raise JudgeError("; ".join(problems))
    return scores


def parse_judgement(text: str, rubric: Rubric) -> dict[str, dict[str, Any]]:
    """Extract and validate a judge answer; raises JudgeError saying what is wrong."""
    return validate_scores(extract_json_object(text), rubric)


def overall_score(scores: dict[str, dict[str, Any]]) -> float:
    """The overall score: the plain mean of the criterion scores."""
    values = [item["score"] for item in scores.values()]
    return round(sum(values) / len(values), 4)
