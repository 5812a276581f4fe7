"""RunConfig: which models, which settings, which sequences, which judge.

Validated with pydantic at the edge (file load, upload, UI form); errors are
turned into one ConfigError whose lines name the field, the bad value and the
allowed range. A config may come from anyone on a shared server, so the edge
also bounds it: file size, UTF-8 text, no YAML aliases, typed options, and
caps on models and tasks per evaluation. `config_hash` covers the canonical config *and* the text of
every prompt and of the rubric, so two evaluations with the same hash asked
the models exactly the same thing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .backends.options import options_problems
from .errors import ConfigError

# "fake" is the scripted test double (backends/fake.py), registered like any backend but
# refused in configs unless STORYBENCH_ENABLE_FAKE_BACKEND=1 (the test suite sets it).
ModelKind = Literal["bundled", "hf", "path", "api", "fake"]
FAKE_BACKEND_ENV = "STORYBENCH_ENABLE_FAKE_BACKEND"

# What one config may ask of a shared server. The operator can change the two
# per-evaluation limits with these environment variables.
MAX_CONFIG_BYTES = 1_000_000
MAX_MODELS_ENV, DEFAULT_MAX_MODELS = "STORYBENCH_MAX_MODELS", 16
MAX_TASKS_ENV, DEFAULT_MAX_TASKS = "STORYBENCH_MAX_TASKS", 10_000
MAX_JUDGES = 8

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._:/()+-]{0,119}$")
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")


def fake_backend_enabled() -> bool:
    return os.environ.get(FAKE_BACKEND_ENV, "").strip().lower() in ("1", "true", "yes")


def _limit(env: str, default: int) -> int:
    """An operator's limit from the environment (a positive integer), else the default."""
    raw = os.environ.get(env, "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else default


def max_models() -> int:
    return _limit(MAX_MODELS_ENV, DEFAULT_MAX_MODELS)


def max_tasks() -> int:
    return _limit(MAX_TASKS_ENV, DEFAULT_MAX_TASKS)


def _url_has_secrets(url: str) -> bool:
    """True when a URL carries userinfo (user:password@), a query string or a fragment."""
    netloc = url.split("://", 1)[1].split("/", 1)[0] if "://" in url else url.split("/", 1)[0]
    return "@" in netloc or "?" in url or "#" in url


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    """One model to evaluate (or to judge with).

    kind = bundled: a built-in model, no download (`builtin` picks which, default
    Gemma 3 270M; bundled.py); hf: a GGUF on the Hugging Face hub (repo_id +
    filename [+ subdirectory, revision]); path: a GGUF on disk;
    api: an OpenAI-compatible endpoint (base_url + api_model; the key is read
    from the environment variable named by api_key_env, never stored).
    """

    name: str = ""
    kind: ModelKind = "bundled"
    # kind = bundled: which built-in model (bundled.BUILTIN_MODELS); None = the default, Gemma 3 270M.
    builtin: str | None = None
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

    @field_validator("builtin")
    @classmethod
    def _default_builtin_is_none(cls, value: str | None) -> str | None:
        from .bundled import DEFAULT_BUILTIN

        return None if value == DEFAULT_BUILTIN else value  # one spelling per model: same ref, same hash

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
        if self.builtin is not None:
            from .bundled import BUILTIN_MODELS

            if self.kind != "bundled":
                raise ValueError("builtin is only for a model of kind 'bundled'")
            if self.builtin not in BUILTIN_MODELS:
                raise ValueError(
                    f"builtin '{self.builtin}' is not known (use one of {', '.join(BUILTIN_MODELS)})"
                )
        if self.kind == "hf" and self.filename and not self.filename.endswith(".gguf"):
            raise ValueError(f"filename '{self.filename}' must be a .gguf file")
        if self.kind == "api" and self.base_url and _url_has_secrets(self.base_url):
            raise ValueError(
                # Not echoed: it holds what looks like a credential.
                "base_url must not hold credentials, a query string or a fragment; an API key goes in "
                "an environment variable the operator binds to the endpoint (README: Running a shared "
                "server safely)"
            )
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

    @model_validator(mode="after")
    def _check_untrusted_fields(self) -> ModelSpec:
        """What a config from someone else may not do: the test double, odd or huge options."""
        if self.kind == "fake" and not fake_backend_enabled():
            raise ValueError(
                "kind 'fake' is Storybench's test double and is off outside the test suite "
                f"({FAKE_BACKEND_ENV}=1 turns it on); use bundled, hf, path or api"
            )
        problems = options_problems(self.kind, self.options)
        if problems:
            raise ValueError("; ".join(problems))
        if self.kind == "hf":
            # These become a path under models/hub: no way out of it.
            for field_name in ("filename", "subdirectory"):
                value = getattr(self, field_name) or ""
                if value.startswith(("/", "\\")) or ".." in re.split(r"[/\\]", value):
                    raise ValueError(
                        f"{field_name} must be a path inside the repository (no '..', no leading '/')"
                    )
            if self.repo_id and not _REPO_ID_RE.match(self.repo_id):
                raise ValueError(f"repo_id must look like 'owner/name' (got {self.repo_id[:80]!r})")
        return self

    @property
    def display_name(self) -> str:
        """The name used in results: the given name or one derived from the source."""
        if self.name:
            return self.name
        if self.kind == "bundled":
            from .bundled import builtin_model

            return builtin_model(self.builtin).display_name
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
    extra_models: tuple[ModelSpec, ...] = Field(default=(), max_length=MAX_JUDGES - 1)
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
    sequences: tuple[str, ...] = Field(min_length=1, max_length=200)
    judge: JudgeConfig = JudgeConfig()
    auto_evaluate: bool = False

    @model_validator(mode="before")
    @classmethod
    def _check_model_count(cls, data: Any) -> Any:
        # Before the models are validated one by one: a config listing thousands is refused at once.
        models = data.get("models") if isinstance(data, dict) else None
        limit = max_models()
        if isinstance(models, list | tuple) and len(models) > limit:
            raise ValueError(
                f"models lists {len(models)} models; an evaluation may have at most {limit} "
                f"(the operator can change this with {MAX_MODELS_ENV})"
            )
        return data

    @model_validator(mode="after")
    def _check_unique(self) -> RunConfig:
        # One pass: each model's name (given or derived) is computed once and looked up in a set.
        seen: set[str] = set()
        repeated: set[str] = set()
        for spec in self.models:
            name = spec.display_name
            (repeated if name in seen else seen).add(name)
        if repeated:
            shown = sorted(repeated)[:10]
            more = f" and {len(repeated) - 10} more" if len(repeated) > 10 else ""
            raise ValueError(
                f"model names must be unique; give each a 'name' (repeated: {', '.join(shown)}{more})"
            )
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
            shown = repr(err["input"])
            msg = f"{shown if len(shown) <= 80 else shown[:77] + '...'} is invalid: {msg}"
        if bounds:
            msg += f" (allowed: {', '.join(bounds)})"
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check its spelling against the README's configuration table)"
        lines.append(f"{loc}: {msg}")
    if len(lines) > 20:
        lines[20:] = [f"... and {len(lines) - 20} more"]
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
    _check_task_count(config, source)
    _check_model_paths(config, source)
    return config


def _check_model_paths(config: RunConfig, source: str) -> None:
    """`path` models only from the model folders (the loader checks again: backends/llama.py)."""
    from .paths import confine_model_path

    for where, spec in [
        *((f"models.{i}", m) for i, m in enumerate(config.models)),
        *((f"judge model {m.display_name!r}", m) for m in config.judge.judges()),
    ]:
        if spec.kind == "path" and spec.path:
            try:
                confine_model_path(spec.path)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc} ({source or 'config'})") from None


