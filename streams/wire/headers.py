"""Record header names streamsearch reads and writes, and their codecs."""

from __future__ import annotations

from typing import Mapping


__all__ = [
    "Header",
    "SCHEMA",
    "INGEST_OFFSET",
    "MIN_INGEST_OFFSET",
    "DEADLINE_MS",
    "TIMEOUT_MS",
    "REQUEST_ID",
    "REPLY_TO",
    "KIND",
    "WATERMARK",
    "WATERMARK_KEY",
    "int_header",
    "read_int",
    "query_headers",
]

Header = tuple[str, bytes]
"""One Kafka record header as streamsearch writes it: (name, value)."""

SCHEMA = "ss-schema"
"""The CRC-64-AVRO fingerprint of the record's writer schema (``streams.wire.codec``)."""
INGEST_OFFSET = "ss-ingest-offset"
"""The ingest-topic offset a record derives from: shard p's freshness watermark."""
MIN_INGEST_OFFSET = "ss-min-ingest-offset"
"""A search copy's: the ingest offset its partition's shard must have applied before answering (the request's
``min_offsets`` entry for that partition, read-your-writes), so that the shard can tell a copy will wait
without decoding it. The request's own ``min_offsets`` stay what the shard waits for."""
DEADLINE_MS = "ss-deadline-ms"
"""Query-path records: epoch ms after which nobody waits. On ``<flow>.query`` the client's clock's
(the encode stage rebases it, see ``TIMEOUT_MS``); downstream the flow's."""
TIMEOUT_MS = "ss-timeout-ms"
"""Query records: the client's timeout, relative, so that the encode stage can measure the deadline
on the flow's clock from when the request entered Kafka (a client's clock may be off)."""
REQUEST_ID = "ss-request-id"
CREATED_MS = "ss-created-ms"
"""Query-path records: when the query entered the flow (its query record's timestamp)."""
REPLY_TO = "ss-reply-to"
KIND = "ss-kind"
WATERMARK = b"watermark"
"""KIND of a marker that only advances the watermark (its ingest record was dead-lettered)."""
WATERMARK_KEY = b"\x00streamsearch-watermark"

DEAD_LETTER_STAGE = "ss-dl-stage"
DEAD_LETTER_ERROR_CLASS = "ss-dl-error-class"
DEAD_LETTER_MESSAGE = "ss-dl-message"
DEAD_LETTER_TOPIC = "ss-dl-topic"
DEAD_LETTER_PARTITION = "ss-dl-partition"
DEAD_LETTER_OFFSET = "ss-dl-offset"


def int_header(name: str, value: int) -> tuple[str, bytes]:
    return (name, str(value).encode())


def read_int(headers: Mapping[str, bytes], name: str) -> int | None:
    raw = headers.get(name)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def query_headers(request_id: str, reply_to: str, deadline_ms: int, created_ms: int | None = None, *,
                  timeout_ms: int | None = None) -> tuple[Header, ...]:
    """The headers every query-path record carries: who asked, where to reply and by when.

    :param timeout_ms: a client's relative timeout (``TIMEOUT_MS``), on ``<flow>.query`` only.
    """
    headers = (
        (REQUEST_ID, request_id.encode()),
        (REPLY_TO, reply_to.encode()),
        int_header(DEADLINE_MS, deadline_ms),
    )
    headers += (int_header(TIMEOUT_MS, timeout_ms),) if timeout_ms is not None else ()
    return headers + ((int_header(CREATED_MS, created_ms),) if created_ms is not None else ())
