"""Typed records: one pydantic model per stored document kind, and the `Literal` status sets.

The stores keep and return plain dicts (store/base.py, `Doc`); these models say what each
document holds, so a producer, a test or a write boundary can check one with
`validate_document(collection, doc)`. Documents may carry more fields than listed here
(`extra="allow"`): the stores round-trip unknown fields, and new ones are added over time.

| collection    | record            | unique key                                      |
|---------------|-------------------|-------------------------------------------------|
| `evaluations` | EvaluationRecord  | id                                              |
| `jobs`        | JobRecord         | id                                              |
| `responses`   | ResponseRecord    | task_key                                        |
| `judgements`  | JudgementRecord   | (response_id, judge_model, rubric_hash, attempt)|
| `events`      | EventRecord       | (evaluation_id, seq)                            |
| `verdicts`    | VerdictRecord     | verdict_key                                     |
| `votes`       | VoteRecord        | (voter, pair_key)                               |
| `audit`       | AuditRecord       | id                                              |

One naming wrinkle, kept for the stored data's sake: the model that judged is `judge_model` in a
judgement but `judge` in a verdict (a column and index of both stores, and the `judge=` filter
of `Store.list_verdicts`). They mean the same thing: the judge's display name.
`VerdictRecord.judge_model` reads a verdict's `judge` under the judgement's name.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from .access import Action, Role, Source

# The lifecycle of an evaluation (jobs.py moves it; store/base.py's EVALUATION_STATUSES and
# ACTIVE_STATUSES are these, as tuples).
EvaluationStatus = Literal["queued", "running", "stopping", "stopped", "completed", "failed"]
# The statuses in which a worker has (or is about to have) the evaluation in hand.
ActiveStatus = Literal["queued", "running", "stopping"]
# Work other than runs, queued and claimed like evaluations, with the same statuses.
JobKind = Literal["judge", "pairwise", "calibrate"]

EventLevel = Literal["info", "warning", "error"]
# How a judge was asked for JSON: a schema the backend enforces, JSON mode, or the prompt alone
# ("none": an API endpoint refused both; "prompt-only": the backend cannot constrain at all).
StructuredOutput = Literal["json_schema", "json_object", "none", "prompt-only"]
# Which model a pairwise verdict showed first: "12" model 1 as A, "21" model 2 as A (pairwise/pairs.py).
VerdictOrder = Literal["12", "21"]
VoteChoice = Literal["A", "B", "tie"]


class Record(BaseModel):
    """A stored document: the documented fields typed, any others kept as they are."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)


class EvaluationRecord(Record):
    """One evaluation: its config, status and counters (brief reads leave `config` out)."""

    id: str
    name: str | None = None
    config: dict[str, Any] | None = None
    config_hash: str | None = None
    status: EvaluationStatus
    created_at: AwareDatetime
    started_at: AwareDatetime | None = None
    finished_at: AwareDatetime | None = None
    total_tasks: int | None = None
    completed_tasks: int | None = None
    failed_tasks: int | None = None
    worker_id: str | None = None
    heartbeat_at: AwareDatetime | None = None
    error: str | None = None
    archived_at: AwareDatetime | None = None
    lease: int | None = None
    queued_by: str | None = None
    progress: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None


class JobRecord(Record):
    """One queued job of an evaluation other than its run (judging, pairwise comparison)."""

    id: str
    kind: JobKind
    evaluation_id: str
    label: str | None = None
    params: dict[str, Any] | None = None
    status: EvaluationStatus
    created_at: AwareDatetime
    started_at: AwareDatetime | None = None
    finished_at: AwareDatetime | None = None
    worker_id: str | None = None
    heartbeat_at: AwareDatetime | None = None
    lease: int | None = None
    error: str | None = None
    queued_by: str | None = None


class ChatMessage(Record):
    role: Literal["system", "user", "assistant"]
    content: str


