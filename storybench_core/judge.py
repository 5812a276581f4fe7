"""The judge: score stored responses against the rubric with a model.

A judge sees the rubric (with every anchor), the brief, the conversation so
far and the response, and answers with one JSON object: for every criterion
an integer score and a short justification. Where the backend can constrain
its output (`supports_json_schema`) the reply is generated against a JSON
schema built from the rubric; either way it is validated here. An invalid
answer is retried (with the reason fed back) up to `max_retries` times and
then stored as a *failed* judgement: raw output and error kept, no scores,
overall None. A score is never invented or defaulted. The overall score is
ours, the mean of the criterion scores; the model is not asked for one.

Three ways in: `judge_response` (one response, one attempt), `judge_evaluation`
(every stored response of an evaluation, skipping what is already judged with
the same judge + rubric hash + attempt) and `auto_judge_hook` (the worker's
`auto_evaluate`: judge each response as it is stored).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

from . import catalog
from .backends.base import Message, ModelBackend
from .catalog import Rubric
from .config import GenerationSettingsConfig, JudgeConfig, ModelSpec
from .errors import DuplicateError, JudgeError, StopRequested
from .jobqueue import evaluation_config, get_evaluation
from .judge_prompt import (
    HISTORY_CHARS,
    earlier_turns,
    extract_json_object,
    fair_clip,
    fit_judge_messages,
    judge_messages,
    justification_max_chars,
    overall_score,
    parse_judgement,
    rubric_schema,
    validate_scores,
)
from .runner import ModelPool
from .stopping import stop_check as stop_check_during
from .store.base import Doc, Store
from .structured_ask import StructuredAsk, ask_one, ask_together
from .widths import choose_width

log = logging.getLogger(__name__)

EventFn = Callable[..., None]
ProgressFn = Callable[[dict[str, Any]], None]

RAW_KEEP_CHARS = 20_000  # raw output kept per judgement
SEED_ATTEMPT_STRIDE = 1000


# --- one response ---------------------------------------------------------------------------


def judge_seed(response_doc: Doc, attempt: int, retry: int = 0) -> int:
    """Distinct per response, attempt and retry; reproducible."""
    base = int(response_doc.get("seed") or 0)
    return (base * 7 + SEED_ATTEMPT_STRIDE * attempt + retry) % (2**31 - 1)


def judge_task(
    backend: ModelBackend,
    judge_name: str,
    response_doc: Doc,
    rubric: Rubric,
    cfg: JudgeConfig,
    attempt: int,
) -> StructuredAsk[dict[str, dict[str, Any]]]:
    """One judgement to ask for: its document, messages, schema, seeds and retries."""
    constrained = bool(getattr(backend, "supports_json_schema", False))
    schema = (
        rubric_schema(rubric, justification_max_chars(len(rubric.criteria), cfg.max_tokens))
        if constrained
        else None
    )
    doc: Doc = {
        "id": uuid4().hex,
        "response_id": response_doc["id"],
        "evaluation_id": response_doc.get("evaluation_id"),
        "judge_model": judge_name,
        "rubric_hash": rubric.rubric_hash,
        "attempt": attempt,
        "scores": None,
        "overall": None,
        "raw_output": None,
        "error": None,
        "model_name": response_doc.get("model_name"),
        "structured_output": "json_schema" if constrained else "prompt-only",
        "retries": 0,
        "temperature": cfg.temperature,
        "invalid_outputs": [],
    }
    messages: list[Message] = []
    setup_error = None
    try:
        messages = fit_judge_messages(backend, rubric, response_doc, cfg.max_tokens)
    except JudgeError as exc:
        setup_error = str(exc)

    def accept(scores: dict[str, dict[str, Any]]) -> None:
        doc.update(scores=scores, overall=overall_score(scores))

    return StructuredAsk(
        doc,
        messages,
        parse=lambda text: parse_judgement(text, rubric),
        accept=accept,
        seed_for=lambda retry: judge_seed(response_doc, attempt, retry),
        temperature=cfg.temperature,
        max_tokens=cfg.max_tokens,
        max_retries=cfg.max_retries,
        schema=schema,
        retry_hint="Reply again with only the JSON object, every criterion present, each justification "
        "one or two short sentences.",
        what="judgement",
        max_tokens_name="judge.max_tokens",
        raw_keep_chars=RAW_KEEP_CHARS,
        setup_error=setup_error,
    )


def judge_response(
    backend: ModelBackend,
    judge_name: str,
    response_doc: Doc,
    rubric: Rubric,
    cfg: JudgeConfig,
    attempt: int = 1,
    *,
    on_token: Callable[[str], None] | None = None,
) -> Doc:
    """Judge one response once (with retries); returns the judgement document, valid or failed."""
    task = judge_task(backend, judge_name, response_doc, rubric, cfg, attempt)
    ask_one(backend, task, on_token)
    return task.doc


def can_batch(backend: ModelBackend) -> bool:
    """True when the backend generates several conversations in one call (`chat_batch`)."""
    return bool(getattr(backend, "supports_batch", False)) and callable(getattr(backend, "chat_batch", None))


def judge_batch(
    backend: ModelBackend,
    judge_name: str,
    items: Sequence[tuple[Doc, int]],
    rubric: Rubric,
    cfg: JudgeConfig,
    *,
    on_token: Callable[[int, str], None] | None = None,
) -> list[Doc]:
    """Judge several (response, attempt) pairs together through `chat_batch`, one judgement each.

    The same tries, seeds, validation and failure records as `judge_response`
    (see `ask_together` for the rounds).
    """
    tasks = [judge_task(backend, judge_name, doc, rubric, cfg, attempt) for doc, attempt in items]
    ask_together(backend, tasks, on_token)
    return [t.doc for t in tasks]


def describe_response(doc: Doc) -> str:
    return f"{doc.get('model_name')} · {doc.get('sequence')} · run {doc.get('run')} · prompt {(doc.get('prompt_index') or 0) + 1}"


def judgement_line(judgement: Doc, response_doc: Doc) -> tuple[str, str]:
    """(level, console line) for a stored judgement."""
    where = (
        f"{describe_response(response_doc)} by {judgement['judge_model']} (attempt {judgement['attempt']})"
    )
    retries = (
        f", {judgement['retries']} retr{'y' if judgement['retries'] == 1 else 'ies'}"
        if judgement.get("retries")
        else ""
    )
    if judgement.get("error"):
        return "warning", f"judgement failed for {where}: {judgement['error']}"
    return "info", f"judged {where}: overall {judgement['overall']:.2f}{retries}"


# --- a whole evaluation ---------------------------------------------------------------------------


@dataclass
class JudgeSummary:
    """What a judging pass did."""

    judged: int = 0
    failed: int = 0
    skipped: int = 0
    retries: int = 0
    stopped: bool = False
    per_judge: dict[str, dict[str, int]] = field(default_factory=dict)

    def count(self, judgement: Doc) -> None:
        stats = self.per_judge.setdefault(judgement["judge_model"], {"judged": 0, "failed": 0})
        key = "failed" if judgement.get("error") else "judged"
        stats[key] += 1
        setattr(self, key, getattr(self, key) + 1)
        self.retries += int(judgement.get("retries") or 0)


def _judged_keys(store: Store, evaluation_id: str, judge_name: str, rubric_hash: str) -> set[tuple[str, int]]:
    return {
        (j["response_id"], int(j["attempt"]))
        for j in store.list_judgements(evaluation_id, judge_model=judge_name)
        if j.get("rubric_hash") == rubric_hash
    }


def store_judgement(store: Store, judgement: Doc) -> bool:
    """Add a judgement; False when an identical key appeared meanwhile (another judge process)."""
    if not judgement.get("invalid_outputs"):
        judgement.pop("invalid_outputs", None)
    try:
        store.add_judgement(judgement)
    except DuplicateError:
        return False
    return True


# A local judge's batch width when generation.parallel_runs leaves it open: past about 8
# sequences a CPU gains little (FACTS.md: 3 → 99.6, 8 → 156.9 tok/s aggregate).
JUDGE_MAX_WIDTH = 8


def judge_width(backend: ModelBackend, generation: GenerationSettingsConfig, n: int) -> tuple[int, str]:
    """How many judgements to generate together on this backend, and why (1 = one at a time).

    A single judgement also goes through the batch path when a batch of two would be
    allowed: on a local model that path checks the grammar after sampling, which made
    one judgement 2x and three together 3.5x faster than llama-cpp-python's grammar
    pass over the whole vocabulary (bench/judge_grammar.py, README).
    """
    if n < 1 or not can_batch(backend):
        return 1, "one at a time"
    if generation.parallel_runs is None:
        generation = generation.model_copy(update={"parallel_runs": JUDGE_MAX_WIDTH})
    return choose_width(backend, generation, max(n, 2))


def judge_in_chunks(
    backend: ModelBackend,
    judge_name: str,
    todo: Sequence[tuple[Doc, int]],
    rubric: Rubric,
    cfg: JudgeConfig,
    width: int,
    should_stop: Callable[[], bool] = lambda: False,
    on_token: Callable[[str], None] | None = None,
) -> Iterator[tuple[int, Doc, Doc]]:
    """(index, response, judgement) for each (response, attempt), `width` judged together.

    Stops early, before a chunk, when should_stop() says so: fewer items come out.
    """
    for start in range(0, len(todo), max(width, 1)):
        if should_stop():
            return
        chunk = todo[start : start + max(width, 1)]
        if width > 1:
            batch_token = (lambda _i, piece: on_token(piece)) if on_token is not None else None
            judgements = judge_batch(backend, judge_name, chunk, rubric, cfg, on_token=batch_token)
        else:
            response, attempt = chunk[0]
            judgements = [
                judge_response(backend, judge_name, response, rubric, cfg, attempt, on_token=on_token)
            ]
        for k, ((response, _attempt), judgement) in enumerate(zip(chunk, judgements, strict=True)):
            yield start + k, response, judgement


def _until_stopped(items: Iterator[tuple[int, Doc, Doc]]) -> Iterator[tuple[int, Doc, Doc]]:
    """The items, ending quietly where a StopRequested ends them (the caller counts what came)."""
    try:
        yield from items
    except StopRequested:
        return


def judge_evaluation(
    store: Store,
    evaluation_id: str,
    judge_spec: ModelSpec | Sequence[ModelSpec] | None = None,
    cfg: JudgeConfig | None = None,
    pool: ModelPool | None = None,
    *,
    event: EventFn | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    generation: GenerationSettingsConfig | None = None,
) -> JudgeSummary:
    """Judge every successful response of an evaluation with each judge, cfg.attempts times.

    Defaults come from the evaluation's own config (its judge section and its
    generation settings, which decide n_ctx for a local judge). Judgements that
    already exist for the same judge, rubric hash and attempt are skipped, so a
    second call only does what is missing. Console lines go to `event`
    (default: the evaluation's event log).
    """
    evaluation = get_evaluation(store, evaluation_id)
    run_config = evaluation_config(evaluation)
    cfg = cfg or run_config.judge
    specs = [judge_spec] if isinstance(judge_spec, ModelSpec) else list(judge_spec or cfg.judges())
    if not specs:
        raise JudgeError(
            f"evaluation {evaluation_id} has no judge configured; choose one "
            "(e.g. `storybench judge EVAL_ID --judge-model bundled`)"
        )
    generation = generation or run_config.generation
    emit = event or (lambda level, message, **f: store.append_event(evaluation_id, level, message, **f))
    stop = should_stop or (lambda: False)
    last_check = [0.0]

    def stop_check(_piece: str) -> None:
        """Stop inside a generation too (a batch of judgements can take minutes), every 0.5 s."""
        now = time.monotonic()
        if now - last_check[0] >= 0.5:
            last_check[0] = now
            if stop():
                raise StopRequested()

    own_pool = pool is None
    pool = pool or ModelPool()
    rubric = catalog.load_rubric()
    responses = [r for r in store.list_responses(evaluation_id) if not r.get("error")]
    summary = JudgeSummary()
    if cfg.attempts > 1 and cfg.temperature == 0:
        emit(
            "warning",
            f"{cfg.attempts} attempts at judge.temperature 0 will mostly repeat one judgement; raise it",
        )
    try:
        for spec in specs:
            name = spec.display_name
            done = _judged_keys(store, evaluation_id, name, rubric.rubric_hash)
            todo = [(r, a) for r in responses for a in range(1, cfg.attempts + 1) if (r["id"], a) not in done]
            summary.skipped += len(responses) * cfg.attempts - len(todo)
            if not todo:
                emit("info", f"judge {name}: all {len(responses)} responses already judged")
                continue
            emit("info", f"judge {name}: loading for {len(todo)} judgement(s)")
            with stop_check_during(stop):  # Stop works during the load (a download can take minutes)
                backend, fresh = pool.get(spec, generation)
            emit("info", f"judge {name}: {'loaded' if fresh else 'reusing loaded model'}")
            width, reason = judge_width(backend, generation, len(todo))
            if min(width, len(todo)) > 1:
                emit("info", f"judge {name}: {min(width, len(todo))} judgements at a time: {reason}")
            judged = 0
            chunks = judge_in_chunks(backend, name, todo, rubric, cfg, width, stop, on_token=stop_check)
            for i, response, judgement in _until_stopped(chunks):
                judged = i + 1
                if not store_judgement(store, judgement):
                    summary.skipped += 1
                    continue
                summary.count(judgement)
                level, line = judgement_line(judgement, response)
                emit(level, line)
                if progress is not None:
                    progress(
                        {
                            "judge_model": name,
                            "done": i + 1,
                            "total": len(todo),
                            "model_name": response.get("model_name"),
                        }
                    )
            if judged < len(todo):
                summary.stopped = True
                emit(
                    "warning",
                    f"judging stopped; {len(todo) - judged} judgement(s) left for `storybench judge`",
                )
                return summary
        emit(
            "info" if not summary.failed else "warning",
            f"judging finished: {summary.judged} judged, {summary.failed} failed, {summary.skipped} already judged",
        )
        return summary
    finally:
        if own_pool:
            pool.release()


__all__ = [
    "HISTORY_CHARS", "RAW_KEEP_CHARS", "JudgeSummary", "can_batch", "earlier_turns", "extract_json_object",
    "fair_clip", "fit_judge_messages", "judge_batch", "judge_evaluation", "judge_messages", "judge_response",
    "judge_task", "judge_width", "judgement_line", "justification_max_chars", "overall_score",
    "parse_judgement", "rubric_schema", "store_judgement", "validate_scores",
]  # fmt: skip
