"""The catalog: prompt sequences, the judging rubric and the stock-phrase list.

Packaged defaults live in ``catalog/data``; files of the same name under
``STORYBENCH_HOME/catalog`` override them (``sequences/<id>.json`` replaces or
adds a sequence, ``rubric.json`` and ``stock_phrases.txt`` replace the whole
file). Overrides are read fresh on every call, so an edit shows up without a
restart; a malformed one raises CatalogError naming the file and the field.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from storybench_core import paths
from storybench_core.errors import CatalogError

__all__ = [
    "Criterion",
    "Prompt",
    "Rubric",
    "SequenceDef",
    "export_catalog",
    "get_sequence",
    "list_sequences",
    "load_rubric",
    "load_stock_phrases",
]

SEQUENCES_DIR = "sequences"
RUBRIC_FILE = "rubric.json"
STOCK_PHRASES_FILE = "stock_phrases.txt"
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def _non_empty(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("empty", "is empty")
    return value


def _catalog_error(message: str) -> PydanticCustomError:
    # The message goes through the context so braces in it are not format fields.
    return PydanticCustomError("catalog", "{detail}", {"detail": message})


Text = Annotated[str, AfterValidator(_non_empty)]


def _hash(data: Any) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- sequences ----------------------------------------------------------------


class Prompt(_Frozen):
    """One turn of a sequence: a short name (``concept``) and the brief sent to the model."""

    name: Text
    text: Text


class SequenceDef(_Frozen):
    """A named series of prompts sent as one conversation; later prompts build on earlier answers."""

    id: Text
    title: Text
    genre: str = ""
    description: str = ""
    prompts: tuple[Prompt, ...]

    @field_validator("id")
    @classmethod
    def _id_is_a_slug(cls, value: str) -> str:
        if not _ID_PATTERN.match(value):
            raise _catalog_error(f"{value!r} is not a valid id (use letters, digits, '_' and '-')")
        return value

    @field_validator("prompts")
    @classmethod
    def _prompts_are_usable(cls, prompts: tuple[Prompt, ...]) -> tuple[Prompt, ...]:
        if not prompts:
            raise _catalog_error("needs at least one prompt")
        seen: set[str] = set()
        for prompt in prompts:
            if prompt.name in seen:
                raise _catalog_error(f"prompt name {prompt.name!r} is used more than once")
            seen.add(prompt.name)
        return prompts

    def to_file_dict(self) -> dict[str, Any]:
        """The JSON document this sequence is stored as."""
        return self.model_dump(mode="json")

    @property
    def sequence_hash(self) -> str:
        """sha256 (first 16 hex chars) of the canonical JSON, prompt text included."""
        return _hash(self.to_file_dict())


# --- rubric -------------------------------------------------------------------


class Criterion(_Frozen):
    """One scored dimension with a described anchor for every level of the scale."""

    id: Text
    name: Text
    description: Text
    anchors: dict[int, Text]


class Rubric(_Frozen):
    """The judge's scoring guide: criteria scored on a whole-number scale."""

    id: Text
    version: int
    scale_min: int
    scale_max: int
    criteria: tuple[Criterion, ...]

    @model_validator(mode="after")
    def _consistent(self) -> Rubric:
        if self.scale_min >= self.scale_max:
            raise _catalog_error(f"scale: min ({self.scale_min}) must be smaller than max ({self.scale_max})")
        if not self.criteria:
            raise _catalog_error("criteria: needs at least one criterion")
        expected = list(range(self.scale_min, self.scale_max + 1))
        seen: set[str] = set()
        for index, criterion in enumerate(self.criteria):
            if criterion.id in seen:
                raise _catalog_error(f"criteria[{index}].id: {criterion.id!r} is used more than once")
            seen.add(criterion.id)
            levels = sorted(criterion.anchors)
            if levels != expected:
                raise _catalog_error(
                    f"criteria[{index}].anchors: has levels {levels}, expected exactly "
                    f"{expected} (scale.min..scale.max)"
                )
        return self

    @classmethod
    def from_file_dict(cls, data: Any) -> Rubric:
        """Build from the rubric.json layout ({"scale": {"min", "max"}, ...}); raises ValidationError."""
        file = _RubricFile.model_validate(data)
        return cls(
            id=file.id,
            version=file.version,
            scale_min=file.scale.min,
            scale_max=file.scale.max,
            criteria=file.criteria,
        )

    def to_file_dict(self) -> dict[str, Any]:
        """The rubric.json document; anchor keys become strings as JSON requires."""
        return {
            "id": self.id,
            "version": self.version,
            "scale": {"min": self.scale_min, "max": self.scale_max},
            "criteria": [
                {
                    "id": c.id,
                    "name": c.name,
                    "description": c.description,
                    "anchors": {str(level): c.anchors[level] for level in sorted(c.anchors)},
                }
                for c in self.criteria
            ],
        }

    @property
    def criterion_ids(self) -> tuple[str, ...]:
        return tuple(c.id for c in self.criteria)

    @property
    def rubric_hash(self) -> str:
        """sha256 (first 16 hex chars) of the canonical JSON; any wording change changes it."""
        return _hash(self.to_file_dict())

    def text(self) -> str:
        """Canonical plain-text rendering, used in judge prompts and stable for hashing."""
        lines = [
            f"Rubric {self.id} (version {self.version}).",
            f"Score every criterion with a whole number from {self.scale_min} (lowest) "
            f"to {self.scale_max} (highest).",
        ]
        for criterion in self.criteria:
            lines += ["", f"{criterion.id}: {criterion.name}", f"  {criterion.description}"]
            lines += [f"  {level} = {criterion.anchors[level]}" for level in sorted(criterion.anchors)]
        return "\n".join(lines) + "\n"


