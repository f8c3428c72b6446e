"""Text that arrives in pieces, cut into sentences as soon as each is complete.

A sentence is complete at ``.``, ``!``, ``?`` or ``…`` (with any closing quotes or brackets after it)
followed by whitespace, or at a line break: the whitespace is needed because the next piece may
continue it ("3." + "14", "e.g" + "."). :meth:`SentenceBuffer.flush` hands over the rest when the client
says the text is complete. Text that runs past ``max_chars`` without an end is cut at its last
whitespace (or at ``max_chars``), so nothing grows without bound. Abbreviations ("Dr. Smith") end a
sentence: speaking them as two is harmless.
"""

from __future__ import annotations

import re

_END = re.compile(r"""([.!?…]+["'”’)\]]*\s+|\n\s*)""")


class SentenceBuffer:
    """Feed pieces of text; get the sentences completed by each piece."""

    def __init__(self, max_chars: int):
        self.max_chars = max_chars
        self._text = ""

    @property
    def pending(self) -> str:
        return self._text

    def feed(self, piece: str) -> list[str]:
        """Add ``piece``; return the sentences it completed (stripped, non-empty), oldest first."""
        self._text += piece
        sentences = []
        while True:
            match = _END.search(self._text)
            if match is None:
                break
            sentence, self._text = self._text[: match.end()].strip(), self._text[match.end():]
            if sentence:
                sentences.append(sentence)
        while len(self._text) > self.max_chars:
            cut = self._text.rfind(" ", 0, self.max_chars)
            cut = cut if cut > 0 else self.max_chars
            sentence, self._text = self._text[:cut].strip(), self._text[cut:].lstrip()
            if sentence:
                sentences.append(sentence)
        return sentences

    def flush(self) -> str | None:
        """The text not yet handed over (None when there is none), and empty the buffer."""
        rest, self._text = self._text.strip(), ""
        return rest or None

    def clear(self) -> None:
        self._text = ""
