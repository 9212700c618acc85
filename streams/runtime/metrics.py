"""Prometheus metrics of a stage process, served on the stage's ``metrics_port``."""

from __future__ import annotations

import logging
import os

from prometheus_client import Counter, Gauge, Histogram, start_http_server

__all__ = [
    "RECORDS_IN", "RECORDS_OUT", "DEAD_LETTERS", "BATCH_SECONDS", "CONSUMER_LAG", "INDEX_VECTORS", "FLAT_SCAN_FALLBACKS",
    "QUERY_SECONDS", "REJECTED_REQUESTS", "EXPIRED_REQUESTS", "REPLIES", "TRANSACTIONS", "PRODUCER_RECREATIONS",
    "TRUNCATED_TEXTS", "UNDELIVERABLE_REPLIES", "LEXICAL_UNITS", "serve_metrics",
]

logger = logging.getLogger(__name__)

RECORDS_IN = Counter("streamsearch_records_in_total", "Records consumed", ["flow", "stage", "topic"])
RECORDS_OUT = Counter("streamsearch_records_out_total", "Records produced", ["flow", "stage"])
DEAD_LETTERS = Counter("streamsearch_dead_letters_total", "Records sent to the dead-letter topic",
                       ["flow", "stage", "error"])
BATCH_SECONDS = Histogram("streamsearch_batch_seconds", "Time to process one consumed batch",
                          ["flow", "stage", "topic"], buckets=(.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
CONSUMER_LAG = Gauge("streamsearch_consumer_lag", "Records behind the fetch-response high watermark",
                     ["flow", "stage", "topic", "partition"])
INDEX_VECTORS = Gauge("streamsearch_index_vectors", "Vectors in a shard's index", ["flow", "partition"])
FLAT_SCAN_FALLBACKS = Gauge("streamsearch_flat_scan_fallbacks", "Searches of a float16 flat index (flat_scan: "
                            "float16, or auto past its size) since the shard opened whose first candidates the error bound could not prove "
                            "exact, answered by a wider range search: often means float16 costs this data more "
                            "than it saves", ["flow", "partition"])
HELD_SEARCHES = Gauge("streamsearch_held_searches", "Searches an index stage process holds until its shard has "
                      "applied the write they name (read-your-writes, after=) or restored; the query path's commits stop "
                      "at the earliest one of each partition", ["flow"])
LEXICAL_UNITS = Gauge("streamsearch_lexical_units", "Texts in the corpus-wide lexical statistics a fan-out holds "
                      "(<flow>.lexical-stats summed over shards): it trails the shards' vectors by the topic's latency",
                      ["flow", "field"])
QUERY_SECONDS = Histogram("streamsearch_query_seconds", "Search latency at the joiner, from the query record's "
                          "timestamp to the reply", ["flow"],
                          buckets=(.005, .01, .02, .03, .05, .075, .1, .2, .5, 1, 2, 5, 10))
TRANSACTIONS = Counter("streamsearch_transactions_total", "Kafka transactions of exactly_once stages",
                       ["flow", "stage", "outcome"])
PRODUCER_RECREATIONS = Counter("streamsearch_producer_recreations_total", "Producers of a stage's path replaced "
                               "in-process after a fatal error (the batch runs again)", ["flow", "stage", "error"])
TRUNCATED_TEXTS = Counter("streamsearch_truncated_texts_total", "Texts longer than the encoder's max_length, "
                          "embedded from their first max_length tokens only", ["flow", "stage"])
REJECTED_REQUESTS = Counter("streamsearch_rejected_requests_total",
                            "Requests refused with an error reply (invalid parameters, limits): answered, not lost",
                            ["flow", "stage", "error"])
EXPIRED_REQUESTS = Counter("streamsearch_expired_requests_total",
                           "Requests a stage took up only after their deadline: answered with RequestExpiredError "
                           "where a reply topic exists, not worked on", ["flow", "stage"])
UNDELIVERABLE_REPLIES = Counter("streamsearch_undeliverable_replies_total",
                                "Replies not sent: their reply topic does not exist (the client is gone) or refused them",
                                ["flow", "stage"])
REPLIES = Counter("streamsearch_replies_total", "Search replies sent by the joiner", ["flow", "partial"])

PORT_ENV = "STREAMSEARCH_METRICS_PORT"


def serve_metrics(configured_port: int | None) -> int | None:
    """Expose /metrics on ``STREAMSEARCH_METRICS_PORT`` or the configured port; None disables.

    :returns: the port serving, or None.
    """
    port = int(os.environ[PORT_ENV]) if os.environ.get(PORT_ENV) else configured_port
    if not port:
        return None
    try:
        start_http_server(port, addr=os.environ.get("STREAMSEARCH_METRICS_ADDR", "0.0.0.0"))
    except OSError as exc:  # e.g. a replica added on a host where the port is taken: serve, unscraped
        logger.warning(f"metrics port {port} unavailable ({exc}); this process serves no /metrics",
                       extra={"port": port})
        return None
    logger.info("metrics served", extra={"port": port})
    return port
