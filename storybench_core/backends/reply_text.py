"""A reply's bytes as a decoder produces them: where a stop string ends it, and what may be streamed.

Like llama-cpp-python's create_completion, stop strings are looked for only once the UTF-8 tail
is complete, the first one found cuts the text, and streamed text holds back whatever could
still turn out to be the start of a stop string or half a character.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def utf8_incomplete_tail(data: bytes | bytearray) -> int:
    """How many bytes at the end start a UTF-8 character that is not complete yet."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # continuation byte: look further back for the lead byte
            continue
        need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte & 0xF8 == 0xF0 else 1
        return back if need > back else 0
    return 0


@dataclass
class ReplyText:
    """The bytes of one reply so far, searched for its stop strings."""

    stops: list[bytes]
    raw: bytearray = field(default_factory=bytearray)
    checked_bytes: int = 0  # raw is searched for stop strings up to here
    emitted_bytes: int = 0
    text: bytes | None = None  # the final text, once a stop string cut it or the reply ended

    def add(self, piece: bytes) -> bool:
        """Append one token's bytes; True when a stop string ends the reply (the text stops before it)."""
        self.raw += piece
        if self.stops and not utf8_incomplete_tail(self.raw):
            for stop in self.stops:
                start = max(0, self.checked_bytes - len(stop) + 1)
                at = self.raw.find(stop, start)
                if at >= 0:
                    self.text = bytes(self.raw[:at])
                    return True
            self.checked_bytes = len(self.raw)
        return False

    def unsent(self, *, final: bool) -> str:
        """The text not streamed yet that can no longer turn out to be a stop string or half a character."""
        data = self.text if final and self.text is not None else bytes(self.raw)
        end = len(data)
        if not final:
            end -= utf8_incomplete_tail(data)
            held = 0
            for stop in self.stops:
                for k in range(min(len(stop) - 1, end), 0, -1):
                    if data[:end].endswith(stop[:k]):
                        held = max(held, k)
                        break
            end -= held
        if end <= self.emitted_bytes:
            return ""
        piece = data[self.emitted_bytes : end].decode("utf-8", errors="ignore")
        self.emitted_bytes = end
        return piece

    def finish(self) -> str:
        """The reply's final text (everything, unless a stop string cut it)."""
        if self.text is None:
            self.text = bytes(self.raw)
        return self.text.decode("utf-8", errors="ignore")
