"""The Configure page's model: flat form values ↔ a RunConfig dict, field errors, named configs.

The page keeps three things: the model list (dicts, edited outside the form),
the flat form values (one per widget) and `base`, the last loaded config
dict, so fields the form does not edit (model options, parallel_runs, extra
judges) survive a load → edit → save round trip.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .. import audit, catalog, paths
from ..access import Principal, require
from ..backends.endpoints import endpoint_access, key_status
from ..bundled import BUILTIN_MODELS, builtin_model
from ..config import (
    ModelSpec,
    RunConfig,
    config_hash,
    config_to_dict,
    load_config,
    parse_config,
    parse_config_bytes,
    save_config,
)
from ..credentials import api_key_value, bound_key_names
from ..errors import AuthError, ConfigError
from ..store.base import Store

GENERATION_FIELDS = (
    "temperature",
    "top_p",
    "max_tokens",
    "runs",
    "seed",
    "n_ctx",
    "vram_limit_percent",
    "system_prompt",
)
JUDGE_FIELDS = ("attempts", "max_retries", "temperature", "max_tokens")

JUDGE_NONE = "(no judge model)"
# One judge choice per built-in model, the default (Gemma 3 270M) first: choice → builtin id.
JUDGE_BUILTINS = {f"bundled model ({m.label})": m.id for m in BUILTIN_MODELS.values()}
JUDGE_BUNDLED = next(iter(JUDGE_BUILTINS))
JUDGE_API = "API model (preset and model name below)"
_LISTED = "listed: "
_LOADED = "as loaded: "

# Where an error about a config path is shown on the page (the longest matching prefix wins).
FIELD_KEYS = (
    "name",
    "models",
    *(f"generation.{f}" for f in GENERATION_FIELDS),
    "generation",
    "sequences",
    "judge.model",
    *(f"judge.{f}" for f in JUDGE_FIELDS),
    "judge",
    "auto_evaluate",
)
GENERAL = "general"


# --- defaults and conversions ---------------------------------------------------------


def default_config_dict() -> dict[str, Any]:
    """A small valid starting point: the bundled model on the first sequence."""
    first = catalog.list_sequences()[0].id
    config = parse_config({"name": "my-evaluation", "models": [{"kind": "bundled"}], "sequences": [first]})
    return config_to_dict(config)


def compact_model(spec: ModelSpec) -> dict[str, Any]:
    """A model dict without default-valued fields, kind first."""
    data = spec.model_dump(mode="json", exclude_defaults=True)
    return {"kind": spec.kind, **{k: v for k, v in data.items() if k != "kind"}}


def judge_choices(models: Sequence[Mapping[str, Any]], base: Mapping[str, Any] | None = None) -> list[str]:
    """Options of the judge-model picker: none, each built-in, API, each listed model, the loaded one."""
    choices = [JUDGE_NONE, *JUDGE_BUILTINS, JUDGE_API]
    choices += [_LISTED + ModelSpec(**m).display_name for m in models]
    loaded = ((base or {}).get("judge") or {}).get("model")
    if loaded and _judge_choice_for(loaded, models) is None:
        choices.append(_LOADED + ModelSpec(**loaded).display_name)
    return choices


def _judge_choice_for(spec: Mapping[str, Any], models: Sequence[Mapping[str, Any]]) -> str | None:
    judge = ModelSpec(**spec)
    for m in models:
        if ModelSpec(**m) == judge:
            return _LISTED + judge.display_name
    if judge.kind == "bundled" and not judge.name:
        return next(c for c, builtin in JUDGE_BUILTINS.items() if builtin == builtin_model(judge.builtin).id)
    if judge.kind == "api" and judge.preset and not judge.name:
        return JUDGE_API
    return None


def form_values(config: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """A config dict → (flat form values, model list, base dict)."""
    base = copy.deepcopy(dict(config))
    models = [compact_model(ModelSpec(**m)) for m in base.get("models") or []]
    gen = base.get("generation") or {}
    judge = base.get("judge") or {}
    defaults = RunConfig.model_fields["generation"].default.model_dump()
    judge_defaults = RunConfig.model_fields["judge"].default.model_dump()
    values: dict[str, Any] = {"name": base.get("name") or "evaluation"}
    values |= {f: gen.get(f, defaults[f]) for f in GENERATION_FIELDS}
    values["sequences"] = list(base.get("sequences") or [])
    values["judge_enabled"] = bool(judge.get("enabled", False))
    values |= {f"judge_{f}": judge.get(f, judge_defaults[f]) for f in JUDGE_FIELDS}
    values["judge_preset"], values["judge_api_model"] = "openai", ""
    spec = judge.get("model")
    if not spec:
        values["judge_model"] = JUDGE_NONE
    else:
        choice = _judge_choice_for(spec, models)
        values["judge_model"] = choice or _LOADED + ModelSpec(**spec).display_name
        if choice == JUDGE_API:
            values["judge_preset"], values["judge_api_model"] = (
                spec.get("preset"),
                spec.get("api_model") or "",
            )
    values["auto_evaluate"] = bool(base.get("auto_evaluate", False))
    return values, models, base


def _judge_model(
    values: Mapping[str, Any], models: Sequence[Mapping[str, Any]], base: Mapping[str, Any]
) -> Any:
    choice = values.get("judge_model") or JUDGE_NONE
    if choice == JUDGE_NONE:
        return None
    if choice in JUDGE_BUILTINS:
        return compact_model(ModelSpec(kind="bundled", builtin=JUDGE_BUILTINS[choice]))
    if choice == JUDGE_API:
        from ..backends.presets import get_preset

        preset = get_preset(values.get("judge_preset") or "openai")
        return {
            "kind": "api",
            "preset": preset.id,
            "base_url": preset.base_url,
            "api_model": (values.get("judge_api_model") or "").strip() or None,
            "api_key_env": preset.api_key_env,
        }
    if choice.startswith(_LISTED):
        name = choice.removeprefix(_LISTED)
        for m in models:
            if ModelSpec(**m).display_name == name:
                return dict(m)
    if choice.startswith(_LOADED):
        return ((base.get("judge") or {}).get("model")) or None
    return None


def config_dict(
    values: Mapping[str, Any], models: Sequence[Mapping[str, Any]], base: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Flat form values + model list (+ base for fields the form does not show) → a config dict."""
    data = copy.deepcopy(dict(base or {}))
    data["name"] = str(values.get("name") or "").strip()
    data["models"] = [dict(m) for m in models]
    data["generation"] = dict(data.get("generation") or {}) | {
        f: values[f] for f in GENERATION_FIELDS if f in values
    }
    data["sequences"] = list(values.get("sequences") or [])
    judge = dict(data.get("judge") or {})
    judge["enabled"] = bool(values.get("judge_enabled", False))
    judge |= {f: values[f"judge_{f}"] for f in JUDGE_FIELDS if f"judge_{f}" in values}
    judge["model"] = _judge_model(values, models, base or {})
    data["judge"] = judge
    data["auto_evaluate"] = bool(values.get("auto_evaluate", False))
    return data


