"""Terminal rendering for the CLI: a task progress bar, byte bars, tables."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

from .runner import RunHooks
from .store.base import Doc, Store
from .text_safety import terminal_safe


class ConsoleProgress:
    """A tqdm bar over tasks with the current model/sequence/prompt and tokens/s."""

    def __init__(self, total: int, initial: int = 0) -> None:
        self.bar = tqdm(total=total, initial=initial, unit="task", file=sys.stderr, dynamic_ncols=True)
        self._key: tuple[Any, ...] | None = None

    def hooks(self) -> RunHooks:
        return RunHooks(event=self._event, progress=self._progress)

    def _event(self, level: str, message: str, **_: Any) -> None:
        if level in ("warning", "error") or message.startswith(("loaded", "loading", "reusing", "resuming")):
            line = f"{level}: {message}" if level != "info" else message
            self.bar.write(terminal_safe(line), file=sys.stderr)
        if message.startswith("stored "):
            self.bar.update(1)

    def _progress(self, fields: dict[str, Any]) -> None:
        tps = fields.get("tokens_per_s")
        self.bar.set_postfix_str(
            terminal_safe(
                f"{fields['model_name']} · {fields['sequence']} · run {fields['run']} · "
                f"prompt {fields['prompt_index'] + 1}" + (f" · {tps:.1f} tok/s" if tps else "")
            ),
            refresh=False,
        )
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


class ByteProgress:
    """A tqdm bar in bytes for downloads; update(done, total)."""

    def __init__(self, label: str) -> None:
        self.bar = tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc=label, file=sys.stderr)

    def update(self, done: int, total: int | None) -> None:
        if total and self.bar.total != total:
            self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def response_rows(docs: list[Doc], text_width: int | None = None) -> list[dict[str, Any]]:
    rows = []
    for d in docs:
        text = (d.get("response") or "").replace("\n", " ")
        if text_width is not None and len(text) > text_width:
            text = text[: text_width - 1] + "…"
        rows.append(
            {
                "model": d["model_name"],
                "sequence": d["sequence"],
                "run": d["run"],
                "prompt": d["prompt_index"] + 1,
                "tokens": d.get("completion_tokens") or 0,
                "tok_s": round(d.get("tokens_per_s") or 0.0, 1),
                "finish": d.get("finish_reason") or "",
                "error": d.get("error") or "",
                "response": text,
            }
        )
    return rows


def to_table(rows: list[dict[str, Any]]) -> str:
    """A plain aligned text table; model text in it cannot drive the terminal (terminal_safe)."""
    if not rows:
        return "(no rows)"
    cols = list(rows[0])
    cells = [[terminal_safe(r.get(c, "")).replace("\n", " ").replace("\t", " ") for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join([line, sep, *body])


def summary_rows(docs: list[Doc]) -> list[dict[str, Any]]:
    """Per model: responses, failures, mean tokens, tokens/s."""
    by_model: dict[str, list[Doc]] = {}
    for d in docs:
        by_model.setdefault(d["model_name"], []).append(d)
    rows = []
    for model, items in by_model.items():
        ok = [d for d in items if not d.get("error")]
        tokens = sum(d.get("completion_tokens") or 0 for d in ok)
        seconds = sum(d.get("generation_time_s") or 0.0 for d in ok)
        rows.append(
            {
                "model": model,
                "responses": len(ok),
                "failed": len(items) - len(ok),
                "mean_tokens": round(tokens / len(ok), 1) if ok else 0,
                "tok_s": round(tokens / seconds, 1) if seconds else 0.0,
                "truncated": sum(1 for d in ok if d.get("finish_reason") == "length"),
            }
        )
    return rows


def print_summary(store: Store, evaluation: Doc) -> None:
    docs = store.list_responses(evaluation["id"], include_messages=False)
    print(
        terminal_safe(
            f"\n{evaluation['name']} — status {evaluation['status']}, "
            f"{len(docs)}/{evaluation['total_tasks']} tasks stored"
        )
    )
    print(to_table(summary_rows(docs)))
