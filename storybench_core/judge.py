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

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import uuid4

from . import catalog
from .backends.base import Completion, GenerationSettings, Message, ModelBackend
from .backends.registry import create_backend
from .widths import choose_width
from .catalog import Rubric
from .config import GenerationSettingsConfig, JudgeConfig, ModelSpec, RunConfig
from .errors import DuplicateError, JudgeError, StopRequested, StorybenchError
from .jobqueue import evaluation_config, get_evaluation
from .prompt_fence import Fence
from .runner import ModelPool, plan_tasks
from .stopping import stop_check as stop_check_during
from .store.base import Doc, Store

log = logging.getLogger(__name__)

# Kinds that load weights into this process (and so share the one-model pool).
# API (and the scripted fake) judges are cheap to hold beside a loaded candidate.
LOCAL_KINDS = frozenset({"bundled", "hf", "path"})

EventFn = Callable[..., None]
ProgressFn = Callable[[dict[str, Any]], None]

HISTORY_CHARS = 6000  # first budget for earlier turns in the judge prompt
RAW_KEEP_CHARS = 20_000  # raw output kept per judgement
SEED_ATTEMPT_STRIDE = 1000


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


# --- one response ---------------------------------------------------------------------------


def judge_seed(response_doc: Doc, attempt: int, retry: int = 0) -> int:
    """Distinct per response, attempt and retry; reproducible."""
    base = int(response_doc.get("seed") or 0)
    return (base * 7 + SEED_ATTEMPT_STRIDE * attempt + retry) % (2**31 - 1)


def now_utc() -> datetime:
    return datetime.now(UTC)