def _check_task_count(config: RunConfig, source: str) -> None:
    from . import catalog

    prompts = sum(len(catalog.get_sequence(s).prompts) for s in config.sequences)
    tasks = len(config.models) * config.generation.runs * prompts
    limit = max_tasks()
    if tasks > limit:
        raise ConfigError(
            f"this configuration asks for {tasks:,} responses ({len(config.models)} models × "
            f"{config.generation.runs} runs × {prompts} prompts; {source or 'config'}); an evaluation "
            f"may have at most {limit:,} — use fewer models, runs or sequences (the operator can "
            f"change the limit with {MAX_TASKS_ENV})"
        )


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
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(
            f"cannot read the config file {path}: {exc.strerror or exc} — check its permissions"
        ) from None
    return parse_config_bytes(data, str(path))


def parse_config_bytes(data: bytes, source: str) -> RunConfig:
    """Validate the bytes of a config file (.yaml/.yml by its name, else JSON), as read or uploaded.

    Everything a hostile file can do is refused with one ConfigError: too large,
    not UTF-8 text, YAML anchors/aliases (a few hundred bytes can expand to
    gigabytes), nesting too deep, numbers too long.
    """
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{source}: the config file is larger than {MAX_CONFIG_BYTES:,} bytes; a config is a few kB "
            "of JSON — check that this is the right file"
        )
    text = _config_text(data, source)
    try:
        is_yaml = source.lower().endswith((".yaml", ".yml"))
        parsed = _load_yaml(text, source) if is_yaml else json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{source}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise ConfigError(f"{source}: the config is nested too deeply to be a Storybench config") from None
    except ValueError as exc:  # e.g. an integer with thousands of digits
        raise ConfigError(f"{source}: not a valid config: {exc}") from None
    return parse_config(parsed, source=source)


def _config_text(data: bytes, source: str) -> str:
    """The file as text, or a ConfigError that says what it is instead (binary, UTF-16)."""
    head = data[:64]
    utf16 = data.startswith((b"\xff\xfe", b"\xfe\xff")) or (
        len(head) >= 2 and (all(b == 0 for b in head[1::2]) or all(b == 0 for b in head[0::2]))
    )
    if utf16:
        raise ConfigError(
            f"{source}: the file is UTF-16 (or UTF-32) text, not UTF-8; save it again as UTF-8 JSON or YAML"
        )
    if b"\x00" in data:
        raise ConfigError(f"{source}: this is a binary file, not a JSON or YAML config")
    try:
        return data.decode("utf-8-sig")  # a UTF-8 byte-order mark is harmless: accept it
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{source}: not UTF-8 text (byte {exc.start} is 0x{data[exc.start]:02x}); save it as UTF-8 "
            "JSON or YAML"
        ) from None


def _load_yaml(text: str, source: str) -> Any:
    """yaml.safe_load without anchors and aliases (the "billion laughs" expansion)."""
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                mark = event.start_mark
                raise ConfigError(
                    f"{source}: YAML anchors and aliases (&name, *name) are not allowed in a config "
                    f"(line {mark.line + 1}, column {mark.column + 1}); write each value out"
                )
            return super().compose_node(parent, index)

    try:
        return yaml.load(text, Loader=NoAliasLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    return config.model_dump(mode="json", exclude_defaults=False)


def save_config(config: RunConfig, path: str | Path) -> Path:
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(config_to_dict(config), indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise ConfigError(
            f"cannot save the config to {path}: {exc.strerror or exc} — check that the folder is writable"
        ) from None
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
