"""Local GGUF models through llama-cpp-python: loading, the backend, and JSON-schema grammars.

For generation, `llama_cpp` is imported only by the llama*.py modules of this package (this
one, the chat templates, the batch decoder and its sampling), which map its failures to ours;
hardware.py reads its build flags.

Every model file passes `validate_gguf` before llama.cpp sees it, so a
missing, truncated or foreign file is a `ModelFileError`, never a crash in C.

Chat templates: llama_template.py (the GGUF's own, or a plain transcript for a model
without one).

Generation. `Llama` loads the model and tokenizes; every generation, one
conversation or several, runs on the batch decoder (backends/llama_batch.py),
which owns the KV cache and its reproducibility rules. `prompt_tokens` and
`completion_tokens` are exact token counts.
"""

from __future__ import annotations

import gc
import json
import logging
import os
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import llama_cpp
from llama_cpp import Llama, LlamaGrammar

from ..errors import ConfigError, ContextOverflowError, ModelError, ModelFileError
from . import llama_kernels
from .base import BatchTokenCallback, Completion, GenerationSettings, Message, TokenCallback
from .llama_batch import BatchDecoder, BatchRequest
from .llama_slots import PROMPT_CHUNK_TOKENS
from .llama_template import (
    CHAT_FORMATS,
    PLAIN_TRANSCRIPT,
    PLAIN_TRANSCRIPT_TEMPLATE,
    PromptTemplate,
    choose_template,
    format_prompt,
)

if TYPE_CHECKING:
    from ..config import GenerationSettingsConfig, ModelSpec
    from ..fitting import GpuPlan
    from ..gguf_info import GGUFInfo

# The template names are imported from here too (backends.llama is the local model's module).
__all__ = [
    "CHAT_FORMATS",
    "PLAIN_TRANSCRIPT",
    "PLAIN_TRANSCRIPT_TEMPLATE",
    "LlamaBackend",
    "PromptTemplate",
    "choose_template",
    "create_llama_backend",
    "format_prompt",
    "resolve_model_path",
]

log = logging.getLogger(__name__)

DEFAULT_N_BATCH = 512
STUB_N_CTX = 256


@lru_cache(maxsize=1)
def cpu_features() -> str:
    """The CPU features this llama.cpp build uses, e.g. "AVX AVX2 AVX512 F16C FMA" (its numbers depend on them)."""
    from ..hardware import llama_build_info

    return " ".join(name for name, on in llama_build_info()["cpu_features"].items() if on)


class _Llama(Llama):
    """`Llama` with llama.cpp's repacked CPU kernels turned off.

    The repacked kernels (Q4_K "8x8" tensors) round differently with the number of tokens in
    a decode call, so a run's text would depend on what else was batched with it
    (backends/llama_batch.py). Llama has no argument for it: turn them off as Llama.__init__
    builds its model params.
    """

    @property
    def model_params(self) -> Any:
        return self._model_params

    @model_params.setter
    def model_params(self, params: Any) -> None:
        params.use_extra_bufts = False
        self._model_params = params


# --- the backend ----------------------------------------------------------------------


