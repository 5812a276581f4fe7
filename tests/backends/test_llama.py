"""The llama.cpp backend: prompt formatting and file checks (fast), real generation (slow)."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures_gguf import write_tiny_gguf
from pydantic import ValidationError

from storybench_core.backends.base import GenerationSettings, Message, ModelBackend
from storybench_core.backends.llama import (
    PLAIN_TRANSCRIPT,
    PLAIN_TRANSCRIPT_TEMPLATE,
    LlamaBackend,
    PromptTemplate,
    choose_template,
    create_llama_backend,
    format_prompt,
)
from storybench_core.backends.llama_batch import PROMPT_CHUNK_TOKENS
from storybench_core.config import GenerationSettingsConfig, ModelSpec
from storybench_core.errors import (
    ConfigError,
    ContextOverflowError,
    ModelError,
    ModelFileError,
    StopRequested,
)
from storybench_core.gguf_info import read_gguf_info

SYSTEM: Message = {"role": "system", "content": "You are a skilled, original fiction writer."}
THREE_TURNS: list[Message] = [
    SYSTEM,
    {"role": "user", "content": "Pitch a story about a lighthouse keeper."},
    {"role": "assistant", "content": "  The Last Lamp: a keeper counts ships that never come.\n"},
    {"role": "user", "content": "Write its opening scene."},
    {"role": "assistant", "content": "Rain hammered the glass."},
    {"role": "user", "content": "Now the ending."},
]
# A Jinja template in the style of the ones GGUF files carry (no system role support).
STRICT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "<|{{ m.role }}|>{{ m.content }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _spec_for(path: Path) -> ModelSpec:
    return ModelSpec(kind="path", path=str(path))


def _generation(n_ctx: int = 512, max_tokens: int = 64) -> GenerationSettingsConfig:
    return GenerationSettingsConfig(n_ctx=n_ctx, max_tokens=max_tokens)


# --- fast: formatting ------------------------------------------------------------------


def test_plain_transcript_of_three_turns() -> None:
    assert format_prompt(THREE_TURNS, PLAIN_TRANSCRIPT_TEMPLATE) == (
        "You are a skilled, original fiction writer.\n\n"
        "### Instruction:\nPitch a story about a lighthouse keeper.\n\n"
        "### Response:\nThe Last Lamp: a keeper counts ships that never come.\n\n"
        "### Instruction:\nWrite its opening scene.\n\n"
        "### Response:\nRain hammered the glass.\n\n"
        "### Instruction:\nNow the ending.\n\n"
        "### Response:\n"
    )
    assert PLAIN_TRANSCRIPT_TEMPLATE.stop == ("### Instruction:", "### Response:")


def test_plain_transcript_grows_by_appending() -> None:
    """Each turn's prompt starts with the previous one, so the KV cache prefix can be reused."""
    first = format_prompt(THREE_TURNS[:2], PLAIN_TRANSCRIPT_TEMPLATE)
    second = format_prompt(THREE_TURNS[:4], PLAIN_TRANSCRIPT_TEMPLATE)
    assert second.startswith(first)


def test_plain_transcript_continues_a_trailing_assistant_message() -> None:
    text = format_prompt(
        [*THREE_TURNS[:2], {"role": "assistant", "content": "Title:"}], PLAIN_TRANSCRIPT_TEMPLATE
    )
    assert text.endswith("### Response:\nTitle:")


def test_plain_transcript_rejects_unknown_roles() -> None:
    with pytest.raises(ModelError, match="role 'tool'"):
        format_prompt([{"role": "tool", "content": "x"}], PLAIN_TRANSCRIPT_TEMPLATE)


def test_gguf_template_renders_and_folds_a_refused_system_role() -> None:
    template = PromptTemplate(name="gguf:llama", jinja=STRICT_TEMPLATE, bos_token="<s>", eos_token="</s>")
    text = format_prompt(THREE_TURNS[:2], template)
    assert text == (
        "<s><|user|>You are a skilled, original fiction writer.\n\n"
        "Pitch a story about a lighthouse keeper.</s><|assistant|>"
    )


