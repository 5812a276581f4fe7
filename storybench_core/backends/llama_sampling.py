"""Token sampling for the batch decoder: llama-cpp-python's sampler chain, and JSON-schema grammars.

The chain copies `Llama.create_completion` (top_k 40, typical_p 1, top_p, min_p 0.05,
temperature, dist(seed); greedy at temperature 0), so both paths sample alike.

A grammar is checked after sampling (`Sampling.grammar_checked`): checking it against every
token of the vocabulary before each step (262k for Gemma 3) is what makes constrained
generation slow, while a model that follows the format mostly picks an allowed token anyway.
"""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp
import numpy as np

from ..errors import ModelError
from .base import GenerationSettings

# Highest-scored tokens a rejected sample is re-checked among before the whole vocabulary.
GRAMMAR_SHORTLIST = 1024

# llama.cpp's llama_token_data: token id, logit, probability (12 bytes, no padding).
TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])

# llama-cpp-python's create_completion defaults; copied so both paths sample alike.
TOP_K = 40
MIN_P = 0.05
TYPICAL_P = 1.0


class Sampling:
    """Samplers for one model's vocabulary, and a reusable whole-vocabulary candidate array."""

    def __init__(self, vocab: Any) -> None:
        self._vocab = vocab
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
        self._candidates: np.ndarray | None = None  # the whole vocabulary, for a grammar resample

    def make_chain(self, settings: GenerationSettings) -> Any:
        """A sampler chain for these settings (free it with llama_sampler_free)."""
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if settings.temperature == 0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            for sampler in (
                llama_cpp.llama_sampler_init_top_k(TOP_K),
                llama_cpp.llama_sampler_init_typical(TYPICAL_P, 1),
                llama_cpp.llama_sampler_init_top_p(settings.top_p, 1),
                llama_cpp.llama_sampler_init_min_p(MIN_P, 1),
                llama_cpp.llama_sampler_init_temp(settings.temperature),
                # The seed is a uint32 in llama.cpp.
                llama_cpp.llama_sampler_init_dist(settings.seed & 0xFFFFFFFF),
            ):
                llama_cpp.llama_sampler_chain_add(chain, sampler)
        return chain

    def make_grammar(self, grammar: tuple[str, str] | None) -> Any:
        """A grammar sampler for (GBNF text, root rule), or None."""
        if grammar is None:
            return None
        sampler = llama_cpp.llama_sampler_init_grammar(self._vocab, grammar[0].encode(), grammar[1].encode())
        if not sampler:
            raise ModelError(
                "llama.cpp rejected the grammar built from the JSON schema — simplify the schema"
            )
        return sampler

    def sample_logits(self, chain: Any, logits: np.ndarray) -> int:
        """What llama_sampler_sample does with a context's row, for saved logits: every token, the chain, accept."""
        token = self.apply(chain, self.all_candidates(logits))
        llama_cpp.llama_sampler_accept(chain, token)
        return token

    def grammar_checked(
        self, grammar: Any, chain: Any, settings: GenerationSettings, logits: np.ndarray, token: int
    ) -> int:
        """The sampled token if the grammar allows it, else one sampled among the allowed ones.

        The token is checked alone; only when the grammar rejects it are the logits filtered
        by the grammar and sampled again (as llama.cpp's own tools do).
        """
        one = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(token, 0.0, 0.0))
        single = llama_cpp.llama_token_data_array(one, 1, -1, False)
        llama_cpp.llama_sampler_apply(grammar, ctypes.byref(single))
        if one[0].logit == float("-inf"):
            token = self.resample_with_grammar(grammar, chain, settings, logits)
            if token < 0:
                raise ModelError("the grammar allows no token here — the JSON schema cannot be completed")
        if not llama_cpp.llama_vocab_is_eog(self._vocab, token):  # an end token ends the job instead
            llama_cpp.llama_sampler_accept(grammar, token)
        return token

    def resample_with_grammar(
        self, grammar: Any, chain: Any, settings: GenerationSettings, logits: np.ndarray
    ) -> int:
        """Sample among the tokens the grammar allows: from the best-scored ones when that is exact.

        The sampler chain keeps at most TOP_K tokens (1 when greedy), the highest-scored
        allowed ones. If the GRAMMAR_SHORTLIST highest-scored tokens already hold that many
        allowed tokens, no token outside them could be chosen, so the grammar is checked
        on the shortlist only; otherwise on the whole vocabulary.
        """
        need = 1 if settings.temperature == 0 else TOP_K
        if self.n_vocab > GRAMMAR_SHORTLIST:
            ids = np.argpartition(logits, -GRAMMAR_SHORTLIST)[-GRAMMAR_SHORTLIST:]
            short = np.zeros(GRAMMAR_SHORTLIST, dtype=TOKEN_DATA)
            short["id"], short["logit"] = ids, logits[ids]
            self.apply(grammar, short)
            allowed = short[np.isfinite(short["logit"])]
            if len(allowed) >= need:
                return self.apply(chain, np.ascontiguousarray(allowed))
        cand = self.all_candidates(logits)
        self.apply(grammar, cand)
        return self.apply(chain, cand)

    def all_candidates(self, logits: np.ndarray) -> np.ndarray:
        """The whole vocabulary as a llama_token_data array, in token order (reused buffer)."""
        if self._candidates is None or len(self._candidates) != self.n_vocab:
            self._candidates = np.zeros(self.n_vocab, dtype=TOKEN_DATA)
        cand = self._candidates
        # All three columns, every time: the samplers sort the array in place.
        cand["id"], cand["logit"], cand["p"] = np.arange(self.n_vocab, dtype=np.int32), logits, 0.0
        return cand

    @staticmethod
    def apply(sampler: Any, candidates: np.ndarray) -> int:
        """Run a sampler on a llama_token_data array in place; the selected token, or -1."""
        array = llama_cpp.llama_token_data_array(
            candidates.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data)), len(candidates), -1, False
        )
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
        if array.selected < 0:
            return -1
        # Samplers may reorder the array (it stays in place): read the id there.
        return int(array.data[array.selected].id)