class LlamaBackend:
    """One loaded GGUF model: chat with streaming, prefix reuse, grammars for JSON schemas."""

    supports_json_schema = True
    supports_batch = True  # chat_batch: backends/llama_batch.py

    def __init__(
        self,
        llm: _Llama,
        *,
        name: str,
        model_path: Path,
        template: PromptTemplate,
        gpu_plan: GpuPlan | None = None,
        load_note: str = "",
        gguf_info: GGUFInfo | None = None,
        n_ctx: int | None = None,
        n_threads: int = 0,
        flash_attn: bool = False,
    ) -> None:
        self._llm: _Llama | None = llm
        self.name = name
        self.model_path = model_path
        self.gguf_info = gguf_info  # the header read before loading (batch sizing reuses it)
        self.template = template
        self.gpu_plan = gpu_plan
        self.load_note = load_note
        # The decoder's context size per conversation (the Llama's own context is a small stub).
        self._n_ctx = int(n_ctx or llm.n_ctx())
        self.n_threads = n_threads
        self.flash_attn = flash_attn
        self._bos = int(llm.token_bos())
        self._add_bos = bool(llm._model.add_bos_token()) and self._bos >= 0
        self._grammars: dict[str, LlamaGrammar] = {}
        self._batch_decoder: BatchDecoder | None = None

    # -- protocol ---------------------------------------------------------------------

    def chat(
        self,
        messages: Sequence[Message],
        settings: GenerationSettings,
        on_token: TokenCallback | None = None,
    ) -> Completion:
        """Stream the next assistant turn (a batch of one); StopRequested from on_token aborts and propagates."""
        stream = None if on_token is None else (lambda _i, piece: on_token(piece))
        done = self.chat_batch([messages], [settings], stream)[0]
        if done.finish_reason == "error":  # the decoder's only failed Completion: the prompt does not fit
            if done.prompt_tokens >= self._n_ctx:
                raise ContextOverflowError(self._overflow_message(done.prompt_tokens))
            raise ContextOverflowError(f"{self.name}: {done.extra.get('error') or 'the prompt does not fit'}")
        return done

    def chat_batch(
        self,
        conversations: Sequence[Sequence[Message]],
        settings: Sequence[GenerationSettings],
        on_token: BatchTokenCallback | None = None,
        on_done: Callable[[int, Completion], None] | None = None,
    ) -> list[Completion]:
        """Generate one turn of several conversations together (backends/llama_batch.py)."""
        if len(conversations) != len(settings):
            raise ModelError(f"{len(conversations)} conversations but {len(settings)} generation settings")
        if not conversations:
            return []
        requests = []
        for messages, s in zip(conversations, settings, strict=True):
            grammar = None
            if s.json_schema is not None:
                built = self._grammar_for(s.json_schema)
                grammar = (built._grammar, built._root)
            requests.append(
                BatchRequest(
                    prompt=self.tokenize_prompt(messages),
                    settings=s,
                    stops=(*self.template.stop, *s.stop),
                    grammar=grammar,
                )
            )
        decoder = self.batch_decoder(len(requests))
        return decoder.generate(requests, self.template.name, on_token, on_done, engine=self.engine_info)

    def batch_decoder(self, width: int) -> BatchDecoder:
        """The decoder every generation runs on, (re)created when it has fewer sequences than `width`."""
        decoder = self._batch_decoder
        if decoder is not None and not decoder.closed and decoder.n_seq >= width:
            return decoder
        if decoder is not None:
            decoder.close()
        decoder = self._batch_decoder = BatchDecoder(self._loaded(), width, self._n_ctx)
        log.info("%s: batch context for %d conversations of %d tokens", self.name, width, decoder.n_ctx_seq)
        return decoder

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return len(self.tokenize_prompt(messages))

    def context_size(self) -> int:
        return self._n_ctx

    @property
    def kv_cache_tokens(self) -> int:
        """Tokens the fullest KV sequence holds now (0 before the first generation)."""
        self._loaded()
        decoder = self._batch_decoder
        if decoder is None or decoder.closed:
            return 0
        return max((len(t) for t in decoder.slot_tokens()), default=0)

    @property
    def engine_info(self) -> dict[str, Any]:
        """What a response's exact text depends on besides its prompt and settings (stored with it)."""
        decoder = self._batch_decoder if self._batch_decoder and not self._batch_decoder.closed else None
        # The decoder's checked kernels once it exists; before, what ggml's variables promise.
        mode = decoder.cpu_matmul if decoder else llama_kernels.effective_mode()
        step = decoder.max_step_tokens if decoder else llama_kernels.step_limit(mode)
        return {
            "llama_cpp_python": llama_cpp.__version__,
            "cpu_features": cpu_features(),
            "n_threads": self.n_threads,
            "flash_attn": self.flash_attn,
            "prompt_chunk_tokens": PROMPT_CHUNK_TOKENS,
            "cpu_matmul": mode,
            "max_step_tokens": step,
            "template": self.template.name,
            "model_file": self.model_path.name,
        }

    def close(self) -> None:
        llm, self._llm = self._llm, None
        self._grammars.clear()
        if llm is not None:
            llm.close()
            del llm
            gc.collect()

    # -- helpers a batched backend can reuse -------------------------------------------

    def tokenize_prompt(self, messages: Sequence[Message]) -> list[int]:
        """Tokens of the formatted conversation, with exactly one BOS where the model wants it."""
        llm = self._loaded()
        text = format_prompt(messages, self.template)
        tokens = llm.tokenize(text.encode("utf-8"), add_bos=False, special=self.template.parse_special)
        if self._add_bos and (not tokens or tokens[0] != self._bos):
            tokens.insert(0, self._bos)  # GGUF templates usually write "{{ bos_token }}" themselves
        return tokens

    def _grammar_for(self, schema: dict[str, Any]) -> LlamaGrammar:
        """A llama.cpp grammar for a JSON schema; fails loudly rather than falling back to any JSON."""
        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            try:
                grammar = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
            except Exception as exc:
                raise ModelError(
                    f"cannot turn the judge's JSON schema into a llama.cpp grammar ({type(exc).__name__}: {exc}) — "
                    "simplify the schema (objects, strings, integers, enums)"
                ) from exc
            self._check_grammar(grammar)
            self._grammars[key] = grammar
        return self._grammars[key]

    def _check_grammar(self, grammar: LlamaGrammar) -> None:
        # llama.cpp returns NULL for a grammar it cannot parse; added to a sampler
        # chain as is, that would crash on the first token. Parse it once here.
        llm = self._loaded()
        sampler = llama_cpp.llama_sampler_init_grammar(
            llm._model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
        )
        if not sampler:
            raise ModelError(
                "llama.cpp rejected the grammar built from the judge's JSON schema — simplify the schema"
            )
        llama_cpp.llama_sampler_free(sampler)

    def _overflow_message(self, n_prompt: int) -> str:
        return (
            f"{self.name}: the prompt takes {n_prompt} tokens but the context holds {self._n_ctx} — "
            "raise generation.n_ctx or shorten the conversation"
        )

    def _loaded(self) -> _Llama:
        if self._llm is None:
            raise ModelError(f"{self.name}: the model was closed; load it again")
        return self._llm


