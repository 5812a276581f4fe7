"""Presets for common OpenAI-compatible providers and local servers.

A preset fills in a ModelSpec's base_url and the environment variable that
holds the key, so a user picks "deepinfra" and a model name instead of
copying URLs. `list_models(spec)` asks an endpoint which models it serves
(GET /models), for the dashboard's model picker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import ModelSpec
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


_PRESETS: tuple[Preset, ...] = (
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
    return list(_PRESETS)


def get_preset(preset_id: str) -> Preset:
    """The preset with this id, or a ConfigError listing the known ids."""
    for preset in _PRESETS:
        if preset.id == preset_id:
            return preset
    known = ", ".join(p.id for p in _PRESETS)
    raise ConfigError(f"unknown API preset '{preset_id}'; known presets: {known}")


def preset_for_url(base_url: str | None) -> Preset | None:
    """The preset whose base_url this is (ignoring a trailing slash), if any."""
    if not base_url:
        return None
    wanted = base_url.rstrip("/").lower()
    for preset in _PRESETS:
        if preset.base_url.lower() == wanted:
            return preset
    return None


def preset_of(spec: ModelSpec) -> Preset | None:
    """The preset a spec names, else the one its base_url matches."""
    if spec.preset:
        return get_preset(spec.preset)
    return preset_for_url(spec.base_url)


def spec_from_preset(preset_id: str, api_model: str, name: str | None = None, **overrides: Any) -> ModelSpec:
    """A kind='api' ModelSpec for a model served by a preset's endpoint.

    Overrides (base_url, api_key_env, max_concurrency, requests_per_minute,
    timeout_s, options, ...) replace the preset's values. A replaced base_url
    drops the preset's key: it belongs to the preset's own endpoint only.
    """
    preset = get_preset(preset_id)
    if not api_model:
        raise ConfigError(f"preset '{preset_id}': give the model name (api_model) to use")
    fields: dict[str, Any] = {
        "kind": "api",
        "preset": preset.id,
        "base_url": preset.base_url,
        "api_model": api_model,
        "api_key_env": preset.api_key_env,
    }
    if name:
        fields["name"] = name
    if overrides.get("base_url") and str(overrides["base_url"]).rstrip("/") != preset.base_url:
        fields["api_key_env"] = None
    fields.update(overrides)
    try:
        return ModelSpec(**fields)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ConfigError(f"preset '{preset_id}', model '{api_model}': {exc}") from None


def list_models(spec: ModelSpec) -> list[str]:
    """The model ids the spec's endpoint serves (GET /models), sorted.

    Errors are mapped like chat errors: AuthError, ApiError, ApiTimeoutError.
    """
    from .openai_compat import list_endpoint_models

    return list_endpoint_models(spec)