def test_broken_gguf_template_is_a_model_error() -> None:
    template = PromptTemplate(name="gguf:llama", jinja="{% for m in messages %}{{ m.content }")
    with pytest.raises(ModelError, match="plain-transcript"):
        format_prompt(THREE_TURNS[:2], template)


def test_choose_template_follows_the_gguf(tmp_path: Path) -> None:
    with_template = read_gguf_info(write_tiny_gguf(tmp_path / "chat.gguf", chat_template=STRICT_TEMPLATE))
    without = read_gguf_info(write_tiny_gguf(tmp_path / "base.gguf"))
    chosen = choose_template(with_template, bos_token="<s>")
    digest = hashlib.sha256(STRICT_TEMPLATE.encode()).hexdigest()[:12]
    assert (chosen.name, chosen.jinja, chosen.bos_token) == (f"gguf:llama:{digest}", STRICT_TEMPLATE, "<s>")
    # Another template text, another name: the name identifies the text, not only the architecture.
    other = read_gguf_info(write_tiny_gguf(tmp_path / "other.gguf", chat_template=STRICT_TEMPLATE + " "))
    assert choose_template(other).name not in (chosen.name, "gguf:llama")
    assert choose_template(without) is PLAIN_TRANSCRIPT_TEMPLATE
    assert choose_template(with_template, PLAIN_TRANSCRIPT).name == PLAIN_TRANSCRIPT
    with pytest.raises(ConfigError, match="no chat template"):
        choose_template(without, "gguf")
    with pytest.raises(ConfigError, match="chatml"):
        choose_template(with_template, "chatml")


# --- fast: bad model files never reach llama.cpp ----------------------------------------


def test_missing_file_is_a_model_file_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="not found"):
        create_llama_backend(_spec_for(tmp_path / "nowhere.gguf"), _generation())


