"""The known OpenAI-compatible providers and local servers: where each lives and which key it wants.

Plain data with no dependency on the config (credentials.py reads the key names from here);
presets.py turns a preset into a ModelSpec.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class Preset:
    """One known endpoint: where it lives and which key (if any) it wants."""

    id: str
    label: str
    base_url: str
    api_key_env: str | None
    needs_key: bool
    notes: str = ""


PRESETS: tuple[Preset, ...] = (
    Preset(
        "openai",
        "OpenAI",
        "https://api.openai.com/v1",
        "OPENAI_API_KEY",
        True,
        "Keys at https://platform.openai.com/api-keys.",
    ),
    Preset(
        "deepinfra",
        "DeepInfra",
        "https://api.deepinfra.com/v1/openai",
        "DEEPINFRA_API_KEY",
        True,
        "Model names look like 'meta-llama/Meta-Llama-3.1-8B-Instruct'.",
    ),
    Preset(
        "openrouter",
        "OpenRouter",
        "https://openrouter.ai/api/v1",
        "OPENROUTER_API_KEY",
        True,
        "Model names look like 'mistralai/mistral-small'.",
    ),
    Preset(
        "ollama",
        "Ollama (local)",
        "http://localhost:11434/v1",
        None,
        False,
        "Start it with `ollama serve`; pull a model first (`ollama pull NAME`).",
    ),
    Preset(
        "lmstudio",
        "LM Studio (local)",
        "http://localhost:1234/v1",
        None,
        False,
        "Start the local server from LM Studio's Developer tab.",
    ),
    Preset(
        "llamacpp-server",
        "llama.cpp server (local)",
        "http://localhost:8080/v1",
        None,
        False,
        "`llama-server -m MODEL.gguf` or `python -m llama_cpp.server --model MODEL.gguf --port 8080`.",
    ),
    Preset(
        "vllm",
        "vLLM (local or self-hosted)",
        "http://localhost:8000/v1",
        "VLLM_API_KEY",
        False,
        "The key is only needed when vLLM was started with --api-key.",
    ),
)


def list_presets() -> list[Preset]:
    """Every preset, in display order."""
    return list(PRESETS)


def get_preset(preset_id: str) -> Preset:
    """The preset with this id, or a ConfigError listing the known ids."""
    for preset in PRESETS:
        if preset.id == preset_id:
            return preset
    known = ", ".join(p.id for p in PRESETS)
    raise ConfigError(f"unknown API preset '{preset_id}'; known presets: {known}")


def preset_for_url(base_url: str | None) -> Preset | None:
    """The preset whose base_url this is (ignoring a trailing slash), if any."""
    if not base_url:
        return None
    wanted = base_url.rstrip("/").lower()
    for preset in PRESETS:
        if preset.base_url.lower() == wanted:
            return preset
    return None
