"""What an evaluation asks: tasks (model × sequence × run × prompt), their keys, seeds and prompts.

Plain planning, no model and no store: the scheduler (scheduler.py) executes
these, the job queue counts them, the judge finds the responses by them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import catalog
from .backends.base import Message
from .config import RunConfig
from .errors import ContextOverflowError

# Seeds: run r (1-based), prompt i (0-based) → base + 1000·(r-1) + i.
SEED_RUN_STRIDE = 1000
# The live progress keeps the end of the text being written, not all of it: it is
# rewritten into the evaluation's row at every progress write.
LIVE_TEXT_CHARS = 4000


def live_text(pieces: Sequence[str] | str) -> str:
    """The last LIVE_TEXT_CHARS characters of the text so far (an ellipsis marks a cut start)."""
    text = pieces if isinstance(pieces, str) else "".join(pieces)
    return text if len(text) <= LIVE_TEXT_CHARS else "…" + text[-(LIVE_TEXT_CHARS - 1) :]


@dataclass(frozen=True)
class Task:
    model_index: int
    model_name: str
    sequence: str
    run: int  # 1-based
    prompt_index: int  # 0-based position in the sequence
    prompt_name: str
    prompt_text: str

    def key(self, evaluation_id: str) -> str:
        return task_key(evaluation_id, self.model_name, self.sequence, self.run, self.prompt_index)

    @property
    def conversation(self) -> tuple[int, str, int]:
        return (self.model_index, self.sequence, self.run)

    @property
    def label(self) -> str:
        """'model · sequence · run 2 · prompt 3 (name)', as the console says it."""
        return (
            f"{self.model_name} · {self.sequence} · run {self.run} · "
            f"prompt {self.prompt_index + 1} ({self.prompt_name})"
        )


def task_key(evaluation_id: str, model_name: str, sequence: str, run: int, prompt_index: int) -> str:
    return f"{evaluation_id}|{model_name}|{sequence}|{run}|{prompt_index}"


def seed_for(base_seed: int, run: int, prompt_index: int) -> int:
    return base_seed + SEED_RUN_STRIDE * (run - 1) + prompt_index


def plan_tasks(config: RunConfig) -> list[Task]:
    """Every task in execution order: model, then sequence, then run, then prompt."""
    tasks = []
    for mi, model in enumerate(config.models):
        for sid in config.sequences:
            seq = catalog.get_sequence(sid)
            for run in range(1, config.generation.runs + 1):
                for pi, prompt in enumerate(seq.prompts):
                    tasks.append(Task(mi, model.display_name, sid, run, pi, prompt.name, prompt.text))
    return tasks


def group_conversations(tasks: Sequence[Task]) -> list[list[Task]]:
    """Tasks grouped by (model, sequence, run), each group in prompt order."""
    groups: dict[tuple[int, str, int], list[Task]] = {}
    for t in tasks:
        groups.setdefault(t.conversation, []).append(t)
    return [sorted(g, key=lambda t: t.prompt_index) for g in groups.values()]


# --- context window -------------------------------------------------------------


@dataclass
class FittedMessages:
    messages: list[Message]
    dropped_turns: int
    prompt_tokens: int


def fit_to_context(
    system: list[Message],
    history: list[tuple[Message, Message]],
    new_prompt: Message,
    count_tokens: Callable[[Sequence[Message]], int],
    budget_tokens: int,
) -> FittedMessages:
    """Drop the oldest (prompt, answer) turns until the conversation fits the budget.

    The new prompt is never cut; if it does not fit with the system prompt
    alone, that is a ContextOverflowError for this task.
    """
    dropped = 0
    while True:
        turns = [m for pair in history[dropped:] for m in pair]
        messages = [*system, *turns, new_prompt]
        tokens = count_tokens(messages)
        if tokens <= budget_tokens:
            return FittedMessages(messages, dropped, tokens)
        if dropped >= len(history):
            raise ContextOverflowError(
                f"the prompt needs {tokens} tokens but only {budget_tokens} fit "
                "(n_ctx minus max_tokens); raise generation.n_ctx or lower generation.max_tokens"
            )
        dropped += 1