class ResponseRecord(Record):
    """One model's answer to one prompt of one run (a failure is stored with `error` set)."""

    id: str
    evaluation_id: str
    task_key: str
    model_name: str
    model_ref: dict[str, Any] | None = None
    sequence: str
    run: int = Field(ge=1)
    prompt_index: int = Field(ge=0)
    prompt_name: str | None = None
    prompt_text: str | None = None
    messages: list[ChatMessage] | None = None  # None when read with include_messages=False
    response: str | None = None
    # "stop" | "length" | "error" from local models; an API endpoint may name others.
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    generation_time_s: float | None = None
    tokens_per_s: float | None = None
    seed: int | None = None
    created_at: AwareDatetime
    error: str | None = None
    temperature: float | None = None
    prompt_tokens_evaluated: int | None = None
    first_token_s: float | None = None
    dropped_turns: int | None = None
    template: str | None = None
    engine: dict[str, Any] | None = None
    prompt_cache: dict[str, Any] | None = None
    words: int | None = None


class CriterionScore(Record):
    score: int
    justification: str


class JudgementRecord(Record):
    """One judge's scores for one response and attempt; a failed one has no scores and an error."""

    id: str
    response_id: str
    evaluation_id: str | None = None
    judge_model: str
    rubric_hash: str
    attempt: int = Field(ge=1)
    scores: dict[str, CriterionScore] | None = None
    overall: float | None = None  # None (or NaN) when the judgement failed
    raw_output: str | None = None
    created_at: AwareDatetime
    error: str | None = None
    model_name: str | None = None
    structured_output: StructuredOutput | None = None
    retries: int | None = None
    temperature: float | None = None
    seed: int | None = None
    finish_reason: str | None = None
    completion_tokens: int | None = None
    generation_time_s: float | None = None
    invalid_outputs: list[str] | None = None


class EventRecord(Record):
    """One console line of an evaluation; progress fields travel beside it."""

    evaluation_id: str
    seq: int = Field(ge=1)
    ts: AwareDatetime
    level: EventLevel
    message: str


class VerdictRecord(Record):
    """One pairwise verdict: one judge, one pair, one order shown. `judge` = a judgement's `judge_model`."""

    id: str
    evaluation_id: str
    verdict_key: str
    pair_key: str
    judge: str
    created_at: AwareDatetime
    order: VerdictOrder
    attempt: int = Field(ge=1)
    model_1: str
    model_2: str
    model_a: str
    model_b: str
    response_a: str
    response_b: str
    sequence: str
    run: int
    prompt_index: int
    groups: dict[str, str] | None = None  # criterion group -> "A++" … "tie" … "B++"; None when failed
    reason: str | None = None
    raw_output: str | None = None
    error: str | None = None
    retries: int | None = None
    calls: int | None = None
    budget_chars: int | None = None
    chars_a: int | None = None
    chars_b: int | None = None
    clipped: bool | None = None
    structured_output: StructuredOutput | None = None
    temperature: float | None = None
    finish_reason: str | None = None
    generation_time_s: float | None = None

    @property
    def judge_model(self) -> str:
        """The judge under the name judgements use."""
        return self.judge


class VoteRecord(Record):
    """One person's blind vote on a pair."""

    id: str
    evaluation_id: str
    voter: str
    pair_key: str
    created_at: AwareDatetime
    voter_name: str | None = None
    choice: VoteChoice
    note: str = ""
    model_a: str
    model_b: str
    model_1: str | None = None
    model_2: str | None = None
    response_a: str
    response_b: str
    sequence: str | None = None
    run: int | None = None
    prompt_index: int | None = None


class AuditRecord(Record):
    """One state change: who (actor, role, how signed in) did what to which target."""

    id: str
    ts: AwareDatetime
    actor: str
    actor_name: str | None = None
    role: Role | None = None
    source: Source | None = None
    action: Action
    target: str | None = None
    details: dict[str, Any] | None = None


RECORDS: dict[str, type[Record]] = {
    "evaluations": EvaluationRecord,
    "jobs": JobRecord,
    "responses": ResponseRecord,
    "judgements": JudgementRecord,
    "events": EventRecord,
    "verdicts": VerdictRecord,
    "votes": VoteRecord,
    "audit": AuditRecord,
}


def validate_document(collection: str, doc: dict[str, Any]) -> Record:
    """The document as its collection's record; pydantic.ValidationError names every bad field."""
    return RECORDS[collection].model_validate(doc)