class _Scale(_Frozen):
    min: int
    max: int


class _RubricFile(_Frozen):
    id: Text
    version: int
    scale: _Scale
    criteria: tuple[Criterion, ...]


# --- loading ------------------------------------------------------------------


def _packaged() -> Traversable:
    return resources.files(__name__) / "data"


def _override_dir() -> Path:
    return paths.catalog_override_dir()


def _where(relative: str, origin: Path | None) -> str:
    if origin is None:
        return "this is a packaged default file; please report it as a bug"
    return f"fix or delete {origin}"


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]":
            out += " (key)"
        else:
            out += f".{part}" if out else str(part)
    return out


def _describe(error: Any) -> str:
    """One pydantic error as 'field problem', in words a person editing JSON understands."""
    loc = _format_loc(tuple(error["loc"]))
    kind = error["type"]
    if kind == "catalog":
        message = error["ctx"]["detail"]
        return f"{loc}: {message}" if loc else message
    if kind == "missing":
        return f"{loc} is missing"
    if kind == "empty":
        return f"{loc} is empty"
    if kind == "extra_forbidden":
        return f"{loc} is not a known field (check the spelling)"
    message = error["msg"][:1].lower() + error["msg"][1:]
    return f"{loc}: {message}" if loc else message


def _read_text(relative: str, origin: Path | None) -> str:
    try:
        if origin is None:
            return _packaged().joinpath(*relative.split("/")).read_text(encoding="utf-8")
        return origin.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{relative}: cannot be read ({exc}); {_where(relative, origin)}") from exc


def _read_json(relative: str, origin: Path | None) -> Any:
    text = _read_text(relative, origin)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogError(
            f"{relative}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}; "
            f"{_where(relative, origin)}"
        ) from exc


def _invalid(relative: str, origin: Path | None, exc: ValidationError) -> CatalogError:
    problems = "; ".join(_describe(e) for e in exc.errors())
    return CatalogError(f"{relative}: {problems} ({_where(relative, origin)})")


def _parse_sequence(relative: str, origin: Path | None, expected_id: str) -> SequenceDef:
    data = _read_json(relative, origin)
    try:
        sequence = SequenceDef.model_validate(data)
    except ValidationError as exc:
        raise _invalid(relative, origin, exc) from None
    if sequence.id != expected_id:
        raise CatalogError(
            f"{relative}: id {sequence.id!r} does not match the file name; "
            f"set id to {expected_id!r} or rename the file ({_where(relative, origin)})"
        )
    return sequence


