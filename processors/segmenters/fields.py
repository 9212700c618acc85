"""Named fields of a Document as chunks, so each field can be encoded, indexed and searched
on its own (multi-field search, Jina's JEP 3)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Sequence

from processors.document import Document
from processors.exceptions import ConfigError
from processors.segmenters.base import SegmentResult

__all__ = ["FieldMapperConfig", "FieldMapper", "TEXT_FIELD"]

TEXT_FIELD = "text"
"""The field name that maps the document's own ``text``; any other name maps ``tags[name]``."""


@dataclass(frozen=True, slots=True)
class FieldMapperConfig:
    """Which fields become chunks.

    :param fields: field names, in order; ``text`` is the document text, others are tags.
    """

    fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple(self.fields))
        if not self.fields:
            raise ConfigError("FieldMapper: name at least one field")
        if len(set(self.fields)) != len(self.fields):
            raise ConfigError(f"FieldMapper: fields repeat: {list(self.fields)}")


class FieldMapper:
    """One chunk per non-empty field, carrying ``field_name``; id ``<doc id>/<field>``."""

    def __init__(self, config: FieldMapperConfig) -> None:
        self.config = config

    @property
    def fields(self) -> tuple[str, ...]:
        return self.config.fields

    def warm_up(self) -> None:
        """Nothing to load."""

    def run(self, *, docs: Sequence[Document]) -> SegmentResult:
        """Map each document's fields to chunks; a missing or empty field gives no chunk.

        :param docs: documents with their fields in ``tags`` (or ``text``).
        :returns: copies of the documents with one chunk per field.
        """
        return SegmentResult(docs=tuple(self._map(doc) for doc in docs))

    def _map(self, doc: Document) -> Document:
        chunks = []
        for name in self.config.fields:
            value = doc.text if name == TEXT_FIELD else doc.tags.get(name)
            if value is None or value == "":
                continue
            if not isinstance(value, str):  # a typed tag (a number, a boolean) is embedded as its JSON text
                value = json.dumps(value)
            chunks.append(Document(
                id=f"{doc.id}/{name}", parent_id=doc.id, granularity=doc.granularity + 1, mime_type=doc.mime_type,
                text=value, field_name=name, offset=len(chunks), tags={"field": name},
            ))
        return dataclasses.replace(doc, chunks=chunks)
