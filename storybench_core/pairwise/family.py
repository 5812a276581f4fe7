"""The same-family check: a judge from the candidates' own model family."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from ..config import ModelSpec
from ..errors import StorybenchError

# --- the same-family check -------------------------------------------------------------------

_FAMILIES = ("gemma", "llama", "qwen", "mistral", "mixtral", "phi", "gpt", "claude", "deepseek", "command",
             "falcon", "olmo", "granite", "smollm", "internlm", "glm", "nemotron", "grok", "yi")  # fmt: skip
_FAMILY_ALIASES = {"mixtral": "mistral", "codellama": "llama", "codegemma": "gemma"}


def _local_gguf(spec: ModelSpec) -> Path | None:
    """The spec's GGUF file when it is already on disk (never downloads)."""
    try:
        if spec.kind == "bundled":
            from ..bundled import bundled_model_path

            path = bundled_model_path(spec.builtin)
        elif spec.kind == "path":
            path = Path(spec.path or "").expanduser()
        elif spec.kind == "hf" and spec.repo_id and spec.filename:
            from ..hub import ModelRef, local_path_for

            path = local_path_for(ModelRef(spec.repo_id, spec.filename, subdirectory=spec.subdirectory))
        else:
            return None
    except (StorybenchError, OSError, TypeError):
        return None
    return path if path.is_file() else None


def _family_from_text(text: str) -> str | None:
    low = text.lower()
    for fam in sorted(_FAMILIES, key=len, reverse=True):
        if re.search(rf"(?<![a-z]){fam}", low):
            return _FAMILY_ALIASES.get(fam, fam)
    return None


def model_family(spec: ModelSpec) -> tuple[str | None, str]:
    """(family, how it was found): from the GGUF's architecture metadata when local, else from names."""
    path = _local_gguf(spec)
    if path is not None:
        try:
            from ..gguf_info import read_gguf_info

            arch = read_gguf_info(path).architecture.lower()
        except StorybenchError:
            arch = ""
        match = re.match(r"[a-z]+", arch)
        if match:
            return _FAMILY_ALIASES.get(match.group(0), match.group(0)), "architecture metadata"
    names = [spec.display_name, spec.repo_id, spec.filename, spec.api_model, spec.path]
    if spec.kind == "bundled":
        from ..bundled import builtin_model

        names.append(builtin_model(spec.builtin).label)
    for text in names:
        fam = _family_from_text(text or "")
        if fam:
            return fam, "name"
    return None, ""


def same_family_warnings(judge: ModelSpec, models: Iterable[ModelSpec]) -> list[str]:
    """A warning per judged model from the judge's own family (self-preference bias)."""
    family, how = model_family(judge)
    warnings = []
    for spec in models:
        if spec.kind == judge.kind and spec.ref() == judge.ref():
            warnings.append(
                f"the judge {judge.display_name} is also a judged model ({spec.display_name}): it may prefer "
                "its own writing; use a judge from another family"
            )
            continue
        other, how_other = model_family(spec)
        if family and other == family:
            warnings.append(
                f"the judge {judge.display_name} and the judged model {spec.display_name} are both from the "
                f"'{family}' family (by {how} / {how_other}): verdicts may favour it; "
                "prefer a judge from another family"
            )
    return warnings
