"""Which CPU matrix kernels llama.cpp multiplies the weights with, and how many rows a call may hold.

llama.cpp (0.3.36's ggml) has two ways to multiply K-quant weights (Q4_K, Q6_K, ...)
on a CPU: per-row dot products, and "tiled" kernels that it takes only for calls
of 8 rows or more. The two round differently, so by default a token decoded
alongside 7 others gets other logits than the same token decoded alone, and a
batched text stops matching its one-at-a-time text. Two ways to keep the
reproducibility contract (llama_slots.py):

- "tiled" (the default): ggml is told to take the tiled kernels for every call
  (`GGML_CPU_TILED_MM_FORCE=1`, read once per process at its first matrix
  product), so every call, 1 row or 64, computes each row the same way and a
  step may hold every generating conversation. One conversation alone decodes
  slower this way (the tiled kernels unpack the weights each call), many
  together much faster.
- "mixed" (`STORYBENCH_CPU_MATMUL=mixed`): llama.cpp's own choice, the fastest
  for one conversation at a time; a step then holds at most 7 tokens, so
  batches stay on the per-row kernels (two calls of 4 for 8 conversations).

(`GGML_CPU_TILED_MM=0`, ggml's own switch, turns the tiled kernels off
everywhere: also consistent, slower on prompts; reported as "vec_dot".)

The choice is not taken on trust: every batch context of 8 or more sequences
first decodes 8 different tokens one by one and then together, and compares
the logits bit for bit (`rows_agree`, from `BatchDecoder`); where they differ (the variable was read
before we set it, another llama.cpp build), steps are capped at 7 and a warning
says why. The mode and the cap are part of every response's `engine`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import llama_cpp
import numpy as np

from ..errors import ConfigError

log = logging.getLogger(__name__)

ENV = "STORYBENCH_CPU_MATMUL"
MODES = ("tiled", "mixed")
GGML_FORCE = "GGML_CPU_TILED_MM_FORCE"
GGML_ENABLE = "GGML_CPU_TILED_MM"

# llama.cpp takes its tiled kernels for calls of this many rows or more (ggml-cpu/tiled).
TILED_MIN_ROWS = 8
# So in "mixed" mode a decode call holds at most this many tokens.
MIXED_STEP_TOKENS = TILED_MIN_ROWS - 1

_set_here = False  # whether apply() set GGML_FORCE (a user's own value is theirs)


def requested_mode() -> str:
    """The mode STORYBENCH_CPU_MATMUL asks for ("tiled" when unset); ConfigError when unknown."""
    raw = os.environ.get(ENV, "").strip().lower()
    if not raw:
        return "tiled"
    if raw not in MODES:
        raise ConfigError(
            f"{ENV}={os.environ.get(ENV)!r} is not a CPU matrix-kernel mode — use one of "
            f"{', '.join(MODES)} (or unset it for tiled)"
        )
    return raw


def apply() -> str:
    """Tell ggml which kernels to take, before the process's first matrix product; the effective mode.

    A value the user set for ggml's own variables is left alone.
    """
    global _set_here
    if requested_mode() == "tiled" and GGML_FORCE not in os.environ:
        os.environ[GGML_FORCE] = "1"
        _set_here = True
    return effective_mode()


def effective_mode() -> str:
    """What ggml's variables say it will do: "tiled", "vec_dot" or "mixed"."""
    if os.environ.get(GGML_ENABLE, "").strip() == "0":
        return "vec_dot"
    if os.environ.get(GGML_FORCE, "").strip() == "1":
        return "tiled"
    return "mixed"


def step_limit(mode: str) -> int | None:
    """Most tokens per decode call that keep every row's numbers the same (None: no limit)."""
    return None if mode in ("tiled", "vec_dot") else MIXED_STEP_TOKENS


def without_our_kernel_choice(env: dict[str, str]) -> dict[str, str]:
    """env for another program (llama-server in a benchmark) without the variable apply() set."""
    out = dict(env)
    if _set_here:
        out.pop(GGML_FORCE, None)
    return out


def rows_agree(ctx: Any, batch: Any, n_vocab: int) -> bool:
    """Do TILED_MIN_ROWS tokens decoded together get bitwise the logits each gets decoded alone?

    Different tokens from across the vocabulary (one token can agree by chance: Gemma's BOS
    does), each at position 0 of its own sequence. On an empty context of at least
    TILED_MIN_ROWS sequences (a new batch context), empty again afterwards; `batch` holds at
    least TILED_MIN_ROWS tokens. Costs TILED_MIN_ROWS + 1 one-token decodes.
    """
    memory = llama_cpp.llama_get_memory(ctx)
    tokens = [n_vocab * (k + 1) // (TILED_MIN_ROWS + 1) for k in range(TILED_MIN_ROWS)]

    def decode(rows: list[int]) -> list[np.ndarray] | None:
        for seq, token in enumerate(rows):  # each token at position 0 of its own sequence
            batch.token[seq], batch.pos[seq], batch.n_seq_id[seq] = token, 0, 1
            batch.seq_id[seq][0], batch.logits[seq] = seq, 1
        batch.n_tokens = len(rows)
        try:
            if llama_cpp.llama_decode(ctx, batch) != 0:
                return None
            return [
                np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, i), shape=(n_vocab,)).copy()
                for i in range(len(rows))
            ]
        finally:
            llama_cpp.llama_memory_clear(memory, True)

    alone = [decode([token]) for token in tokens]
    together = decode(tokens)
    if together is None:
        return False
    return all(a is not None and np.array_equal(a[0], b) for a, b in zip(alone, together, strict=True))


def checked_step_limit(ctx: Any, batch: Any, n_vocab: int, n_seq: int) -> tuple[str, int | None]:
    """(kernel mode, most tokens per decode call) for a new batch context of n_seq sequences.

    Where the mode promises the same numbers at any row count, a context wide enough to
    tell checks it (rows_agree); a failed check falls back to MIXED_STEP_TOKENS, with a warning.
    """
    mode = effective_mode()
    limit = step_limit(mode)
    if limit is None and n_seq >= TILED_MIN_ROWS and not rows_agree(ctx, batch, n_vocab):
        log.warning(
            "llama.cpp gives a token decoded with %d others other logits than decoded alone "
            "(CPU matrix kernels: %s expected); generation steps are capped at %d tokens so texts "
            "still do not depend on the batch width (llama_kernels.py)",
            TILED_MIN_ROWS - 1,
            mode,
            MIXED_STEP_TOKENS,
        )
        return "mixed", MIXED_STEP_TOKENS
    return mode, limit


# As early as the llama backends are imported, before any llama.cpp matrix product in this
# process (ggml reads its switch once); a bad value is reported where a model is loaded.
try:
    apply()
except ConfigError:
    pass
