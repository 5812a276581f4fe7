"""RunConfig: which models, which settings, which sequences, which judge.

Validated with pydantic at the edge (file load, UI form); errors are turned
into one ConfigError whose lines name the field, the bad value and the
allowed range. `config_hash` covers the canonical config *and* the text of
every prompt and of the rubric, so two evaluations with the same hash asked
the models exactly the same thing.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError

# "fake" is the scripted test double (backends/fake.py), registered like any backend.
ModelKind = Literal["bundled", "hf", "path", "api", "fake"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._:/()+-]{0,119}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    """One model to evaluate (or to judge with).

    kind = bundled: the packaged Gemma 3 270M; hf: a GGUF on the Hugging Face
    hub (repo_id + filename [+ subdirectory, revision]); path: a GGUF on disk;
    api: an OpenAI-compatible endpoint (base_url + api_model; the key is read
    from the environment variable named by api_key_env, never stored).
    """

    name: str = ""
    kind: ModelKind = "bundled"
    repo_id: str | None = None
    filename: str | None = None
    subdirectory: str | None = None
    revision: str | None = None
    path: str | None = None
    base_url: str | None = None
    api_model: str | None = None
    api_key_env: str | None = None
    preset: str | None = None
    max_concurrency: int = Field(default=4, ge=1, le=64)
    requests_per_minute: int | None = Field(default=None, ge=1, le=100_000)
    timeout_s: float = Field(default=120.0, gt=0, le=3600)
    # None = choose from free VRAM and generation.vram_limit_percent.
    n_gpu_layers: int | None = Field(default=None, ge=-1, le=1000)
    # Backend-specific extras (llama: n_threads, chat_format, flash_attn; fake: delay_s, fail_on).
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_kind_fields(self) -> ModelSpec:
        need: dict[str, tuple[str, ...]] = {
            "bundled": (),
            "hf": ("repo_id", "filename"),
            "path": ("path",),
            "api": ("base_url", "api_model"),
            "fake": (),
        }
        missing = [f for f in need[self.kind] if not getattr(self, f)]
        if missing:
            raise ValueError(f"a model of kind '{self.kind}' needs {', '.join(missing)}")
        if self.kind == "hf" and self.filename and not self.filename.endswith(".gguf"):
            raise ValueError(f"filename '{self.filename}' must be a .gguf file")
        if self.kind == "api" and self.base_url and not re.match(r"^https?://", self.base_url):
            raise ValueError(f"base_url '{self.base_url}' must start with http:// or https://")
        if self.api_key_env and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", self.api_key_env):
            raise ValueError(
                # The value is not echoed: users sometimes paste the key itself here.
                "api_key_env must be the NAME of an environment variable "
                "(e.g. OPENAI_API_KEY), not the key itself"
            )
        if self.name and not _NAME_RE.match(self.name):
            raise ValueError(f"name '{self.name}' may use letters, digits, spaces and ._:/()+- only")
        return self

    @property
    def display_name(self) -> str:
        """The name used in results: the given name or one derived from the source."""
        if self.name:
            return self.name
        if self.kind == "bundled":
            return "gemma-3-270m-q4_k_m (bundled)"
        if self.kind == "hf":
            return f"{self.repo_id}/{self.filename}"
        if self.kind == "path":
            return Path(self.path or "").name
        if self.kind == "fake":
            return "fake"
        return f"{self.api_model} @ {self.base_url}"

    def ref(self) -> dict[str, Any]:
        """Where the model comes from, for storing with each response (no secrets)."""
        return self.model_dump(exclude_none=True, exclude={"name"})


class GenerationSettingsConfig(_Strict):
    temperature: float = Field(default=0.8, ge=0.0, le=2.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(default=512, ge=1, le=32_768)
    runs: int = Field(default=3, ge=1, le=100)
    seed: int = Field(default=42, ge=0, le=2**31 - 1)
    n_ctx: int = Field(default=4096, ge=256, le=262_144)
    vram_limit_percent: int = Field(default=90, ge=10, le=100)
    # Cap on conversations decoded together (None = choose from memory; 1 = sequential).
    parallel_runs: int | None = Field(default=None, ge=1, le=64)
    system_prompt: str = Field(
        default="You are a skilled, original fiction writer. Answer every brief fully and concretely.",
        max_length=4000,
    )

    @model_validator(mode="after")
    def _check_budget(self) -> GenerationSettingsConfig:
        if self.max_tokens >= self.n_ctx:
            raise ValueError(
                f"max_tokens ({self.max_tokens}) must be smaller than n_ctx ({self.n_ctx}): "
                "the prompt needs room too"
            )
        return self


class JudgeConfig(_Strict):
    enabled: bool = False
    model: ModelSpec | None = None
    # More judges for agreement figures; the first is `model`.
    extra_models: tuple[ModelSpec, ...] = ()
    attempts: int = Field(default=1, ge=1, le=10, description="independent judgements per response")
    max_retries: int = Field(default=2, ge=0, le=10, description="retries of an invalid answer")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(default=768, ge=64, le=8192)

    def judges(self) -> list[ModelSpec]:
        return [m for m in (self.model, *self.extra_models) if m is not None]


class RunConfig(_Strict):
    name: str = Field(default="evaluation", min_length=1, max_length=120)
    models: tuple[ModelSpec, ...] = Field(min_length=1)
    generation: GenerationSettingsConfig = GenerationSettingsConfig()
    sequences: tuple[str, ...] = Field(min_length=1)
    judge: JudgeConfig = JudgeConfig()
    auto_evaluate: bool = False

    @model_validator(mode="after")
    def _check_unique(self) -> RunConfig:
        names = [m.display_name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique; give each a 'name' (repeated: {', '.join(dupes)})")
        if len(set(self.sequences)) != len(self.sequences):
            raise ValueError("sequences lists a sequence twice")
        if self.auto_evaluate and not self.judge.judges():
            raise ValueError("auto_evaluate needs judge.model to be set")
        return self

    def with_overrides(self, **generation: Any) -> RunConfig:
        """A copy with some generation settings replaced (CLI flags), re-validated."""
        gen = self.generation.model_dump() | {k: v for k, v in generation.items() if v is not None}
        return parse_config(self.model_dump() | {"generation": gen})

    def with_sequences(self, sequences: list[str]) -> RunConfig:
        return parse_config(self.model_dump() | {"sequences": list(sequences)})


# --- validation at the edge ---------------------------------------------------


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        ctx = err.get("ctx") or {}
        bounds = [f"{k} {ctx[k]}" for k in ("ge", "gt", "le", "lt") if k in ctx]
        if "input" in err and err["type"] != "missing" and not isinstance(err["input"], dict | list):
            msg = f"{err['input']!r} is invalid: {msg}"
        if bounds:
            msg += f" (allowed: {', '.join(bounds)})"
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check its spelling against the README's configuration table)"
        lines.append(f"{loc}: {msg}")
    head = f"invalid configuration ({source})" if source else "invalid configuration"
    return head + ":\n  " + "\n  ".join(lines)


def parse_config(data: Any, source: str = "") -> RunConfig:
    """Validate a dict into a RunConfig, or raise ConfigError naming every bad field."""
    if not isinstance(data, dict):
        raise ConfigError(f"configuration must be a JSON object, got {type(data).__name__} ({source})")
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None
    _check_sequences_exist(config, source)
    return config


def _check_sequences_exist(config: RunConfig, source: str) -> None:
    from . import catalog

    known = {s.id for s in catalog.list_sequences()}
    unknown = [s for s in config.sequences if s not in known]
    if unknown:
        raise ConfigError(
            f"sequences: unknown sequence(s) {', '.join(unknown)}"
            f" ({source or 'config'}); available: {', '.join(sorted(known))}"
        )


def load_config(path: str | Path) -> RunConfig:
    """Load a JSON (or YAML) config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file not found: {path} — give the path to a .json file, e.g. examples/quickstart.json"
        )
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except Exception as exc:  # yaml.YAMLError without importing yaml at module level
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, source=str(path))


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    return config.model_dump(mode="json", exclude_defaults=False)


def save_config(config: RunConfig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(config_to_dict(config), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def canonical_config(config: RunConfig) -> dict[str, Any]:
    """The config plus the exact prompt and rubric text it will use."""
    from . import catalog

    data = config_to_dict(config)
    data["name"] = ""  # renaming an evaluation does not change what was asked
    data["sequence_texts"] = {
        sid: [{"name": p.name, "text": p.text} for p in catalog.get_sequence(sid).prompts]
        for sid in config.sequences
    }
    data["rubric_text"] = catalog.load_rubric().text()
    return data


def config_hash(config: RunConfig) -> str:
    blob = json.dumps(canonical_config(config), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