class _JudgeTask:
    """One judgement in progress: its document, the messages of its next try, and its retries."""

    def __init__(
        self,
        backend: ModelBackend,
        judge_name: str,
        response_doc: Doc,
        rubric: Rubric,
        cfg: JudgeConfig,
        attempt: int,
    ) -> None:
        constrained = bool(getattr(backend, "supports_json_schema", False))
        self.response_doc = response_doc
        self.rubric = rubric
        self.cfg = cfg
        self.attempt = attempt
        self.schema = (
            rubric_schema(rubric, justification_max_chars(len(rubric.criteria), cfg.max_tokens))
            if constrained
            else None
        )
        self.doc: Doc = {
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
        self.tries = 0
        self.tokens = 0
        self.error = ""
        self.started = time.perf_counter()
        self.finished = False
        self.messages: list[Message] = []
        try:
            self.messages = fit_judge_messages(backend, rubric, response_doc, cfg.max_tokens)
        except JudgeError as exc:
            self.doc.update(error=str(exc), created_at=now_utc())
            self.finished = True

    @property
    def pending(self) -> bool:
        return not self.finished

    def settings(self) -> GenerationSettings:
        """The next try's settings (its own seed per retry)."""
        retry = self.tries
        self.doc["retries"] = retry
        settings = GenerationSettings(
            temperature=self.cfg.temperature,
            top_p=1.0,
            max_tokens=self.cfg.max_tokens,
            seed=judge_seed(self.response_doc, self.attempt, retry),
            json_schema=self.schema,
        )
        self.doc["seed"] = settings.seed
        return settings

    def call_failed(self, exc: StorybenchError | str) -> None:
        """The model call itself failed (not the answer): try again or give up."""
        self.error = f"judge model failed: {exc}"
        self.doc["raw_output"] = None
        self._next_try()

    def take(self, completion: Completion) -> None:
        """Validate one answer: keep its scores, or feed the reason back for the next try."""
        if completion.finish_reason == "error":
            self.call_failed(str(completion.extra.get("error") or "no answer"))
            return
        self.tokens += completion.completion_tokens
        doc = self.doc
        doc["raw_output"] = completion.text[:RAW_KEEP_CHARS]
        doc["finish_reason"] = completion.finish_reason
        if completion.extra.get("structured_output"):
            doc["structured_output"] = completion.extra["structured_output"]
        try:
            scores = parse_judgement(completion.text, self.rubric)
        except JudgeError as exc:
            error = str(exc)
            if completion.finish_reason == "length":
                error += f" (the answer hit judge.max_tokens = {self.cfg.max_tokens})"
            self.error = error
            doc["invalid_outputs"].append(completion.text[:4000])
            # Feed the reason back: a retry that asks the same thing at temperature 0 repeats itself.
            self.messages = [
                *self.messages[:2],
                {"role": "assistant", "content": completion.text[:2000]},
                {
                    "role": "user",
                    "content": f"That answer could not be used: {error}. Reply again with only the JSON "
                    "object, every criterion present, each justification one or two short sentences.",
                },
            ]
            self._next_try()
            return
        doc.update(scores=scores, overall=overall_score(scores), error=None)
        self._close()

    def _next_try(self) -> None:
        self.tries += 1
        if self.tries > self.cfg.max_retries:
            self.doc["error"] = f"no valid judgement after {self.cfg.max_retries + 1} tries: {self.error}"
            self._close()

    def _close(self) -> None:
        self.finished = True
        self.doc["completion_tokens"] = self.tokens
        self.doc["generation_time_s"] = round(time.perf_counter() - self.started, 4)
        self.doc["created_at"] = now_utc()


class AskTask(Protocol):
    """One answer being asked for, with retries (a rubric judgement, a pairwise verdict)."""

    messages: list[Message]

    @property
    def pending(self) -> bool: ...

    def settings(self) -> GenerationSettings: ...

    def take(self, completion: Completion) -> None: ...

    def call_failed(self, exc: StorybenchError | str) -> None: ...


def ask_one(backend: ModelBackend, task: AskTask, on_token: Callable[[str], None] | None = None) -> None:
    """Ask through `chat` until the task has a valid answer or no tries left."""
    while task.pending:
        settings = task.settings()
        try:
            completion = backend.chat(task.messages, settings, on_token)
        except StorybenchError as exc:
            task.call_failed(exc)
            continue
        task.take(completion)


def ask_together(
    backend: ModelBackend, tasks: Sequence[AskTask], on_token: Callable[[int, str], None] | None = None
) -> None:
    """Ask through `chat_batch` in rounds: each round sends every task still pending in one call,
    so a retry only re-asks the ones whose answer could not be used."""
    while pending := [t for t in tasks if t.pending]:
        settings = [t.settings() for t in pending]
        try:
            completions = backend.chat_batch(  # type: ignore[attr-defined]
                [t.messages for t in pending], settings, on_token
            )
        except StorybenchError as exc:
            for task in pending:
                task.call_failed(exc)
            continue
        for n, task in enumerate(pending):
            if n < len(completions):
                task.take(completions[n])
            else:
                task.call_failed("the backend returned no answer for this request")


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
    task = _JudgeTask(backend, judge_name, response_doc, rubric, cfg, attempt)
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
    tasks = [_JudgeTask(backend, judge_name, doc, rubric, cfg, attempt) for doc, attempt in items]
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


def _store_judgement(store: Store, judgement: Doc) -> bool:
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
                if not _store_judgement(store, judgement):
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


# --- auto_evaluate ---------------------------------------------------------------------------------


class AutoJudge:
    """The worker's on_response hook for `auto_evaluate`.

    Per judge, per response:
    - the judge *is* the candidate model (same local model): judged at once on the
      loaded candidate, no reload;
    - an API (or fake) judge: judged at once, its client held beside the candidate;
    - a different local model: the worker holds one model at a time, so loading
      the judge per response would reload both models every task. Such responses
      are queued and judged when the candidate model's last task is stored; the
      runner then loads the next candidate. Responses still queued when a run
      ends early (stop, failed last task) are judged by `flush()` or later by
      `storybench judge`, which skips what is already judged.
    """

    def __init__(self, store: Store, config: RunConfig, evaluation_id: str, pool: ModelPool, event: EventFn):
        self.store = store
        self.config = config
        self.cfg = config.judge
        self.evaluation_id = evaluation_id
        self.pool = pool
        self.event = event
        self.rubric = catalog.load_rubric()
        self.queue: list[Doc] = []
        self._remote: dict[str, ModelBackend] = {}
        self._announced: set[str] = set()
        self._order = {t.key(evaluation_id): (t.model_name, i) for i, t in enumerate(plan_tasks(config))}
        self._stop_checked = 0.0
        self._stopping = False

    # -- helpers
    @staticmethod
    def same_model(spec: ModelSpec, response_doc: Doc) -> bool:
        return spec.kind in LOCAL_KINDS and spec.ref() == response_doc.get("model_ref")

    def _stopping_now(self) -> bool:
        now = time.monotonic()
        if now - self._stop_checked >= 0.5:
            self._stop_checked = now
            current = self.store.get_evaluation(self.evaluation_id)
            self._stopping = current is None or current.get("status") == "stopping"
        return self._stopping

    def _on_token(self, _piece: str) -> None:
        if self._stopping_now():
            raise StopRequested()

    def _judge(self, backend: ModelBackend, spec: ModelSpec, response: Doc) -> None:
        self._judge_many(backend, spec, [response])

    def _judge_many(self, backend: ModelBackend, spec: ModelSpec, responses: Sequence[Doc]) -> None:
        """Every missing attempt of these responses, together where the backend can batch."""
        name = spec.display_name
        todo: list[tuple[Doc, int]] = []
        for response in responses:
            done = {
                int(j["attempt"])
                for j in self.store.list_judgements(response_id=response["id"], judge_model=name)
                if j.get("rubric_hash") == self.rubric.rubric_hash
            }
            todo += [(response, a) for a in range(1, self.cfg.attempts + 1) if a not in done]
        width, _reason = judge_width(backend, self.config.generation, len(todo))
        for _i, response, judgement in judge_in_chunks(
            backend, name, todo, self.rubric, self.cfg, width, on_token=self._on_token
        ):
            if _store_judgement(self.store, judgement):
                self.event(*judgement_line(judgement, response))

    def _remote_backend(self, spec: ModelSpec) -> ModelBackend:
        key = spec.model_dump_json()
        if key not in self._remote:
            self._remote[key] = create_backend(spec, self.config.generation)
        return self._remote[key]

    def _model_done(self, response: Doc) -> bool:
        """True when no later task of this response's model is still missing."""
        model, index = self._order.get(response.get("task_key", ""), (response.get("model_name"), -1))
        later = [k for k, (m, i) in self._order.items() if m == model and i > index]
        if not later:
            return True
        completed = self.store.completed_task_keys(self.evaluation_id)
        return all(k in completed for k in later)

    # -- the hook
    def __call__(self, response: Doc, candidate: ModelBackend) -> None:
        self.on_responses([response], candidate)

    def on_responses(self, responses: Sequence[Doc], candidate: ModelBackend) -> None:
        """Judge freshly stored responses (a batch's runs together where the judge can batch)."""
        if not responses or self._stopping_now():
            return
        deferred = False
        for spec in self.cfg.judges():
            try:
                if spec.kind not in LOCAL_KINDS:
                    self._judge_many(self._remote_backend(spec), spec, responses)
                    continue
                own = [r for r in responses if self.same_model(spec, r)]
                if own:
                    self._judge_many(candidate, spec, own)
                if len(own) < len(responses):
                    deferred = True
                    if spec.display_name not in self._announced:
                        self._announced.add(spec.display_name)
                        self.event(
                            "info",
                            f"judge {spec.display_name} is a different local model: responses are queued and "
                            f"judged after each candidate model's tasks are done (one model loaded at a time)",
                        )
            except StopRequested:
                raise
            except StorybenchError as exc:
                self.event(
                    "error",
                    f"judge {spec.display_name} unavailable for {describe_response(responses[0])}: {exc}",
                )
            except Exception as exc:  # a judge bug must not end the evaluation
                log.exception("auto-judge crashed on %s", responses[0].get("task_key"))
                self.event(
                    "error",
                    f"judge {spec.display_name} crashed: {type(exc).__name__}: {exc} (see the log file)",
                )
        if deferred:
            self.queue.extend(responses)
            if self._model_done(responses[-1]):
                self.flush()

    def flush(self) -> int:
        """Judge the queued responses with every different-local-model judge; returns how many were queued."""
        queued, self.queue = self.queue, []
        if not queued:
            return 0
        if self._stopping_now():
            self.event(
                "warning", f"{len(queued)} queued response(s) left unjudged (stop); run `storybench judge`"
            )
            return len(queued)
        specs = [s for s in self.cfg.judges() if s.kind in LOCAL_KINDS]
        for spec in specs:
            todo = [r for r in queued if not self.same_model(spec, r)]
            if not todo:
                continue
            self.event("info", f"loading judge {spec.display_name} for {len(todo)} queued response(s)")
            try:
                backend, _fresh = self.pool.get(spec, self.config.generation)
                self._judge_many(backend, spec, todo)
            except StopRequested:
                raise
            except StorybenchError as exc:
                self.event("error", f"judge {spec.display_name}: {exc}; judge later with `storybench judge`")
        return len(queued)

    def close(self) -> None:
        for backend in self._remote.values():
            backend.close()
        self._remote.clear()


def auto_judge_hook(
    store: Store, config: RunConfig, evaluation_id: str, pool: ModelPool, event: EventFn
) -> AutoJudge | None:
    """The on_response hook for an `auto_evaluate` run (None when there is nothing to judge with)."""
    if not config.auto_evaluate or not config.judge.judges():
        return None
    return AutoJudge(store, config, evaluation_id, pool, event)