# --- loading --------------------------------------------------------------------------


def resolve_model_path(spec: ModelSpec) -> Path:
    """The local GGUF a spec names: assembled, downloaded or given."""
    if spec.kind == "bundled":
        from ..bundled import ensure_bundled_model

        return ensure_bundled_model(builtin=spec.builtin)
    if spec.kind == "hf":
        from ..hub import ModelRef, resolve_model

        assert spec.repo_id and spec.filename  # checked by ModelSpec
        ref = ModelRef(spec.repo_id, spec.filename, subdirectory=spec.subdirectory, revision=spec.revision)
        return resolve_model(ref)
    if spec.kind == "path":
        from ..paths import confine_model_path

        return confine_model_path(spec.path or "")  # only the operator's model folders, checked at load
    raise ConfigError(f"model '{spec.display_name}': kind '{spec.kind}' is not a GGUF model")


def create_llama_backend(spec: ModelSpec, generation: GenerationSettingsConfig) -> LlamaBackend:
    """Resolve, validate and load a GGUF model; choose GPU layers, threads and chat template."""
    from ..fitting import GpuPlan, plan_for_model
    from ..gguf_info import validate_gguf
    from ..hardware import hardware_snapshot

    path = resolve_model_path(spec)
    info = validate_gguf(path)  # before llama.cpp: a bad file must not crash inside C
    chat_format = str(spec.options.get("chat_format") or "auto")
    choose_template(info, chat_format)  # a bad chat_format fails here, before the slow load
    snapshot = hardware_snapshot(cpu_sample_s=0)
    if spec.n_gpu_layers is not None:
        plan = GpuPlan(
            spec.n_gpu_layers, info.block_count, 0, 0, f"n_gpu_layers {spec.n_gpu_layers} set in the config"
        )
    else:
        plan = plan_for_model(path, generation.n_ctx, generation.vram_limit_percent, snapshot=snapshot)
    n_threads = int(spec.options.get("n_threads") or snapshot.cpu_count_physical or os.cpu_count() or 1)
    # Applied at import already (quietly); here a bad STORYBENCH_CPU_MATMUL is a ConfigError.
    llama_kernels.apply()
    flash_attn = spec.options.get("flash_attn", False)
    if not isinstance(flash_attn, bool):
        raise ConfigError(
            f"model '{spec.display_name}': options.flash_attn = {flash_attn!r} must be true or false"
        )
    kwargs: dict[str, Any] = {}
    if plan.gpu_index is not None and plan.n_gpu_layers != 0:
        kwargs["main_gpu"] = plan.gpu_index
    try:
        llm = _Llama(
            model_path=str(path),
            # Generation runs on the batch decoder's own context (llama_batch.py), sized there;
            # the Llama's context only needs to exist, so it is kept small.
            n_ctx=min(STUB_N_CTX, generation.n_ctx),
            n_batch=min(DEFAULT_N_BATCH, STUB_N_CTX, generation.n_ctx),
            n_gpu_layers=plan.n_gpu_layers,
            n_threads=n_threads,
            seed=generation.seed,
            # Full-size sliding-window cache (Gemma 3): without it llama.cpp cannot trim the
            # cache to a common prefix and re-evaluates the whole conversation every turn.
            swa_full=True,
            # Flash attention is off by default although it was 5% faster here (bench/batched.py
            # --flash-attn): with more than one thread its CPU kernel rounds differently with the
            # number of sequences in a decode call, so batched runs would stop reproducing the
            # sequential texts. options.flash_attn = true trades that for the speed.
            flash_attn=flash_attn,
            verbose=False,
            **kwargs,
        )
    except (ValueError, RuntimeError, OSError) as exc:
        raise ModelFileError(
            f"llama.cpp could not load {path} ({exc}) — the file may be damaged (delete and download it "
            f"again) or use an architecture ('{info.architecture}') this llama-cpp-python "
            f"{llama_cpp.__version__} does not support; if memory ran out, lower generation.n_ctx or n_gpu_layers"
        ) from exc
    bos = llm.token_bos()
    eos = llm.token_eos()
    template = choose_template(
        info,
        chat_format,
        bos_token=llm._model.token_get_text(bos) if bos >= 0 else "",
        eos_token=llm._model.token_get_text(eos) if eos >= 0 else "",
    )
    note = f"{plan.reason}; template {template.name}; n_ctx {generation.n_ctx}; {n_threads} threads"
    return LlamaBackend(
        llm,
        name=spec.display_name,
        model_path=path,
        template=template,
        gpu_plan=plan,
        load_note=note,
        gguf_info=info,
        n_ctx=generation.n_ctx,
        n_threads=n_threads,
        flash_attn=flash_attn,
    )
