"""The Store seam: one protocol, two backends (sqlite.py, mongo.py).

Documents are plain dicts with the same fields in both backends (README,
"Data"). Ids are strings (uuid4 hex). Datetimes are timezone-aware UTC
`datetime` objects on the way in and out. Every write of a response is an
upsert on its unique `task_key`, which makes resume and several workers safe.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, get_args, runtime_checkable

from storybench_core.records import ActiveStatus, EvaluationStatus, JobKind
from storybench_core.store.unreadable import UnreadableRow

Doc = dict[str, Any]

# Columns of the two flat projections that keep the results views fast: values as the documents
# hold them, read without decoding whole documents (results/frames.py has the same tuples).
RESPONSE_STAT_FIELDS = (
    "id", "evaluation_id", "model_name", "sequence", "run", "prompt_index", "prompt_name", "finish_reason",
    "prompt_tokens", "completion_tokens", "generation_time_s", "tokens_per_s", "words", "error",
)  # fmt: skip
JUDGEMENT_SCORE_FIELDS = (
    "response_id", "judge_model", "attempt", "rubric_hash", "overall", "error", "retries", "structured_output",
)  # fmt: skip

# The status and kind sets are the Literal types of records.py (EvaluationStatus, ActiveStatus, JobKind).
EVALUATION_STATUSES: tuple[EvaluationStatus, ...] = get_args(EvaluationStatus)
ACTIVE_STATUSES: tuple[ActiveStatus, ...] = get_args(ActiveStatus)
JOB_KINDS: tuple[JobKind, ...] = get_args(JobKind)
# Fields a brief evaluation document leaves out: the config can be large, and every viewer's
# sidebar and Run page poll the listing every few seconds.
HEAVY_EVALUATION_FIELDS = ("config",)


@dataclass(frozen=True)
class Lease:
    """A worker's claim on one evaluation: who holds it and the claim's epoch.

    Every claim increments the evaluation's `lease` counter, so a worker that lost its claim
    (its evaluation was requeued and claimed again, or reset) holds an older epoch, and each of
    its guarded writes matches nothing.
    """

    owner: str
    epoch: int

    @classmethod
    def of(cls, doc: Doc) -> Lease:
        return cls(str(doc.get("worker_id") or ""), int(doc.get("lease") or 0))

    def held_in(self, doc: Doc | None) -> bool:
        return doc is not None and Lease.of(doc) == self


@runtime_checkable
class Store(Protocol):
    """Persistence for evaluations, responses, judgements, events, verdicts, votes and the audit trail."""

    # --- identity -----------------------------------------------------------
    def describe(self) -> str:
        """Human-readable location with any password masked, e.g. 'sqlite:/x/storybench.db'."""
        ...

    def ping(self) -> None:
        """Raise StoreError with a fix hint if the store is unreachable."""
        ...

    def close(self) -> None: ...

    def unreadable_rows(self) -> list[UnreadableRow]:
        """Rows that reads skipped since this store was opened because they could not be decoded."""
        ...

    # --- evaluations --------------------------------------------------------
    def create_evaluation(self, doc: Doc) -> str:
        """Insert a new evaluation (id assigned if missing); returns its id. DuplicateError on a taken id."""
        ...

    def get_evaluation(self, evaluation_id: str, *, brief: bool = False) -> Doc | None:
        """The evaluation; brief=True leaves out HEAVY_EVALUATION_FIELDS (what a live view polls)."""
        ...

    def list_evaluations(
        self, statuses: Iterable[str] | None = None, limit: int | None = None, *, brief: bool = False
    ) -> list[Doc]:
        """Newest first; brief=True leaves out HEAVY_EVALUATION_FIELDS."""
        ...

    def update_evaluation(self, evaluation_id: str, fields: Doc, *, lease: Lease | None = None) -> bool:
        """Set the given top-level fields, writing only those fields.

        With a lease, only while that lease holds it (else False, nothing written); without one
        a missing evaluation raises StoreError.
        """
        ...

    def transition_evaluation(
        self, evaluation_id: str, from_statuses: Iterable[str], fields: Doc, *, lease: Lease | None = None
    ) -> bool:
        """Atomically set fields only if the status is one of from_statuses (and the lease, if
        given, still holds); True if it did."""
        ...

    def claim_next_evaluation(self, worker_id: str, *, evaluation_id: str | None = None) -> Doc | None:
        """Atomically move the oldest queued evaluation (or the given one) to running for this worker.

        Sets status=running, worker_id, lease = previous lease + 1, heartbeat_at = the store's
        clock, and started_at (if unset). Returns the updated document, or None when nothing (or
        not that one) is queued. Never hands one evaluation to two workers.
        """
        ...

    def heartbeat(self, evaluation_id: str, lease: Lease) -> bool:
        """Set heartbeat_at to the store's clock while the lease holds a running/stopping evaluation.

        False when the lease is lost: the caller must stop working on it.
        """
        ...

    def clock(self) -> datetime:
        """The store's own time (aware UTC): every worker's heartbeat and every staleness check
        uses it, so hosts with skewed clocks agree on who is stale."""
        ...

    def delete_evaluation(self, evaluation_id: str) -> None:
        """Remove the evaluation and everything attached to it (its jobs too)."""
        ...

    # --- jobs other than runs (judging, pairwise comparison) ------------------
    # The same status machine and lease as evaluations (JOB_STATUSES), claimed by the same worker.

    def create_job(self, doc: Doc) -> str:
        """Insert a queued job (kind, evaluation_id, params, queued_by...); returns its id."""
        ...

    def get_job(self, job_id: str) -> Doc | None: ...

    def list_jobs(
        self,
        *,
        evaluation_id: str | None = None,
        statuses: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> list[Doc]:
        """Newest first."""
        ...

    def update_job(self, job_id: str, fields: Doc, *, lease: Lease | None = None) -> bool:
        """As update_evaluation, for a job."""
        ...

    def transition_job(
        self, job_id: str, from_statuses: Iterable[str], fields: Doc, *, lease: Lease | None = None
    ) -> bool:
        """As transition_evaluation, for a job."""
        ...

    def claim_next_job(self, worker_id: str, *, job_id: str | None = None) -> Doc | None:
        """As claim_next_evaluation, for the oldest queued job (or the given one)."""
        ...

    def heartbeat_job(self, job_id: str, lease: Lease) -> bool:
        """As heartbeat, for a job."""
        ...

    # --- responses ----------------------------------------------------------
    def upsert_response(self, doc: Doc, *, lease: Lease | None = None) -> str:
        """Insert or replace by task_key; returns the response id (kept on replace).

        With a lease, raises LeaseLost (and writes nothing) unless it still holds the evaluation.
        """
        ...

    def get_response(self, response_id: str) -> Doc | None: ...

    def list_responses(
        self,
        evaluation_id: str | None = None,
        *,
        model_name: str | None = None,
        sequence: str | None = None,
        run: int | None = None,
        prompt_index: int | None = None,
        include_messages: bool = True,
    ) -> list[Doc]:
        """Matching responses ordered by (evaluation, model, sequence, run, prompt_index)."""
        ...

    def count_responses(self, evaluation_id: str, *, errors: bool | None = None) -> int:
        """Count responses; errors=True only failed ones, False only successful ones."""
        ...

    def completed_task_keys(self, evaluation_id: str) -> set[str]:
        """task_keys of responses stored without error."""
        ...

    def list_response_stats(self, evaluation_id: str | None = None) -> list[tuple[Any, ...]]:
        """RESPONSE_STAT_FIELDS tuples in list_responses order; words: the stored field, else counted."""
        ...

    # --- judgements ---------------------------------------------------------
    def add_judgement(self, doc: Doc) -> str:
        """Insert a judgement; unique on (response_id, judge_model, rubric_hash, attempt) (DuplicateError)."""
        ...

    def list_judgements(
        self,
        evaluation_id: str | None = None,
        *,
        response_id: str | None = None,
        judge_model: str | None = None,
    ) -> list[Doc]: ...

    def list_judgement_scores(
        self, evaluation_id: str | None, criteria: Sequence[str]
    ) -> list[tuple[Any, ...]]:
        """JUDGEMENT_SCORE_FIELDS then each criterion's score (None if absent), in list_judgements order."""
        ...

    # --- events (the run console) ------------------------------------------
    def append_event(self, evaluation_id: str, level: str, message: str, **fields: Any) -> int:
        """Append a console line; returns its 1-based sequence number within the evaluation."""
        ...

    def list_events(self, evaluation_id: str, after_seq: int = 0, limit: int | None = None) -> list[Doc]:
        """Events with seq > after_seq, oldest first."""
        ...

    # --- pairwise verdicts and human votes -----------------------------------
    def add_verdict(self, doc: Doc) -> str:
        """Insert a pairwise verdict; unique on verdict_key (DuplicateError)."""
        ...

    def list_verdicts(self, evaluation_id: str | None = None, *, judge: str | None = None) -> list[Doc]: ...

    def add_vote(self, doc: Doc) -> str:
        """Insert a human vote; unique on (voter, pair_key). Raises DuplicateError on a repeat."""
        ...

    def list_votes(self, evaluation_id: str | None = None, *, voter: str | None = None) -> list[Doc]: ...

    # --- audit trail (who changed what; kept when an evaluation is deleted) ---
    def add_audit(self, doc: Doc) -> str:
        """Append an audit entry (id assigned and ts set to now if missing); returns its id."""
        ...

    def list_audit(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        target: str | None = None,
        since: datetime | None = None,
        limit: int | None = None,
    ) -> list[Doc]:
        """Matching audit entries, newest first by (ts, id) (ts >= since when given)."""
        ...
