"""The KV sequences of a batch context (slots), what their caches hold, and when they may be reused.

The reproducibility contract. llama.cpp's numbers for a position depend on
how that position was reached: evaluating a prompt in one call or as 38 + 1
tokens differs, and by how much differs from CPU to CPU (AVX2 and AVX-512
kernels disagree on different cases). So the cache is only ever used where
it is provably the same computation as a fresh one:

- A prompt is always evaluated as from an empty sequence, in chunks of
  PROMPT_CHUNK_TOKENS at fixed positions (0-63, 64-127, ...), one sequence
  per call.
- A cached prefix (the sequence's own, or another slot's, copied) is reused
  only in whole chunks that were evaluated exactly that way: same tokens,
  same chunk boundaries. Tokens generated one at a time are never reused for
  a later prompt; they are re-evaluated in its chunks.
- A prompt identical to the last one a slot evaluated (a second run of the
  same first prompt, a request repeated after a stop) reuses the whole cache
  *and the logits saved at the end of that evaluation*, so nothing is
  re-evaluated and nothing differs.
- Every row of a generation step is computed the way it would be alone: ggml's
  tiled matrix kernels for every call, checked when a batch context is made,
  or at most 7 tokens per step (llama_kernels.py).

So a response depends on the model file, the llama.cpp build and CPU
kernels, the thread count and flash-attention setting, its prompt tokens and
its sampling settings and seed — and on nothing else: not on the batch
width, other runs, what the cache held, a stop or a resume. `engine_info`
(llama.py) is stored with every response so the first list can be checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Prompts are evaluated in chunks of this many tokens at fixed positions, so that a cached
# chunk is bitwise what a fresh evaluation computes (llama_batch.py). 64-token chunks
# process prompts at 0.83x the speed of 512-token ones on the bundled model (AMD EPYC,
# AVX-512 build, 2 threads) and let a later turn reuse all but the last <64 prompt tokens.
PROMPT_CHUNK_TOKENS = 64


def balanced_parts(items: list[Any], most: int) -> list[list[Any]]:
    """items cut, in order, into the fewest parts of at most `most`, as equal as can be."""
    if not items:
        return []
    n_parts = -(-len(items) // most)
    size, extra = divmod(len(items), n_parts)
    parts, start = [], 0
    for k in range(n_parts):
        end = start + size + (1 if k < extra else 0)
        parts.append(items[start:end])
        start = end
    return parts


def longest_common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass
class Slot:
    """One KV sequence of the batch context and what its cache holds.

    `canon`: the cache's first `canon` tokens are whole prompt chunks evaluated as from an
    empty sequence (reusable by any prompt that starts with them). `saved`: the last prompt
    this slot evaluated and the logits at its end, valid while the cache still starts with it.
    """

    seq_id: int
    tokens: list[int] = field(default_factory=list)
    canon: int = 0
    saved: tuple[tuple[int, ...], np.ndarray] | None = None

    def reusable(self, prompt: Sequence[int]) -> tuple[int, bool]:
        """How many of prompt's tokens this cache can serve exactly, and whether with saved logits."""
        if self.saved is not None and len(self.saved[0]) == len(prompt) and self.saved[0] == tuple(prompt):
            return len(prompt), True
        n = min(longest_common_prefix(self.tokens, prompt), self.canon, len(prompt) - 1)
        return max(n, 0) // PROMPT_CHUNK_TOKENS * PROMPT_CHUNK_TOKENS, False

    def keep_only(self, n: int) -> None:
        """Bookkeeping for a cache cut to its first n tokens."""
        del self.tokens[n:]
        self.canon = min(self.canon, n)
        if self.saved is not None and len(self.saved[0]) > n:
            self.saved = None

    def forget(self) -> None:
        self.tokens.clear()
        self.canon, self.saved = 0, None


def gap_fillers(slots: Sequence[Slot], ids: set[int], n_ctx_seq: int) -> dict[int, list[Slot]]:
    """Idle slots between the active ones (seq ids `ids`), by the active seq id they precede.

    With one KV stream per sequence, llama.cpp puts only consecutive seq ids in one
    ubatch: generating in slots 0 and 2 would cost two passes over the weights. A
    placeholder token in slot 1 (decoded, then removed; it changes nobody's numbers)
    costs far less on a memory-bound CPU.
    """
    fillers: dict[int, list[Slot]] = {}
    waiting: list[Slot] = []
    for slot in slots[min(ids) : max(ids) + 1]:
        if slot.seq_id in ids:
            if waiting:
                fillers[slot.seq_id] = waiting
            waiting = []
        elif len(slot.tokens) < n_ctx_seq:
            waiting.append(slot)
        else:
            waiting = []  # no room for a placeholder: this gap stays (two passes, still correct)
    return fillers
