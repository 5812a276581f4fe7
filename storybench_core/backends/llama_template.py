"""Chat templates for local GGUF models: how a conversation becomes the prompt text.

A GGUF that carries `tokenizer.chat_template` is formatted
with it (Jinja, as Transformers renders it) and recorded as
"gguf:<arch>:<first 12 hex digits of the template text's sha256>", so two
responses that name the same template were formatted by the same text.
A GGUF without one (the bundled Gemma 3 270M is a base model) would make
llama-cpp-python fall back to the llama-2 format silently; instead we write
a plain transcript ourselves and record "plain-transcript":

    <system text>

    ### Instruction:
    <user turn>

    ### Response:
    <assistant turn>

    ### Instruction:
    <next user turn>

    ### Response:

Generation stops at the next "### Instruction:" / "### Response:" marker.
Alpaca-style headings are common in web text, so even a small base model
reads them as "a brief, then its answer". Measured on the bundled model (the
first prompt of each of the 5 catalog sequences × 4 seeds, 80 tokens,
temperature 0.8; score = share of the brief's content words in the reply, 0
for a reply that copies the brief): this layout 0.13; "### Brief/###
Response" 0.11; an editor/writer transcript 0.11; "Question:/Answer:" 0.08;
the same layout under Alpaca's "Below is an instruction..." preamble 0.07;
Gemma's own <start_of_turn> tokens 0.05; "User:/Writer:" 0.03 (it drifts
into autobiography). A 270M base model stays weak whatever the layout.
`options.chat_format = "plain-transcript"` forces this layout for any model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from ..errors import ConfigError, ModelError
from .base import Message

if TYPE_CHECKING:
    from ..gguf_info import GGUFInfo

PLAIN_TRANSCRIPT = "plain-transcript"
INSTRUCTION_MARKER = "### Instruction:"
RESPONSE_MARKER = "### Response:"
CHAT_FORMATS = ("auto", "gguf", PLAIN_TRANSCRIPT)


@dataclass(frozen=True)
class PromptTemplate:
    """How a conversation becomes the prompt text, and what ends a reply."""

    name: str  # "gguf:<arch>:<sha12>" or "plain-transcript" (stored as Completion.template)
    jinja: str | None = None  # the GGUF's chat template; None = plain transcript
    bos_token: str = ""
    eos_token: str = ""
    stop: tuple[str, ...] = ()
    # Parse "<start_of_turn>"-style text as control tokens. True for a GGUF template
    # (it writes them); False for the plain transcript, so a brief cannot inject them.
    parse_special: bool = False


PLAIN_TRANSCRIPT_TEMPLATE = PromptTemplate(name=PLAIN_TRANSCRIPT, stop=(INSTRUCTION_MARKER, RESPONSE_MARKER))


def choose_template(
    info: GGUFInfo, chat_format: str = "auto", bos_token: str = "", eos_token: str = ""
) -> PromptTemplate:
    """The GGUF's own template when it has one (and it is wanted), else the plain transcript."""
    if chat_format not in CHAT_FORMATS:
        raise ConfigError(
            f"options.chat_format = {chat_format!r} is not known (use one of {', '.join(CHAT_FORMATS)})"
        )
    if chat_format == PLAIN_TRANSCRIPT or not info.chat_template:
        if chat_format == "gguf":
            raise ConfigError(
                f"options.chat_format = 'gguf' but {info.path.name} has no chat template — "
                "remove the option to use the plain-transcript fallback"
            )
        return PLAIN_TRANSCRIPT_TEMPLATE
    digest = hashlib.sha256(info.chat_template.encode("utf-8")).hexdigest()[:12]
    return PromptTemplate(
        name=f"gguf:{info.architecture}:{digest}",
        jinja=info.chat_template,
        bos_token=bos_token,
        eos_token=eos_token,
        parse_special=True,
    )


def format_prompt(messages: Sequence[Message], template: PromptTemplate) -> str:
    """The prompt text for a conversation; the model writes the next assistant turn."""
    if template.jinja is None:
        return _plain_transcript(messages)
    return _render_jinja(messages, template)


def _plain_transcript(messages: Sequence[Message]) -> str:
    parts: list[str] = []
    last = len(messages) - 1
    for i, message in enumerate(messages):
        role, content = message["role"], message["content"]
        if role == "system":
            parts.append(f"{content.strip()}\n\n")
        elif role == "user":
            parts.append(f"{INSTRUCTION_MARKER}\n{content.strip()}\n\n")
        elif role == "assistant":
            # A trailing assistant message is a prefill the model continues as is.
            parts.append(
                f"{RESPONSE_MARKER}\n{content.lstrip()}"
                if i == last
                else f"{RESPONSE_MARKER}\n{content.strip()}\n\n"
            )
        else:
            raise ModelError(f"message {i + 1} has role {role!r}; expected system, user or assistant")
    if not messages or messages[-1]["role"] != "assistant":
        parts.append(f"{RESPONSE_MARKER}\n")
    return "".join(parts)


@lru_cache(maxsize=8)
def _jinja_formatter(template: PromptTemplate) -> Jinja2ChatFormatter:
    assert template.jinja is not None
    return Jinja2ChatFormatter(template.jinja, eos_token=template.eos_token, bos_token=template.bos_token)


def _render_jinja(messages: Sequence[Message], template: PromptTemplate) -> str:
    try:
        formatter = _jinja_formatter(template)
    except Exception as exc:  # jinja2.TemplateSyntaxError and friends
        raise ModelError(
            f"the model's chat template does not compile ({exc}) — set options.chat_format = "
            f"'{PLAIN_TRANSCRIPT}' for this model"
        ) from exc
    # llama-cpp-python types the messages as its own TypedDicts; ours are plain role/content dicts.
    as_given: list[Any] = list(messages)
    try:
        return formatter(messages=as_given).prompt
    except Exception as exc:
        # Some templates refuse a system role ("roles must alternate"): fold it into the first user turn.
        merged: list[Any] | None = _merge_system(messages)
        if merged is not None:
            try:
                return formatter(messages=merged).prompt
            except Exception:
                pass
        raise ModelError(
            f"the model's chat template failed on this conversation ({exc}) — set options.chat_format = "
            f"'{PLAIN_TRANSCRIPT}' for this model"
        ) from exc


def _merge_system(messages: Sequence[Message]) -> list[Message] | None:
    system = [m["content"] for m in messages if m["role"] == "system"]
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if not system or not rest or rest[0]["role"] != "user":
        return None
    rest[0]["content"] = "\n\n".join([*system, rest[0]["content"]])
    return rest