@lru_cache(maxsize=1)
def _packaged_sequences() -> dict[str, SequenceDef]:
    folder = _packaged() / SEQUENCES_DIR
    sequences = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".json"):
            sequence_id = entry.name.removesuffix(".json")
            sequences[sequence_id] = _parse_sequence(f"{SEQUENCES_DIR}/{entry.name}", None, sequence_id)
    return sequences


def _override_sequence_files() -> dict[str, Path]:
    folder = _override_dir() / SEQUENCES_DIR
    if not folder.is_dir():
        return {}
    return {
        path.stem: path
        for path in sorted(folder.glob("*.json"))
        if path.is_file() and not path.name.startswith(".")
    }


def list_sequences() -> list[SequenceDef]:
    """Every sequence, packaged and user-defined, sorted by id; an override wins over a default."""
    sequences = dict(_packaged_sequences())
    for sequence_id, path in _override_sequence_files().items():
        sequences[sequence_id] = _parse_sequence(f"{SEQUENCES_DIR}/{path.name}", path, sequence_id)
    return [sequences[key] for key in sorted(sequences)]


def get_sequence(sequence_id: str) -> SequenceDef:
    """One sequence by id; only its own override file is read, so a broken neighbour does not block it."""
    path = _override_dir() / SEQUENCES_DIR / f"{sequence_id}.json"
    if _ID_PATTERN.match(sequence_id) and path.is_file():
        return _parse_sequence(f"{SEQUENCES_DIR}/{path.name}", path, sequence_id)
    packaged = _packaged_sequences()
    if sequence_id in packaged:
        return packaged[sequence_id]
    available = sorted(set(packaged) | set(_override_sequence_files()))
    raise CatalogError(
        f"Unknown sequence {sequence_id!r}. Available: {', '.join(available)}. "
        f"To add one, write {_override_dir() / SEQUENCES_DIR / (sequence_id + '.json')} "
        "(export_catalog() writes the packaged ones out as examples to copy)."
    )


def load_rubric() -> Rubric:
    """The user's rubric.json override if present, else the packaged default."""
    override = _override_dir() / RUBRIC_FILE
    origin = override if override.is_file() else None
    data = _read_json(RUBRIC_FILE, origin)
    try:
        return Rubric.from_file_dict(data)
    except ValidationError as exc:
        raise _invalid(RUBRIC_FILE, origin, exc) from None


def load_stock_phrases() -> list[str]:
    """Stock phrases, stripped and de-duplicated (case-insensitively), in file order.

    An override file replaces the packaged list completely; an empty override
    switches the metric off.
    """
    override = _override_dir() / STOCK_PHRASES_FILE
    origin = override if override.is_file() else None
    phrases: list[str] = []
    seen: set[str] = set()
    for line in _read_text(STOCK_PHRASES_FILE, origin).splitlines():
        phrase = line.strip()
        if phrase and not phrase.startswith("#") and phrase.casefold() not in seen:
            seen.add(phrase.casefold())
            phrases.append(phrase)
    return phrases


def export_catalog(dest_dir: str | Path, overwrite: bool = False) -> list[Path]:
    """Copy the packaged defaults into dest_dir (same layout as the override folder).

    Refuses to replace existing files unless overwrite is true. Returns the paths written.
    """
    dest = Path(dest_dir).expanduser()
    sources = [f"{SEQUENCES_DIR}/{entry.name}" for entry in (_packaged() / SEQUENCES_DIR).iterdir()]
    sources = [*sorted(s for s in sources if s.endswith(".json")), RUBRIC_FILE, STOCK_PHRASES_FILE]
    targets = [dest / relative for relative in sources]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise CatalogError(
            f"export_catalog: {len(existing)} file(s) already exist in {dest} (first: {existing[0]}); "
            "choose an empty folder or pass overwrite=True"
        )
    try:
        for relative, target in zip(sources, targets, strict=True):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(_packaged().joinpath(*relative.split("/")).read_bytes())
    except OSError as exc:
        raise CatalogError(f"export_catalog: cannot write to {dest} ({exc})") from exc
    return targets