# --- validation -----------------------------------------------------------------------

_LINE_RE = re.compile(r"^\s*(?P<loc>\(top level\)|[A-Za-z_][\w.]*)\s*:\s(?P<msg>.+)$")


def field_for(loc: str, message: str = "") -> str:
    """The page field an error location belongs to ('models.0.kind' → 'models')."""
    if loc == "(top level)":
        lowered = message.lower()
        for word, key in (
            ("model names", "models"),
            ("sequence", "sequences"),
            ("auto_evaluate", "auto_evaluate"),
        ):
            if word in lowered:
                return key
        return GENERAL
    parts = loc.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in FIELD_KEYS:
            return candidate
    return GENERAL


def field_errors(message: str) -> dict[str, list[str]]:
    """Split a ConfigError message into {field: [messages]} for display next to each field."""
    errors: dict[str, list[str]] = {}
    for line in message.splitlines():
        if not line.strip() or line.startswith("invalid configuration"):
            continue
        match = _LINE_RE.match(line)
        if match:
            key = field_for(match["loc"], match["msg"])
            same = key == match["loc"] or match["loc"] == "(top level)"
            text = match["msg"] if same else f"{match['loc']}: {match['msg']}"
        else:
            key, text = GENERAL, line.strip()
        errors.setdefault(key, []).append(text)
    return errors


@dataclass(frozen=True)
class FormCheck:
    """The result of validating the form: a config and its hash, or errors by field."""

    data: dict[str, Any]
    config: RunConfig | None = None
    config_hash: str | None = None
    errors: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.config is not None

    def for_field(self, key: str) -> list[str]:
        return self.errors.get(key, [])


def check_form(
    values: Mapping[str, Any], models: Sequence[Mapping[str, Any]], base: Mapping[str, Any] | None = None
) -> FormCheck:
    """Validate the form; never raises ConfigError (it becomes field errors)."""
    try:
        data = config_dict(values, models, base)
        config = parse_config(data, source="form")
    except ConfigError as exc:
        return FormCheck(data=config_dict_safe(values, models, base), errors=field_errors(str(exc)))
    return FormCheck(data=config_to_dict(config), config=config, config_hash=config_hash(config))


def config_dict_safe(
    values: Mapping[str, Any], models: Sequence[Mapping[str, Any]], base: Mapping[str, Any] | None
) -> dict[str, Any]:
    try:
        return config_dict(values, models, base)
    except ConfigError:
        return {}


# --- the model list -------------------------------------------------------------------


