"""Presets for common OpenAI-compatible providers and local servers.

A preset fills in a ModelSpec's base_url and the environment variable that
holds the key, so a user picks "deepinfra" and a model name instead of
copying URLs. The presets themselves are preset_catalog.py; which models an
endpoint serves (GET /models, the dashboard's model picker) is
openai_compat.list_endpoint_models.
"""

from __future__ import annotations

from typing import Any

from ..config import ModelSpec
from ..errors import ConfigError
from .preset_catalog import Preset, get_preset, list_presets, preset_for_url

__all__ = ["Preset", "get_preset", "list_presets", "preset_for_url", "preset_of", "spec_from_preset"]


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
