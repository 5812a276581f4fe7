"""The execution loop: every pending conversation of one loaded model, turn by turn, in waves.

A conversation is one (model, sequence, run): its later prompts carry its own
earlier answers, so its turns go one after another. Different conversations
are independent, so the scheduler keeps a set of up to `width` active ones
and sends the next turn of each to the backend together — one `chat_batch`
call per wave where the backend decodes several at once, otherwise (width 1)
one `chat` call per turn. Width 1 is simply the smallest batch: the same
loop and the same wave handler (a wave of one), the same rules.

Per conversation, whatever the width: only missing tasks run (a resumed
conversation is rebuilt from its stored turns), each response is stored the
moment it finishes (an upsert on its task key), a turn that overflows the
context or fails is stored as a failure and the conversation's later turns
as skipped while the others go on, and a stop request ends the wave within
seconds (finished responses are stored, unfinished ones are not).

`group="evaluation"` (the default) fills the active set from every pending
conversation of the model, across sequences; `group="sequence"` only with
conversations of one sequence at a time (the runs of a sequence together,
the behaviour before whole-evaluation batching; bench/batched.py compares).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from .backends.base import Completion, GenerationSettings, Message, ModelBackend
from .config import ModelSpec
from .errors import ContextOverflowError, StopRequested, StorybenchError
from .execution import EvaluationRun, can_batch
from .store.base import Doc
from .tasks import FittedMessages, Task, fit_to_context, live_text, seed_for

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 0.5
Grouping = Literal["evaluation", "sequence"]


# --- conversations and their turns -------------------------------------------------------


@dataclass
class Conversation:
    """One (model, sequence, run): its tasks in prompt order, the turns so far, where it broke."""

    tasks: list[Task]
    stored: dict[int, Doc]  # its stored, successful responses by prompt index (a resume)
    history: list[tuple[Message, Message]] = field(default_factory=list)
    position: int = 0  # index of the next task to look at
    broken_at: int | None = None

    @property
    def sequence(self) -> str:
        return self.tasks[0].sequence

    def next_task(self, run: EvaluationRun, spec: ModelSpec) -> Task | None:
        """The next task to generate, None when none is left.

        Stored turns on the way join the history; after a failed turn the rest are stored as skipped.
        """
        while self.position < len(self.tasks):
            task = self.tasks[self.position]
            if task.key(run.evaluation_id) in run.done_keys and task.prompt_index in self.stored:
                answer = self.stored[task.prompt_index]["response"]
                self.history.append((prompt_of(task), {"role": "assistant", "content": answer}))
            elif self.broken_at is not None:
                run.store_failure(
                    spec, task, f"skipped: turn {self.broken_at + 1} of this conversation failed"
                )
            else:
                return task
            self.position += 1
        return None

    def answered(self, task: Task, text: str) -> None:
        self.history.append((prompt_of(task), {"role": "assistant", "content": text}))
        self.position += 1

    def broke(self, task: Task) -> None:
        self.broken_at = task.prompt_index
        self.position += 1


def prompt_of(task: Task) -> Message:
    return {"role": "user", "content": task.prompt_text}


@dataclass
class _Turn:
    """One conversation's next turn, ready for the backend, and what it streamed so far."""

    conv: Conversation
    task: Task
    seed: int
    settings: GenerationSettings
    fitted: FittedMessages
    pieces: list[str] = field(default_factory=list)
    tokens: int = 0
    done: bool = False
    text: str | None = None  # the finished response's text and rate
    completion_tps: float = 0.0


