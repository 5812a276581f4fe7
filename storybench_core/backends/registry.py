"""One registry from ModelSpec.kind to a backend factory; no special paths.

Factories import their heavy libraries lazily, so `import storybench_core`
stays cheap and a missing optional library only matters when it is used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import GenerationSettingsConfig, ModelSpec
    from .base import ModelBackend

BackendFactory = Callable[["ModelSpec", "GenerationSettingsConfig"], "ModelBackend"]

_FACTORIES: dict[str, BackendFactory] = {}


def register(kind: str, factory: BackendFactory) -> None:
    _FACTORIES[kind] = factory


def create_backend(spec: ModelSpec, generation: GenerationSettingsConfig) -> ModelBackend:
    """Load the model a spec names (download/assemble it first when needed)."""
    _register_builtins()
    try:
        factory = _FACTORIES[spec.kind]
    except KeyError:
        raise ConfigError(
            f"model '{spec.display_name}': no backend for kind '{spec.kind}' (known: {', '.join(sorted(_FACTORIES))})"
        ) from None
    return factory(spec, generation)


def _llama_factory(spec: ModelSpec, generation: GenerationSettingsConfig) -> ModelBackend:
    from .llama import create_llama_backend

    return create_llama_backend(spec, generation)


def _api_factory(spec: ModelSpec, generation: GenerationSettingsConfig) -> ModelBackend:
    from .openai_compat import create_openai_backend

    return create_openai_backend(spec, generation)


def _fake_factory(spec: ModelSpec, generation: GenerationSettingsConfig) -> ModelBackend:
    from ..config import FAKE_BACKEND_ENV, fake_backend_enabled
    from .fake import FakeBackend

    if not fake_backend_enabled():  # checked again where the worker builds it: stored configs too
        raise ConfigError(
            f"model '{spec.display_name}': kind 'fake' is the test double and is off on this server "
            f"({FAKE_BACKEND_ENV} is not set)"
        )

    return FakeBackend.from_spec(spec, generation)


def _register_builtins() -> None:
    for kind in ("bundled", "hf", "path"):
        _FACTORIES.setdefault(kind, _llama_factory)
    _FACTORIES.setdefault("api", _api_factory)
    _FACTORIES.setdefault("fake", _fake_factory)
