"""Incremental detokenization of one answer, with stop strings.

The answer's ids are decoded whole after every chunk (``skip_special_tokens``: eos / im_end leave no text) and
only new text is handed out. Text that could still change or still be the start of a stop string is held back:
a trailing U+FFFD (a byte-level token that ends inside a UTF-8 character) and the last ``len(longest stop) - 1``
characters. When a stop string appears, the text is cut before it and the ids after the token that completed it
are dropped.
"""

from __future__ import annotations

from typing import Sequence

REPLACEMENT = "\ufffd"


class TextStream:
    """``add(new_ids) -> (text, ids, stopped)``; ``finish() -> text`` (whatever was held back)."""

    def __init__(self, tokenizer, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.ids: list[int] = []
        self.sent = 0  # characters handed out

    def _text(self, ids) -> str:
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def add(self, new_ids) -> tuple[str, list[int], bool]:
        """Append a chunk's ids -> (new text to hand out, the ids kept of this chunk, whether a stop string
        ended the answer)."""
        new_ids = [int(i) for i in new_ids]
        base = len(self.ids)
        self.ids += new_ids
        text = self._text(self.ids)
        cut = self._stop_at(text)
        if cut is not None:
            keep = self._completing(base, len(new_ids))
            self.ids = self.ids[:base + keep]
            out = text[self.sent:cut] if cut > self.sent else ""
            self.sent = max(self.sent, cut)
            return out, new_ids[:keep], True
        end = len(text) - self.hold
        while end > self.sent and text[end - 1:end] == REPLACEMENT:
            end -= 1
        out = text[self.sent:end] if end > self.sent else ""
        self.sent += len(out)
        return out, new_ids, False

    def _stop_at(self, text: str) -> int | None:
        start = max(0, self.sent - self.hold)
        found = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
        return min(found) if found else None

    def _completing(self, base: int, n: int) -> int:
        """How many of the chunk's ``n`` ids it takes for a stop string to appear."""
        for k in range(1, n + 1):
            if self._stop_at(self._text(self.ids[:base + k])) is not None:
                return k
        return n

    def finish(self) -> str:
        """The rest of the text (the answer ended without a stop string)."""
        text = self._text(self.ids)
        out = text[self.sent:]
        self.sent = len(text)
        return out