class Scheduler:
    """Executes the missing tasks of one model's conversations, up to `width` at once."""

    def __init__(
        self,
        run: EvaluationRun,
        spec: ModelSpec,
        backend: ModelBackend,
        width: int,
        group: Grouping = "evaluation",
    ) -> None:
        self.run = run
        self.spec = spec
        self.backend = backend
        self.width = max(1, width)
        self.group = group
        # Above width 1 every wave is one `chat_batch` call; width 1 is a wave of one, through `chat`.
        self.batched = self.width > 1 and can_batch(backend)
        gen = run.config.generation
        self.system: list[Message] = (
            [{"role": "system", "content": gen.system_prompt}] if gen.system_prompt else []
        )

    def execute(self, conversations: list[list[Task]]) -> None:
        """Every conversation to its end; StopRequested propagates."""
        pending = deque(conversations)
        active: list[Conversation] = []
        while True:
            wave: list[tuple[Conversation, Task]] = []
            still: list[Conversation] = []
            for conv in active:
                task = conv.next_task(self.run, self.spec)
                if task is not None:
                    still.append(conv)
                    wave.append((conv, task))
            active = still
            while len(active) < self.width and pending and self._admits(pending[0], active):
                conv = self._open(pending.popleft())
                task = conv.next_task(self.run, self.spec)
                if task is not None:
                    active.append(conv)
                    wave.append((conv, task))
            if not wave:
                return  # nothing active and nothing admitted: every conversation is done
            # A backend that decodes one conversation at a time gets waves of one.
            for part in [wave] if self.batched else [[item] for item in wave]:
                self._wave(part)

    def _admits(self, tasks: list[Task], active: list[Conversation]) -> bool:
        return self.group == "evaluation" or not active or active[0].sequence == tasks[0].sequence

    def _open(self, tasks: list[Task]) -> Conversation:
        """A conversation with its stored, successful turns (for a resume)."""
        first = tasks[0]
        docs = self.run.store.list_responses(
            self.run.evaluation_id, model_name=self.spec.display_name, sequence=first.sequence, run=first.run
        )
        return Conversation(tasks, {d["prompt_index"]: d for d in docs if not d.get("error")})

    # -- preparing a turn -----------------------------------------------------------------

    def _prepare(self, conv: Conversation, task: Task) -> _Turn | None:
        """Fit the conversation to the context; None (stored as failed) when the prompt cannot fit."""
        gen = self.run.config.generation
        seed = seed_for(gen.seed, task.run, task.prompt_index)
        n_ctx = self.backend.context_size()
        try:
            fitted = fit_to_context(
                self.system, conv.history, prompt_of(task), self.backend.count_tokens, n_ctx - gen.max_tokens
            )
        except ContextOverflowError as exc:
            self.run.hooks.event("error", f"{task.label}: {exc}")
            self.run.store_failure(self.spec, task, str(exc), seed=seed)
            conv.broke(task)
            return None
        if fitted.dropped_turns:
            self.run.hooks.event(
                "warning",
                f"{task.label}: dropped the {fitted.dropped_turns} oldest turn(s) to fit n_ctx={n_ctx}",
            )
        settings = GenerationSettings(
            temperature=gen.temperature, top_p=gen.top_p, max_tokens=gen.max_tokens, seed=seed
        )
        return _Turn(conv, task, seed, settings, fitted)

    def _stored(self, turn: _Turn, completion: Completion, wave_size: int | None) -> Doc:
        """Store a finished turn; wave_size: how many were generated together (None: width 1)."""
        doc = self.run.store_response(self.spec, turn.task, turn.seed, turn.fitted, completion, wave_size)
        self.run.hooks.event(
            "info",
            f"stored {turn.task.label}: {completion.completion_tokens} tokens in "
            f"{completion.generation_time_s:.1f} s ({completion.tokens_per_s:.1f} tok/s, "
            f"finish={completion.finish_reason})",
        )
        turn.conv.answered(turn.task, completion.text)
        return doc

    def _failed(self, turn: _Turn, error: str) -> None:
        """Say why on the console, store the failed task, and skip the conversation's later turns."""
        self.run.hooks.event("error", f"{turn.task.label}: {error}")
        self.run.store_failure(self.spec, turn.task, error, seed=turn.seed, messages=turn.fitted.messages)
        turn.conv.broke(turn.task)

    # -- one wave: the next turn of each of its conversations ------------------------------

    def _wave(self, wave: list[tuple[Conversation, Task]]) -> None:
        """Generate and store one turn of each conversation in the wave (one, at width 1)."""
        hooks = self.run.hooks
        if hooks.should_stop():
            raise StopRequested()
        turns = [t for t in (self._prepare(conv, task) for conv, task in wave) if t is not None]
        if not turns:
            return
        hooks.event("info", self._wave_label(turns))
        started = time.perf_counter()
        state = {"last": 0.0, "written": 0}
        finished: list[Doc] = []

        def progress(final: bool = False) -> None:
            elapsed = max(time.perf_counter() - started, 1e-6)
            lead = next((t for t in turns if not t.done), turns[-1])
            tokens = sum(t.tokens for t in turns)
            if not self.batched:  # one conversation: its text and its rate
                rate = tokens / elapsed if not final else (lead.completion_tps or None)
                text = live_text(lead.pieces) if not final or lead.text is None else live_text(lead.text)
                self.run.progress(self.spec, lead.task, {"partial_text": text, "tokens_per_s": rate})
                return
            # The Run page names runs; those of the lead's sequence are the ones it can tell apart.
            same = [t for t in turns if t.task.sequence == lead.task.sequence]
            self.run.progress(
                self.spec,
                lead.task,
                {
                    "partial_text": live_text(lead.pieces),
                    # The machine's figure: every conversation's tokens over the wall time so far.
                    "tokens_per_s": tokens / elapsed if not final else None,
                    "aggregate_tokens_per_s": round(tokens / elapsed, 2),
                    "batch_width": len(turns),
                    "batch_runs": [t.task.run for t in same],
                    "batch_sequences": list(dict.fromkeys(t.task.sequence for t in turns)),
                    "run_tokens_per_s": {str(t.task.run): round(t.tokens / elapsed, 2) for t in same},
                },
            )

        def on_token(i: int, piece: str) -> None:
            turn = turns[i]
            if piece:  # an empty piece is a backend's heartbeat: a chance to stop, no text
                turn.pieces.append(piece)
                turn.tokens += 1
            now = time.perf_counter()
            if now - state["last"] >= PROGRESS_EVERY_S:
                state["last"] = now
                if hooks.should_stop():
                    raise StopRequested()
                tokens = sum(t.tokens for t in turns)
                if tokens != state["written"]:  # a write only when there is new text
                    state["written"] = tokens
                    progress()

        def on_done(i: int, completion: Completion) -> None:
            turn = turns[i]
            turn.done = True
            turn.tokens = completion.completion_tokens
            turn.text, turn.completion_tps = completion.text, completion.tokens_per_s
            if completion.finish_reason == "error":
                self._failed(
                    turn, str(completion.extra.get("error") or "the backend could not generate this response")
                )
            else:
                finished.append(self._stored(turn, completion, len(turns) if self.batched else None))
            if hooks.should_stop():  # between two stored responses is a clean place to stop
                raise StopRequested()

        start: dict[str, object] = {"partial_text": "", "tokens_per_s": None}
        self.run.progress(
            self.spec, turns[0].task, start | ({"batch_width": len(turns)} if self.batched else {})
        )
        try:
            if self.batched:
                self.backend.chat_batch(  # type: ignore[attr-defined]
                    [t.fitted.messages for t in turns], [t.settings for t in turns], on_token, on_done
                )
            else:
                (turn,) = turns
                on_done(0, self.backend.chat(turn.fitted.messages, turn.settings, lambda p: on_token(0, p)))
        except StopRequested:
            unfinished = sum(1 for t in turns if not t.done)
            hooks.event(
                "warning",
                f"stopped by user; {unfinished} unfinished response(s) of this batch were not stored"
                if self.batched
                else f"{turns[0].task.label}: stopped by user; this response was not stored",
            )
            raise
        except Exception as exc:
            # A StorybenchError or a backend bug: the unfinished turns fail, the evaluation goes on.
            error = str(exc)
            if not isinstance(exc, StorybenchError):
                log.exception("generation crashed on %s", self._wave_label(turns))
                error = f"unexpected {type(exc).__name__}: {exc} (details in the log file)"
            self._fail_unfinished(turns, error)
        # A backend that returned without reporting a turn must not leave it silently missing.
        self._fail_unfinished(turns, "the backend returned no response for this run")
        elapsed = max(time.perf_counter() - started, 1e-6)
        tokens = sum(d["completion_tokens"] for d in finished)
        if finished and self.batched:
            hooks.event(
                "info",
                f"batch of {len(turns)}: {tokens} tokens in {elapsed:.1f} s ({tokens / elapsed:.1f} tok/s aggregate)",
            )
        progress(final=True)
        # Judging waits for the wave: a judge call inside it would stall every other conversation.
        hook = hooks.on_response
        if hook is not None and finished:
            many = getattr(hook, "on_responses", None)  # AutoJudge: the responses judged together
            if callable(many):
                many(finished, self.backend)
            else:
                for doc in finished:
                    hook(doc, self.backend)

    def _fail_unfinished(self, turns: list[_Turn], error: str) -> None:
        for turn in turns:
            if not turn.done:
                turn.done = True
                self._failed(turn, error)

    def _wave_label(self, turns: list[_Turn]) -> str:
        """'generating M · film · prompt 1 (x) for runs 1, 2, 3 together', one part per (sequence, prompt)."""
        if len(turns) == 1 and not self.batched:
            return f"generating {turns[0].task.label}"
        parts: dict[tuple[str, int, str], list[int]] = {}
        for t in turns:
            parts.setdefault((t.task.sequence, t.task.prompt_index, t.task.prompt_name), []).append(
                t.task.run
            )
        named = [
            f"{seq} · prompt {index + 1} ({name}) for runs {', '.join(map(str, runs))}"
            for (seq, index, name), runs in parts.items()
        ]
        if len(named) == 1:
            return f"generating {self.spec.display_name} · {named[0]} together"
        return f"generating {self.spec.display_name}, {len(turns)} conversations together: " + "; ".join(
            named
        )
