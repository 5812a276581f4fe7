"""The judge's prompt for one order of a pair, its schema, and parsing its answer."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ..backends.base import Message
from ..errors import JudgeError
from ..judge import extract_json_object
from ..prompt_fence import Fence
from ..store.base import Doc
from .pairs import LABELS, REASON_MAX_CHARS, CriterionGroup

# --- prompt ----------------------------------------------------------------------------------


def clip_text(text: str, limit: int) -> str:
    """At most `limit` characters: the opening and the ending kept, the middle marked as cut."""
    if len(text) <= limit:
        return text
    marker = " […] "
    if limit <= len(marker) + 20:
        return text[:limit]
    head = (limit - len(marker)) * 2 // 3
    tail = limit - len(marker) - head
    return text[:head].rstrip() + marker + text[-tail:].lstrip()


def earlier_briefs(response_doc: Doc) -> list[str]:
    """The user prompts sent before this response's own brief (shared by every model's conversation)."""
    users = [m.get("content", "") for m in response_doc.get("messages") or [] if m.get("role") == "user"]
    return users[:-1]


def verdict_schema(groups: Sequence[CriterionGroup]) -> dict[str, Any]:
    """JSON schema of an answer: one label per group (an enum) and a short reason."""
    props: dict[str, Any] = {g.id: {"type": "string", "enum": list(LABELS)} for g in groups}
    props["reason"] = {"type": "string", "minLength": 1, "maxLength": REASON_MAX_CHARS}
    return {
        "type": "object",
        "properties": props,
        "required": [*(g.id for g in groups), "reason"],
        "additionalProperties": False,
    }


SYSTEM_PROMPT = (
    "You compare two pieces of fiction written for the same brief. You weigh only the writing shown, "
    "never its length or which text comes first, and you reply with JSON only."
)


def pair_messages(
    brief: str,
    briefs_before: Sequence[str],
    text_a: str,
    text_b: str,
    groups: Sequence[CriterionGroup],
    budget_chars: int,
) -> list[Message]:
    """The judge conversation for one order of one pair; both texts clipped to budget_chars."""
    before = "\n".join(f"[turn {i + 1}] {clip_text(b, 600)}" for i, b in enumerate(briefs_before))
    group_lines = "\n".join(f'- "{g.id}": {g.description}' for g in groups)
    shape = ", ".join(f'"{g.id}": "<label>"' for g in groups)
    a, b = clip_text(text_a, budget_chars), clip_text(text_b, budget_chars)
    fence = Fence([before, brief, a, b])  # a fresh tag per call (prompt_fence.py)
    user = "\n".join(
        [
            "Two writers answered the same brief. For each group of criteria below, say which text is better.",
            fence.notice(),
            "",
            "Earlier briefs, for context only (each writer also saw its own earlier answers):",
            fence.block("EARLIER BRIEFS", before or "None: this is the first brief."),
            "",
            fence.block("BRIEF", brief),
            "",
            fence.block("TEXT A", a),
            "",
            fence.block("TEXT B", b),
            "",
            "Groups of criteria:",
            group_lines,
            "",
            'Labels: "A+++" A is far better, "A++" A is clearly better, "A+" A is slightly better, "tie" no real '
            'difference, "B+" B is slightly better, "B++" B is clearly better, "B+++" B is far better.',
            f"Texts longer than {budget_chars} characters were cut in the middle (marked […]); a longer text "
            "is not a better one, and the order of the texts means nothing.",
            f'Reply with one JSON object: {{{shape}, "reason": "<one short sentence>"}}',
        ]
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


# --- parsing ---------------------------------------------------------------------------------


_LABEL_RE = re.compile(r"^(?:([AB])\s*(\+{1,3})|(tie))$", re.IGNORECASE)


def normalize_label(value: Any) -> str | None:
    """'a++' → 'A++', 'TIE' → 'tie'; None when it is not one of the seven labels."""
    if not isinstance(value, str):
        return None
    m = _LABEL_RE.match(value.strip())
    if not m:
        return None
    return "tie" if m.group(3) else m.group(1).upper() + m.group(2)


def parse_verdict(text: str, groups: Sequence[CriterionGroup]) -> tuple[dict[str, str], str]:
    """(label per group, reason) from a judge answer; JudgeError saying what is wrong."""
    data = extract_json_object(text)  # the rubric judge's extractor: whole text, prose or code fences
    labels: dict[str, str] = {}
    problems = []
    for g in groups:
        label = normalize_label(data.get(g.id))
        if label is None:
            got = data.get(g.id)
            problems.append(
                f"'{g.id}' = {got!r} is not one of {', '.join(LABELS)}" if got else f"'{g.id}' is missing"
            )
        else:
            labels[g.id] = label
    if problems:
        raise JudgeError("; ".join(problems))
    reason = data.get("reason")
    return labels, str(reason).strip()[:REASON_MAX_CHARS] if isinstance(reason, str) else ""