def test_non_gguf_file_is_a_model_file_error(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_text("<html>404 Not Found</html>\n")
    with pytest.raises(ModelFileError, match="not a GGUF"):
        create_llama_backend(_spec_for(path), _generation())


def test_truncated_gguf_is_a_model_file_error(tmp_path: Path) -> None:
    whole = write_tiny_gguf(tmp_path / "whole.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    with pytest.raises(ModelFileError, match="incomplete"):
        create_llama_backend(_spec_for(cut), _generation())


def test_unloadable_gguf_is_a_model_file_error(tmp_path: Path) -> None:
    """A well-formed GGUF llama.cpp cannot load (no tokenizer): its failure is mapped, with the path."""
    path = write_tiny_gguf(tmp_path / "no-vocab.gguf")
    with pytest.raises(ModelFileError, match=r"could not load .*no-vocab\.gguf"):
        create_llama_backend(_spec_for(path), _generation())


def test_unknown_chat_format_fails_before_loading(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "m.gguf")
    spec = ModelSpec(kind="path", path=str(path), options={"chat_format": "vicuna"})
    with pytest.raises(ConfigError, match="vicuna"):
        create_llama_backend(spec, _generation())


def test_flash_attn_option_must_be_a_boolean(tmp_path: Path) -> None:
    # The typed options schema (backends/options.py) refuses it when the config is read.
    path = write_tiny_gguf(tmp_path / "m.gguf")
    with pytest.raises(ValidationError, match=r"options\.flash_attn = 'yes' is invalid"):
        ModelSpec(kind="path", path=str(path), options={"flash_attn": "yes"})


# --- slow: the real bundled model -------------------------------------------------------

BRIEFS = [
    "Write the opening of a short story about a lighthouse keeper who sees a ship in a storm at sea.",
    "Continue the story: the keeper rows out to the ship.",
    "Write the ending of the story.",
]


@pytest.fixture
def backend(bundled_model: Path) -> Iterator[LlamaBackend]:
    loaded = create_llama_backend(ModelSpec(kind="bundled"), _generation(n_ctx=2048, max_tokens=64))
    yield loaded
    loaded.close()


def _settings(**changes: object) -> GenerationSettings:
    base = {"temperature": 0.8, "top_p": 0.95, "max_tokens": 32, "seed": 7}
    return GenerationSettings(**(base | changes))  # type: ignore[arg-type]


@pytest.mark.slow
def test_three_turn_conversation_streams_and_reuses_the_prefix(backend: LlamaBackend) -> None:
    assert isinstance(backend, ModelBackend)
    assert backend.template.name == PLAIN_TRANSCRIPT
    assert "template plain-transcript" in backend.load_note and "n_ctx 2048" in backend.load_note
    assert backend.gpu_plan is not None and backend.context_size() == 2048
    # A system prompt longer than one prompt chunk, so later turns have whole chunks to reuse.
    long_system: Message = {"role": "system", "content": SYSTEM["content"] + " " + STYLE_GUIDE}
    messages: list[Message] = [long_system]
    results = []
    for turn, brief in enumerate(BRIEFS):
        messages.append({"role": "user", "content": brief})
        pieces: list[str] = []
        done = backend.chat(messages, _settings(seed=turn + 1), pieces.append)
        assert done.template == PLAIN_TRANSCRIPT
        assert done.text == "".join(pieces) and pieces
        assert done.finish_reason in ("stop", "length")
        assert 0 < done.completion_tokens <= 32
        assert done.prompt_tokens == backend.count_tokens(messages)
        assert done.generation_time_s > 0 and 0 < (done.first_token_s or 0) <= done.generation_time_s
        results.append(done)
        messages.append({"role": "assistant", "content": done.text})
    assert results[0].prompt_tokens_evaluated == results[0].prompt_tokens  # nothing cached yet
    for before, after in itertools.pairwise(results):
        # Whole prompt chunks of the history are reused; the rest of the previous prompt's last
        # chunk, the reply (generated one token at a time) and the new turn are evaluated.
        assert after.prompt_tokens_evaluated is not None
        reused = after.prompt_tokens - after.prompt_tokens_evaluated
        assert reused >= PROMPT_CHUNK_TOKENS and reused % PROMPT_CHUNK_TOKENS == 0
        assert (
            0
            < after.prompt_tokens_evaluated
            < after.prompt_tokens - before.prompt_tokens + PROMPT_CHUNK_TOKENS
        )


STYLE_GUIDE = (
    "Write in the third person and the past tense. Prefer concrete nouns and active verbs to "
    "adjectives. Let the characters reveal themselves through what they do and say, not through "
    "what the narrator explains. Keep each scene in one place and one stretch of time, and end it "
    "on a change: a decision, a discovery or a loss. Avoid cliches and stock phrases."
)


def _fill_cache_with_another_conversation(backend: LlamaBackend) -> None:
    """Leave an unrelated conversation in the KV cache: the next call shares only the system prefix."""
    backend.chat([SYSTEM, {"role": "user", "content": BRIEFS[2]}], _settings(seed=5, max_tokens=4))


@pytest.mark.slow
def test_same_seed_same_text(backend: LlamaBackend) -> None:
    """A reply depends on the seed, not on what the cache held (cold load vs. reused prefix)."""
    messages = [SYSTEM, {"role": "user", "content": BRIEFS[0]}]
    _fill_cache_with_another_conversation(backend)
    warm = backend.chat(messages, _settings(seed=11, max_tokens=24))
    fresh = create_llama_backend(ModelSpec(kind="bundled"), _generation(n_ctx=2048, max_tokens=64))
    try:
        cold = fresh.chat(messages, _settings(seed=11, max_tokens=24))
    finally:
        fresh.close()
    assert cold.prompt_tokens_evaluated == cold.prompt_tokens
    assert warm.text == cold.text
    other = backend.chat(messages, _settings(seed=12, max_tokens=24))
    assert other.text != warm.text
    # The whole prompt was cached with its logits: nothing evaluated again.
    assert other.prompt_tokens_evaluated == 0


@pytest.mark.slow
def test_temperature_zero_is_deterministic(backend: LlamaBackend) -> None:
    messages = [SYSTEM, {"role": "user", "content": BRIEFS[0]}]
    first = backend.chat(messages, _settings(temperature=0.0, seed=1, max_tokens=24))
    _fill_cache_with_another_conversation(backend)
    second = backend.chat(messages, _settings(temperature=0.0, seed=2, max_tokens=24))
    assert first.text == second.text


@pytest.mark.slow
def test_stop_requested_aborts_within_tokens_and_the_backend_stays_usable(backend: LlamaBackend) -> None:
    messages = [SYSTEM, {"role": "user", "content": BRIEFS[0]}]
    seen: list[str] = []

    def on_token(piece: str) -> None:
        seen.append(piece)
        if len(seen) == 3:
            raise StopRequested()

    with pytest.raises(StopRequested):
        backend.chat(messages, _settings(max_tokens=48), on_token)
    assert len(seen) == 3
    # Generation halted within a token or two of the third piece, not at max_tokens.
    assert backend.kv_cache_tokens <= backend.count_tokens(messages) + 6
    after = backend.chat(messages, _settings(max_tokens=8))
    assert after.completion_tokens > 0


@pytest.mark.slow
def test_json_schema_constrains_the_reply(backend: LlamaBackend) -> None:
    schema = {
        "type": "object",
        "properties": {
            "score": {"type": "integer", "enum": [1, 2, 3, 4, 5]},
            "verdict": {"type": "string", "enum": ["vivid", "flat"]},
        },
        "required": ["score", "verdict"],
    }
    messages = [
        SYSTEM,
        {"role": "user", "content": "Rate this line from 1 to 5 as JSON: 'Rain hammered the glass.'"},
    ]
    done = backend.chat(messages, _settings(temperature=0.0, max_tokens=48, json_schema=schema))
    reply = json.loads(done.text)
    assert reply["score"] in (1, 2, 3, 4, 5) and reply["verdict"] in ("vivid", "flat")
    assert done.finish_reason == "stop"


@pytest.mark.slow
def test_unconvertible_json_schema_fails_loudly(backend: LlamaBackend) -> None:
    messages = [SYSTEM, {"role": "user", "content": "Rate it."}]
    with pytest.raises(ModelError, match="grammar"):
        backend.chat(messages, _settings(json_schema={"type": "frobnicate"}))


@pytest.mark.slow
def test_overlong_prompt_is_a_context_overflow(bundled_model: Path) -> None:
    small = create_llama_backend(ModelSpec(kind="bundled"), _generation(n_ctx=256, max_tokens=16))
    try:
        long_brief = "Describe the harbour, the boats and the gulls in great detail. " * 40
        messages = [SYSTEM, {"role": "user", "content": long_brief}]
        assert small.count_tokens(messages) > 256
        with pytest.raises(ContextOverflowError, match="256"):
            small.chat(messages, _settings(max_tokens=16))
        # A prompt that fits but leaves less room than max_tokens: llama.cpp clips, we record it.
        short = [SYSTEM, {"role": "user", "content": "Describe the harbour at dawn. " * 30}]
        room = 256 - small.count_tokens(short)
        assert 0 < room < 64
        clipped = small.chat(short, _settings(temperature=0.0, max_tokens=200))
        assert clipped.extra["max_tokens_clipped_to"] == room
        assert clipped.completion_tokens <= room
    finally:
        small.close()
        small.close()  # idempotent
    with pytest.raises(ModelError, match="closed"):
        small.count_tokens(messages)


@pytest.mark.slow
def test_replies_stay_on_topic(backend: LlamaBackend) -> None:
    """Loose: the plain transcript keeps the base model near the brief's subject."""
    keywords = ("lighthouse", "keeper", "storm", "ship", "sea")
    messages = [SYSTEM, {"role": "user", "content": BRIEFS[0]}]
    replies = [backend.chat(messages, _settings(seed=seed, max_tokens=48)).text.lower() for seed in (1, 2, 3)]
    share = sum(any(word in reply for word in keywords) for reply in replies) / len(replies)
    assert share >= 2 / 3, replies
    assert all(not re.search(r"\[INST\]|<<SYS>>", reply) for reply in replies)