def model_from_form(kind: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """One model dict from an 'add model' form, or a ConfigError naming the bad field."""
    clean = {k: (v.strip() if isinstance(v, str) else v) for k, v in fields.items()}
    clean = {k: v for k, v in clean.items() if v not in ("", None)}
    if kind == "api":
        from ..backends.presets import spec_from_preset

        preset = clean.pop("preset", None)
        if not preset:
            raise ConfigError("choose an API preset")
        spec = spec_from_preset(preset, clean.pop("api_model", ""), clean.pop("name", None), **clean)
        try:
            endpoint_access(spec)  # the worker checks again; this says it at once
        except AuthError as exc:
            raise ConfigError(str(exc)) from None
        return compact_model(spec)
    if kind == "path":
        path = str(clean.get("path", ""))
        if path and not path.lower().endswith(".gguf"):
            raise ConfigError(f"path '{path}' must point to a .gguf file")
    try:
        spec = ModelSpec(kind=kind, **clean)  # type: ignore[arg-type]
    except ValueError as exc:  # pydantic's ValidationError
        first = exc.errors()[0] if hasattr(exc, "errors") else {"msg": str(exc)}
        raise ConfigError(str(first["msg"]).removeprefix("Value error, ")) from None
    return compact_model(spec)


def add_model(models: Sequence[Mapping[str, Any]], model: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The list with model appended; a ConfigError if its name is already taken."""
    name = ModelSpec(**model).display_name
    if any(ModelSpec(**m).display_name == name for m in models):
        raise ConfigError(f"a model named '{name}' is already in the list; give the new one a different name")
    return [dict(m) for m in models] + [dict(model)]


def api_key_status(env_name: str | None) -> str:
    """'OPENAI_API_KEY: set' / ': not set' for a name bound to an endpoint, or 'no key needed'.

    Never any part of the key, and nothing about a name no preset or allowlist binds.
    """
    if not env_name:
        return "no key needed"
    if env_name not in bound_key_names():
        return f"{env_name}: not bound to any endpoint"
    return f"{env_name}: {'set' if api_key_value(env_name) else 'not set'}"


def model_source(spec: ModelSpec) -> str:
    if spec.kind == "bundled":
        return f"packaged with Storybench: {builtin_model(spec.builtin).label}"
    if spec.kind == "hf":
        folder = f"{spec.subdirectory.strip('/')}/" if spec.subdirectory else ""
        return f"{spec.repo_id} · {folder}{spec.filename}"
    if spec.kind == "path":
        missing = "" if Path(spec.path or "").expanduser().is_file() else " (not found on this machine)"
        return f"{spec.path}{missing}"
    if spec.kind == "api":
        return f"{spec.api_model} @ {spec.base_url}"
    return "scripted test double"


def builtin_choices() -> dict[str, str]:
    """The 'Add model → Bundled' picker: builtin id → what it is, the default first."""
    return {m.id: m.summary for m in BUILTIN_MODELS.values()}


def models_frame(models: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The model list as the page shows it: name, kind, where from, API key status."""
    rows = []
    for m in models:
        spec = ModelSpec(**m)
        rows.append(
            {
                "name": spec.display_name,
                "kind": spec.kind,
                "source": model_source(spec),
                "api key": key_status(spec) if spec.kind == "api" else "",
            }
        )
    return pd.DataFrame(rows, columns=["name", "kind", "source", "api key"])


def sequence_preview_markdown(sequence: catalog.SequenceDef) -> str:
    """A numbered list of a sequence's prompts for the preview expander."""
    head = f"*{sequence.description}*\n\n" if sequence.description else ""
    items = [f"{i}. **{p.name}** — {p.text}" for i, p in enumerate(sequence.prompts, start=1)]
    return head + "\n".join(items)


# --- named configs, uploads, downloads --------------------------------------------------


def config_slug(name: str) -> str:
    """A file-safe name: 'My run #2' → 'my-run-2'."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.strip().lower()).strip("-._")[:80]
    if not slug:
        raise ConfigError(f"'{name}' cannot be used as a file name; use letters or digits")
    return slug


def safe_slug(name: str) -> str | None:
    """config_slug, or None when the name has nothing usable."""
    try:
        return config_slug(name)
    except ConfigError:
        return None


def saved_config_names() -> list[str]:
    """Names of the configs saved in STORYBENCH_HOME/configs."""
    return sorted(p.stem for p in paths.configs_dir().glob("*.json"))


def save_named_config(config: RunConfig, principal: Principal, store: Store, name: str | None = None) -> Path:
    """Save under configs/<slug of name or config.name>.json (operators; audited); returns the path."""
    require(principal, "save_config")
    target = paths.configs_dir() / f"{config_slug(name or config.name)}.json"
    replaced = target.is_file()
    path = save_config(config, target)
    details = {"path": str(path), "config_hash": config_hash(config), "replaced": replaced}
    audit.record(store, principal, "save_config", path.stem, details)
    return path


def load_named_config(name: str) -> RunConfig:
    return load_config(paths.configs_dir() / f"{config_slug(name)}.json")


def parse_uploaded_config(data: bytes, filename: str = "upload.json") -> RunConfig:
    """Validate an uploaded JSON (or YAML) config file, with the same limits as a file on disk."""
    return parse_config_bytes(data, Path(filename).name or "upload.json")


def config_json(config: RunConfig) -> str:
    return json.dumps(config_to_dict(config), indent=2) + "\n"
