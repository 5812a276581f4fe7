"""Untrusted text (model output, judge justifications, names) made safe to show, print and export.

- `safe_markdown(text)`: Markdown that keeps emphasis, lists and paragraphs but cannot load an
  image, link anywhere, inject HTML, or use Streamlit's directives (`:red[…]`, `:material/…:`)
  and math: images and links become their text, and the characters those constructs need
  become character references, which Markdown shows as text and never parses as markup.
- `safe_inline(text)`: one line for labels and headings, every Markdown character inert.
- `csv_safe(value)`, `csv_safe_frame(frame)`: a cell that starts with = + - @ (or a tab or
  carriage return) gets a leading apostrophe, so a spreadsheet never runs it as a formula.
- `terminal_safe(text)`: ANSI/OSC escape sequences and other control characters removed.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

_IMAGE = re.compile(r"!\[([^\]\n]*)\]\([^)\n]*\)")
_LINK = re.compile(r"\[([^\]\n]*)\]\([^)\n]*\)")
_REFERENCE = re.compile(r"^[ ]{0,3}\[[^\]\n]+\]:[^\n]*$", re.M)
_REF_LINK = re.compile(r"\[([^\]\n]+)\]\[[^\]\n]*\]")
# '[' ']' (links, images, directives) and '<' (HTML, autolinks) always; '$' (math) always;
# ':' where it starts a URL or an icon/emoji shortcode; '@' inside an e-mail address.
_ENTITIES = {"[": "&#91;", "]": "&#93;", "<": "&lt;", "$": "&#36;"}
_ACTIVE = re.compile(r"[\[\]<$]|:(?=//)|:(?=[\w/+-]+:)|(?<=\S)@(?=\S)")
_WWW = re.compile(r"\bwww\.", re.I)
# For one-line labels, emphasis, code, headings and tables are inert too.
_INLINE = re.compile(r"[*_~`#|>\\]")


def _without_links(text: str) -> str:
    text = _IMAGE.sub(lambda m: m[1], text)
    text = _LINK.sub(lambda m: m[1], text)
    text = _REF_LINK.sub(lambda m: m[1], text)
    return _REFERENCE.sub("", text)


def _www(text: str) -> str:
    return _WWW.sub(lambda m: m[0][:3] + "&#46;", text)  # 'www.' autolinks without a scheme


def _entity(match: re.Match[str]) -> str:
    return _ENTITIES.get(match[0]) or f"&#{ord(match[0])};"


def safe_markdown(text: str | None) -> str:
    """Markdown for untrusted text: no images, links, HTML, directives or math can act."""
    if not text:
        return ""
    return _www(_ACTIVE.sub(_entity, _without_links(str(text))))


def safe_inline(text: str | None) -> str:
    """One line of untrusted text for a label or heading: shown as the plain text it is."""
    line = _INLINE.sub(_entity, _without_links(" ".join(str(text or "").split())))
    return _www(_ACTIVE.sub(_entity, line))


# --- CSV ----------------------------------------------------------------------------------

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: Any) -> Any:
    """A cell value a spreadsheet will not run: text starting with = + - @ gets a leading '."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_safe_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy whose text cells (and column names) are csv_safe; numbers are left as they are."""
    import pandas as pd  # lazily: the CLI imports this module for terminal_safe

    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column]):
            out[column] = out[column].map(csv_safe)
    out.columns = [csv_safe(str(c)) if isinstance(c, str) else c for c in out.columns]
    return out


# --- terminals ----------------------------------------------------------------------------

# CSI (ESC [ … final), OSC (ESC ] … BEL or ESC \), other ESC sequences, the C1 forms of CSI/OSC,
# then every remaining C0/C1 control character except newline and tab.
_ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"
    r"|\x1b[@-Z\\-_]?"
    r"|\x9b[0-?]*[ -/]*[@-~]"
    r"|\x9d[^\x07\x9c]*[\x07\x9c]?"
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]"
)


def terminal_safe(text: Any) -> str:
    """text with escape sequences and control characters (but not newlines or tabs) removed."""
    return _ANSI.sub("", str(text))
