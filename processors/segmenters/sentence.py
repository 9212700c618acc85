"""Sentence-level chunks, so a search can match one sentence of a long text."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Sequence

from processors.document import Document
from processors.exceptions import ConfigError
from processors.segmenters.base import SegmentResult

__all__ = ["SentencizerConfig", "Sentencizer"]

DEFAULT_PUNCTUATION = "!.?։؟۔܀܁܂‼‽⁇⁈⁉⸮﹖﹗！．？｡。"
UNSPACED_PUNCTUATION = "。！？｡"
"""Chinese and Japanese full stops, which no space follows."""
_CLOSERS = "」』）〕】〉》〗〙〛〞〟\"'’”"
"""Closing quotes and brackets that stay with the sentence an unspaced full stop ends."""


@dataclass(frozen=True, slots=True)
class SentencizerConfig:
    """How to cut sentences.

    :param min_sent_len: sentences shorter than this (characters) are dropped; a window of a
        long sentence never is, nor are the sentences of a text that has no longer one.
    :param max_sent_len: a longer sentence becomes several overlapping windows of at most this
        many characters, cut between words (inside a word only when one word is longer);
        nothing of it is dropped.
    :param punctuation: characters that end a sentence when followed by space or the end.
        Blank lines always end one: wrapped lines (docstrings, emails) are not split.
    :param unspaced_punctuation: characters that end a sentence even when no space follows
        (Chinese and Japanese write none); empty to switch off.
    :param window_overlap: characters two consecutive windows of a long sentence share, so a
        phrase cut by one window is whole in the next; None means a quarter of ``max_sent_len``.
    """

    min_sent_len: int = 1
    max_sent_len: int = 512
    punctuation: str = DEFAULT_PUNCTUATION
    unspaced_punctuation: str = UNSPACED_PUNCTUATION
    window_overlap: int | None = None

    def __post_init__(self) -> None:
        if self.min_sent_len < 0 or self.max_sent_len < 1 or self.min_sent_len > self.max_sent_len:
            raise ConfigError(
                f"Sentencizer: need 0 <= min_sent_len <= max_sent_len and max_sent_len >= 1, "
                f"got {self.min_sent_len} and {self.max_sent_len}"
            )
        if not self.punctuation:
            raise ConfigError("Sentencizer: punctuation must name at least one character")
        if self.window_overlap is None:
            object.__setattr__(self, "window_overlap", self.max_sent_len // 4)
        elif not 0 <= self.window_overlap < self.max_sent_len:
            raise ConfigError(f"Sentencizer: need 0 <= window_overlap < max_sent_len ({self.max_sent_len}), "
                              f"got {self.window_overlap}")


@dataclass(frozen=True, slots=True)
class _Token:
    """A word (or a piece of a word longer than a window) of a sentence, by position in the text."""

    start: int
    end: int
    spaced: bool
    """Whitespace precedes it (False for the second and later pieces of one word)."""


class Sentencizer:
    """Splits each document's text into sentence chunks with offset, location and parent_id."""

    def __init__(self, config: SentencizerConfig | None = None) -> None:
        self.config = config or SentencizerConfig()
        ends = [rf"[{re.escape(self.config.punctuation)}]+(?=\s|$)"]
        if self.config.unspaced_punctuation:
            ends.append(rf"[{re.escape(self.config.unspaced_punctuation)}]+[{re.escape(_CLOSERS)}]*")
        # A sentence runs up to end punctuation followed by whitespace/end, an unspaced full stop,
        # or a blank line.
        self._pattern = re.compile(rf"\S.*?(?:{'|'.join(ends)}|(?=\n\s*\n)|$)", re.DOTALL)

    @property
    def fields(self) -> tuple[str, ...]:
        return ()  # sentences of the text: no named fields

    def warm_up(self) -> None:
        """Nothing to load."""

    def run(self, *, docs: Sequence[Document]) -> SegmentResult:
        """Give each document one chunk per sentence of its text, and a long sentence one chunk
        per window.

        Chunk ids are ``<doc id>/<n>``: deterministic, so re-sending a document replaces
        its chunks instead of adding to them. A chunk's ``location`` is its span of the text.

        :param docs: documents; those without text get no chunks.
        :returns: copies of the documents with their chunks.
        """
        return SegmentResult(docs=tuple(self._segment(doc) for doc in docs))

    def _segment(self, doc: Document) -> Document:
        """The sentences of at least ``min_sent_len`` characters; when none is that long (a text
        such as "Toast."), every sentence: a short text is indexed whole, never dropped."""
        segmented = self._sentences(doc, self.config.min_sent_len)
        return segmented if segmented.chunks else self._sentences(doc, 0)

    def _sentences(self, doc: Document, min_sent_len: int) -> Document:
        chunks: list[Document] = []
        text = doc.text or ""
        for match in self._pattern.finditer(text):
            windows = self._windows(text, match.start(), match.end())
            for start, end in windows:
                sentence = " ".join(text[start:end].split())
                if len(windows) == 1 and len(sentence) < min_sent_len:
                    continue
                chunks.append(
                    Document(
                        id=f"{doc.id}/{len(chunks)}",
                        parent_id=doc.id,
                        granularity=doc.granularity + 1,
                        mime_type=doc.mime_type,
                        text=sentence,
                        field_name=doc.field_name,
                        modality=doc.modality,
                        offset=len(chunks),
                        location=[start, end],
                        weight=len(sentence) / max(len(text), 1),
                    )
                )
        return dataclasses.replace(doc, chunks=chunks)

    def _windows(self, text: str, start: int, end: int) -> list[tuple[int, int]]:
        """The sentence ``text[start:end]`` as spans of at most ``max_sent_len`` characters once
        whitespace is collapsed: itself when it fits, else overlapping windows of whole words."""
        limit = self.config.max_sent_len
        if len(" ".join(text[start:end].split())) <= limit:
            return [(start, end)]
        tokens = self._tokens(text, start, end)
        overlap = self.config.window_overlap or 0
        windows, first = [], 0
        while True:
            last, size = first, _length(tokens[first])
            while last + 1 < len(tokens) and size + _width(tokens[last + 1]) <= limit:
                last += 1
                size += _width(tokens[last])
            windows.append((tokens[first].start, tokens[last].end))
            if last + 1 == len(tokens):
                return windows
            # The next window starts as far back as the overlap allows, but always moves on.
            following, shared = last + 1, 0
            while following - 1 > first:
                grown = _length(tokens[following - 1]) + (shared + tokens[following].spaced if shared else 0)
                if grown > overlap:
                    break
                following, shared = following - 1, grown
            first = following

    def _tokens(self, text: str, start: int, end: int) -> list[_Token]:
        """The words of a sentence; a word longer than a window (a URL, a run of Chinese) in pieces."""
        limit, overlap = self.config.max_sent_len, self.config.window_overlap or 0
        piece = max(1, min(overlap, limit - overlap)) if overlap else limit
        tokens = []
        for word in re.finditer(r"\S+", text[start:end]):
            word_start, word_end = start + word.start(), start + word.end()
            if word_end - word_start <= limit:
                tokens.append(_Token(word_start, word_end, spaced=True))
                continue
            for at in range(word_start, word_end, piece):
                tokens.append(_Token(at, min(at + piece, word_end), spaced=at == word_start))
        return tokens


def _length(token: _Token) -> int:
    return token.end - token.start


def _width(token: _Token) -> int:
    """Characters a token adds to a window after another token: its own, and a space if it had one."""
    return token.end - token.start + token.spaced
