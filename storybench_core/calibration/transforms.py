"""Degradations whose effect on quality is known: each makes a story text worse in one way.

A calibration ladder (ladder.py) applies them cumulatively to a stored response, so rung k+1 is
rung k with one more defect and the true order of the rungs is known without any reader. Every
transform is deterministic for a given seed and is our own code; none calls a model.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

_SENTENCE = re.compile(r"(?<=[.!?…])[\"'”’)]*\s+")
_NAME = re.compile(r"\b[A-Z][a-z]{2,}\b")
# Capitalised words that begin sentences or are common words, not character names.
_NOT_NAMES = frozenset(
    {"The", "A", "An", "And", "But", "Then", "When", "While", "After", "Before", "She", "He", "They", "It", "Its", "Her", "His", "Their", "There", "This", "That", "These", "Those", "What", "Who", "Why", "How", "Where", "Yes", "No", "Not", "Now", "Here", "Once", "One", "Two", "Three", "In", "On", "At", "Of", "For", "With", "From", "By", "As", "If", "So", "Or", "Nor", "Yet", "All", "Each", "Every", "Some", "Any", "Our", "We", "You", "Your", "My", "I", "Me", "Us", "Mr", "Mrs", "Ms", "Dr"}
)  # fmt: skip
_REPLACEMENT_NAMES = ("Ortega", "Bellamy", "Quint", "Harlow", "Sefton", "Marisol", "Ingram", "Tobias")


def sentences(text: str) -> list[str]:
    parts = [p.strip() for p in _SENTENCE.split(text.strip()) if p.strip()]
    return parts or ([text.strip()] if text.strip() else [])


def shuffle_sentences(text: str, rng: random.Random) -> str:
    """The same sentences in another order: coherence first of all is lost."""
    parts = sentences(text)
    if len(parts) < 3:
        return text
    shuffled = parts[:]
    for _ in range(10):  # an order that is actually different
        rng.shuffle(shuffled)
        if shuffled != parts:
            break
    return " ".join(shuffled)


def _starts_sentence(text: str, at: int) -> bool:
    before = text[:at].rstrip()
    return not before or before[-1] in ".!?\"“”'‘’(…:"


def character_names(text: str) -> list[str]:
    """Capitalised words used at least once inside a sentence (not only as its first word)."""
    inside = {m.group(0) for m in _NAME.finditer(text) if not _starts_sentence(text, m.start())}
    return sorted(inside - _NOT_NAMES)


def swap_names(text: str, rng: random.Random) -> str:
    """Every second mention of each character's name changed: who is who stops holding together."""
    names = character_names(text)
    if not names:
        return text
    swaps = {name: rng.choice([n for n in _REPLACEMENT_NAMES if n != name]) for name in names}
    seen: dict[str, int] = {}

    def replace(match: re.Match[str]) -> str:
        word = match.group(0)
        if word not in swaps:
            return word
        seen[word] = seen.get(word, 0) + 1
        return swaps[word] if seen[word] % 2 == 0 else word

    return _NAME.sub(replace, text)


def repeat_opening(text: str, rng: random.Random) -> str:
    """Its first words repeated several times in the middle: padding a reader notices at once."""
    words = text.split()
    if len(words) < 8:
        return text
    opening = " ".join(words[: max(8, len(words) // 5)])
    middle = len(words) // 2
    return " ".join([*words[:middle], opening, opening, opening, *words[middle:]])


def cut_to(fraction: float) -> Callable[[str, random.Random], str]:
    def cut(text: str, rng: random.Random) -> str:
        words = text.split()
        keep = max(1, int(len(words) * fraction))
        return " ".join(words[:keep]) if keep < len(words) else text

    cut.__name__ = f"cut_to_{int(fraction * 100)}"
    return cut


@dataclass(frozen=True)
class Transform:
    """One step down a ladder; `hits` is the rubric criterion it should lower first (or None)."""

    id: str
    description: str
    apply: Callable[[str, random.Random], str]
    hits: str | None = None


# Severity order: a ladder of n rungs uses the first n-1 of these, cumulatively. The last rung of a
# full ladder replaces the (already degraded) text by an answer to a different brief.
TRANSFORMS: tuple[Transform, ...] = (
    Transform("swap_names", "character names changed inconsistently", swap_names, "character_depth"),
    Transform("shuffle", "sentence order shuffled", shuffle_sentences, "coherence"),
    Transform("repeat", "its opening repeated three times in the middle", repeat_opening),
    Transform("cut_half", "cut to its first half", cut_to(0.5)),
    Transform(
        "off_topic", "replaced by an answer to a different brief", lambda text, rng: text, "adaptability"
    ),
)
OFF_TOPIC = "off_topic"
