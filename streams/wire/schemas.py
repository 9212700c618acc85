"""The Avro schemas, loaded once: each record type's current one, and the earlier writer schemas still read.

The files are ``streams/schemas/*.avsc`` (``streams.resources.SCHEMAS``); the codecs (``streams.wire.codec``)
resolve a record by the fingerprint of the schema it was written with.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import fastavro

from streams.resources import SCHEMAS

__all__ = ["EARLIER_SCHEMAS", "PARSED_SCHEMAS", "load_earlier"]


def _load_current() -> dict[str, Any]:
    named: dict[str, Any] = {}
    parsed = {}
    for name in ("document", "request", "partial_result", "search_reply", "stage_status", "serving_version",
                 "version_build", "lexical_count"):
        with open(SCHEMAS / f"{name}.avsc") as f:
            parsed[name] = fastavro.parse_schema(json.load(f), named_schemas=named)
    return parsed


PARSED_SCHEMAS: Mapping[str, Any] = _load_current()
"""Each record type's current schema, parsed by fastavro, by name (``streams/schemas/<name>.avsc``)."""

EARLIER_SCHEMAS: Mapping[str, tuple[str, ...]] = {"document": ("document-1",), "request": ("request-1",)}
"""Earlier writer schemas (``streams/schemas/earlier/<name>.avsc``) a codec still reads, resolved to the
current one: records kept in ``<flow>.ingest``, ``<flow>.encoded`` and a shard's store outlive
an upgrade, and a client of the release before writes requests. document-1 held tags as strings only;
request-1 had no ``lexical_statistics``."""


def load_earlier(name: str) -> Any:
    """An earlier writer schema; one that names ``streamsearch.Document`` (request-1) reads it as the
    current Document, as it was written: its fingerprint is then the one its writers sent. (When the
    Document schema changes, such a file must be kept with the Document it was written with.)"""
    named: dict[str, Any] = {}
    if not name.startswith("document"):
        with open(SCHEMAS / "document.avsc") as f:
            fastavro.parse_schema(json.load(f), named_schemas=named)
    with open(SCHEMAS / "earlier" / f"{name}.avsc") as f:
        return fastavro.parse_schema(json.load(f), named_schemas=named)
