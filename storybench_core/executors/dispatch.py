"""Which conversations a free slot gets next: plain bookkeeping, no Ray and no store.

A share is whole conversations of one model (a conversation's turns stay on one slot, so its
prefix stays in that slot's KV cache). A slot keeps the model it holds while that model has
pending conversations; a slot whose model is done switches to the model the fewest slots hold.
Shares shrink as the pending work does (guided self-scheduling: the pending conversations of a
model over the slots that model deserves), so a slot gets a batch worth decoding together early
and the last shares are small enough that no slot idles long while another finishes. A share is
never smaller than an even split of the model's conversations over the slots, up to BATCH_FLOOR:
4 conversations on 2 slots are 2 + 2 (two batches of two), not 2 + 1 + 1.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

# (model index, sequence, run): one conversation, as tasks.Task.conversation names it.
ConversationId = tuple[int, str, int]
# A share of this many conversations is already a full batch on a CPU (bench/batched.py: 8 runs
# decode no faster than 4-7); the even split is kept as a floor only up to it.
BATCH_FLOOR = 8


@dataclass(frozen=True)
class Share:
    """Whole conversations of one model, handed to one slot."""

    model_index: int
    conversations: tuple[ConversationId, ...]


class DispatchPlan:
    """The conversations not yet handed out, by model, in plan order."""

    def __init__(self, pending: Iterable[ConversationId], n_slots: int, *, max_share: int | None = None):
        self.n_slots = max(1, n_slots)
        self.max_share = max_share
        self._pending: dict[int, list[ConversationId]] = {}
        for conv in pending:
            self._pending.setdefault(conv[0], []).append(conv)
        self._even = {m: math.ceil(len(convs) / self.n_slots) for m, convs in self._pending.items()}

    @property
    def remaining(self) -> int:
        return sum(len(v) for v in self._pending.values())

    def pending_models(self) -> list[int]:
        return [m for m, convs in self._pending.items() if convs]

    def share_size(self, model_index: int) -> int:
        """ceil(pending of this model / the slots its share of the pending work is worth), at least
        the even split (up to BATCH_FLOOR), at most what is pending and max_share."""
        mine, total = len(self._pending.get(model_index, ())), self.remaining
        if not mine:
            return 0
        slots = max(1, round(self.n_slots * mine / total))
        size = max(math.ceil(mine / slots), min(mine, self._even.get(model_index, 1), BATCH_FLOOR))
        return max(1, min(size, self.max_share) if self.max_share else size)

    def choose_model(self, loaded: int | None, held: Counter[int]) -> int | None:
        """The slot's own model while it has pending conversations, else the least-held pending model."""
        models = self.pending_models()
        if not models:
            return None
        if loaded in models:
            return loaded
        # Fewest slots holding it first; then the most pending work; then plan order.
        return min(models, key=lambda m: (held.get(m, 0), -len(self._pending[m]), m))

    def take(self, loaded: int | None, held: Counter[int]) -> Share | None:
        """The next share for a free slot holding `loaded` (None: nothing loaded yet)."""
        model = self.choose_model(loaded, held)
        if model is None:
            return None
        size = self.share_size(model)
        convs, self._pending[model] = self._pending[model][:size], self._pending[model][size:]
        return Share(model, tuple(convs))

    def give_back(self, conversations: Iterable[ConversationId]) -> None:
        """Conversations to hand out again (their slot died): first in line for their model."""
        back: dict[int, list[ConversationId]] = {}
        for conv in conversations:
            back.setdefault(conv[0], []).append(conv)
        for model, convs in back.items():
            self._pending[model] = convs + [c for c in self._pending.get(model, []) if c not in convs]
