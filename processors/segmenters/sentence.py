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


@dataclass(frozen=True, slots=True)
class SentencizerConfig:
    """How to cut sentences.

    :param min_sent_len: sentences shorter than this (characters) are dropped.
    :param max_sent_len: longer sentences are cut to this length.
    :param punctuation: characters that end a sentence when followed by space or the end.
        Blank lines always end one: wrapped lines (docstrings, emails) are not split.
    """

    min_sent_len: int = 1
    max_sent_len: int = 512
    punctuation: str = DEFAULT_PUNCTUATION

    def __post_init__(self) -> None:
        if self.min_sent_len < 0 or self.max_sent_len < 1 or self.min_sent_len > self.max_sent_len:
            raise ConfigError(
                f"Sentencizer: need 0 <= min_sent_len <= max_sent_len and max_sent_len >= 1, "
                f"got {self.min_sent_len} and {self.max_sent_len}"
            )
        if not self.punctuation:
            raise ConfigError("Sentencizer: punctuation must name at least one character")


class Sentencizer:
    """Splits each document's text into sentence chunks with offset, location and parent_id."""

    def __init__(self, config: SentencizerConfig | None = None) -> None:
        self.config = config or SentencizerConfig()
        punct = re.escape(self.config.punctuation)
        # A sentence runs up to end punctuation followed by whitespace/end, or up to a blank line.
        self._pattern = re.compile(rf"\S.*?(?:[{punct}]+(?=\s|$)|(?=\n\s*\n)|$)", re.DOTALL)

    def warm_up(self) -> None:
        """Nothing to load."""

    def run(self, *, docs: Sequence[Document]) -> SegmentResult:
        """Give each document one chunk per sentence of its text.

        Chunk ids are ``<doc id>/<n>``: deterministic, so re-sending a document replaces
        its chunks instead of adding to them.

        :param docs: documents; those without text get no chunks.
        :returns: copies of the documents with their chunks.
        """
        return SegmentResult(docs=tuple(self._segment(doc) for doc in docs))

    def _segment(self, doc: Document) -> Document:
        chunks: list[Document] = []
        text = doc.text or ""
        for match in self._pattern.finditer(text):
            sentence = " ".join(match.group(0).split())[: self.config.max_sent_len]
            if len(sentence) < self.config.min_sent_len:
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
                    location=[match.start(), match.end()],
                    weight=len(sentence) / max(len(text), 1),
                )
            )
        return dataclasses.replace(doc, chunks=chunks)
