"""What a search sends and what its reply means: the query documents, the request's parameters and
deadline as the flow will check them (refused here first, with the limit named), and the errors a
reply or a refused delivery stands for."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np
from confluent_kafka import KafkaError, Message

from processors.document import Document, validate_embedding, validate_text
from processors.exceptions import InvalidDocumentError, InvalidParameterError
from processors.images import sniff_mime_type
from processors.query.filter import parse_filter
from processors.query.limits import REQUEST_LIMITS
from processors.query.parameters import FUSIONS, RETRIEVALS
from streams.exceptions import DeliveryError, PayloadTooLargeError, RequestExpiredError, SearchError, UnknownFlowError
from streams.kafka.producer import UNKNOWN_TOPIC_ERRORS
from streams.wire.records import SearchReply

__all__ = ["TOO_LARGE", "VectorsLike", "checked_timeout_s", "is_expired_reply", "query_documents", "raise_for_errors",
           "search_parameters", "undelivered"]

TOO_LARGE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE, KafkaError.RECORD_LIST_TOO_LARGE})
"""Delivery errors that mean the broker refused a record as too large."""


VectorsLike = Union[np.ndarray, Sequence[Sequence[float]]]
"""Query embeddings: an ``(n, d)`` array, or n rows of d numbers."""


def query_documents(texts: str | Sequence[str] | None, vectors: VectorsLike | None,
                    images: Sequence[bytes | str | Path] | None = None) -> list[Document]:
    """The query documents of a search: ``q0``, ``q1``, ... with a text, an embedding, or both; or an image
    each (its bytes, or a path to read them from), for a flow whose encoder embeds images.

    Both, one text per row of ``vectors``, make each query document carry its text and its vector: what a
    hybrid search needs in a flow without a model (the vector for the dense arm, the text for the lexical).

    :raises ValueError: if neither is given, if both are given with different counts, if ``texts`` is
        empty or holds a blank text or one ``validate_text`` refuses (NUL, a lone surrogate), or if
        ``vectors`` is not a non-empty 2-D array of finite numbers, or ``images`` come with either, hold an
        empty image or name a file that cannot be read.
    """
    if images is not None:
        if texts is not None or vectors is not None:
            raise ValueError("search by images takes neither texts nor vectors")
        return [Document(id=f"q{i}", blob=blob, mime_type=sniff_mime_type(blob) or "application/octet-stream",
                         modality="image") for i, blob in enumerate(_query_images(images))]
    if texts is None and vectors is None:
        raise ValueError("search needs texts, vectors or images")
    queries = _query_texts(texts) if texts is not None else None
    matrix = _query_matrix(vectors) if vectors is not None else None
    if queries is not None and matrix is not None and len(queries) != len(matrix):
        raise ValueError(f"search with both texts and vectors needs one text per vector, got {len(queries)} texts "
                         f"and {len(matrix)} vectors")
    count = len(queries) if queries is not None else len(matrix)  # type: ignore[arg-type]
    return [Document(id=f"q{i}", text=None if queries is None else queries[i],
                     embedding=None if matrix is None else matrix[i]) for i in range(count)]


def _query_images(images: Sequence[bytes | str | Path]) -> list[bytes]:
    if isinstance(images, (bytes, str, Path)):
        images = [images]
    if not images:
        raise ValueError("search needs at least one query image")
    blobs = []
    for i, image in enumerate(images):
        if isinstance(image, (str, Path)):
            try:
                image = Path(image).read_bytes()
            except OSError as exc:
                raise ValueError(f"query image {i}: {exc.strerror or exc}: {image}") from None
        if not isinstance(image, bytes) or not image:
            raise ValueError(f"query image {i} is empty or not bytes")
        blobs.append(image)
    return blobs


def _query_texts(texts: str | Sequence[str]) -> list[str]:
    queries = [texts] if isinstance(texts, str) else list(texts)
    if not queries:
        raise ValueError("search needs at least one query text")
    for i, text in enumerate(queries):
        try:
            validate_text(text, name=f"query text {i}")
        except InvalidDocumentError as exc:  # the encode stage would refuse it: say so before sending
            raise ValueError(str(exc)) from None
        if not text.strip():
            raise ValueError(f"query text {i} is empty or only whitespace")
    return queries


def _query_matrix(vectors: VectorsLike) -> np.ndarray:
    try:
        given = np.asarray(vectors)
    except ValueError as exc:  # ragged rows
        raise ValueError(f"vectors must be a 2-D array (n queries, d dimensions): {exc}") from exc
    if given.dtype.kind not in "fiu":
        raise ValueError(f"vectors must hold numbers, got dtype {given.dtype}")
    if given.ndim != 2:
        hint = "; for one vector v pass [v] or v[None, :]" if given.ndim == 1 else ""
        raise ValueError(f"vectors must be 2-D (n queries, d dimensions), got shape {given.shape}{hint}")
    if given.shape[0] == 0 or given.shape[1] == 0:
        raise ValueError(f"vectors must be non-empty, got shape {given.shape}")
    with np.errstate(over="ignore"):
        matrix = np.ascontiguousarray(given, dtype="<f4")
    try:
        validate_embedding(matrix, "vectors")  # what every stage checks: finite in float32, bounded
    except InvalidDocumentError as exc:
        raise ValueError(f"vectors must be finite numbers within float32 range: {exc}") from None
    return matrix


def raise_for_errors(reply: SearchReply) -> None:
    """Raise what a reply with errors and no results means; return for any other reply.

    :raises RequestExpiredError: if a stage took the request up only after its deadline.
    :raises SearchError: for any other such reply (refused, over a limit, too large).
    """
    if not reply.errors or reply.docs:
        return
    message = "; ".join(reply.errors)
    if is_expired_reply(reply):
        raise RequestExpiredError(message)
    raise SearchError(message, reply)


def is_expired_reply(reply: SearchReply) -> bool:
    """Whether a stage answered the request with ``RequestExpiredError``: it came too late to work on."""
    return any(error.startswith(f"{RequestExpiredError.__name__}:") for error in reply.errors)


def search_parameters(parameters: Mapping[str, Any] | None, *, top_k: int | None, filter_by: Sequence[str] | None,
                      index_type: str | None, retrieval: str | None = None, fusion: str | None = None,
                      filter: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A search request's parameters: ``parameters`` with the keyword arguments that are set.

    :raises ValueError: if ``top_k`` is outside ``1..max_top_k``, or ``retrieval`` / ``fusion`` is not one
        of ``RETRIEVALS`` / ``FUSIONS`` (the flow would refuse them; the message names the allowed values),
        or ``filter`` is malformed or over a limit (its fields and their types are the flow's to check).
    """
    params = dict(parameters or {})
    if filter is not None:
        try:
            parse_filter(filter, max_conditions=REQUEST_LIMITS.max_conditions, max_in_items=REQUEST_LIMITS.max_in_items,
                         max_depth=REQUEST_LIMITS.max_filter_depth)
        except InvalidParameterError as exc:
            raise ValueError(str(exc)) from None
    for key, value in (("top_k", top_k), ("filter_by", list(filter_by) if filter_by else None),
                       ("index_type", index_type), ("retrieval", retrieval), ("fusion", fusion),
                       ("filter", filter)):
        if value is not None:
            params[key] = value
    if top_k is not None:
        try:
            REQUEST_LIMITS.check_count("top_k", top_k)
        except InvalidParameterError as exc:
            raise ValueError(str(exc)) from None
    for key, value, allowed in (("retrieval", retrieval, RETRIEVALS), ("fusion", fusion, FUSIONS)):
        if value is not None and value not in allowed:
            raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
    return params


def checked_timeout_s(wait_s: float) -> float:
    """``wait_s``, if within ``(0, max_deadline_s]`` (the encode stage would refuse it otherwise).

    :raises ValueError: naming the limit.
    """
    if not 0 < wait_s <= REQUEST_LIMITS.max_deadline_s:
        raise ValueError(f"timeout_s must be in (0, {REQUEST_LIMITS.max_deadline_s:g}] seconds "
                         f"(max_deadline_s), got {wait_s!r}")
    return wait_s


def undelivered(err: KafkaError, msg: Message, size: int, flow: str) -> Exception:
    """Why a search request the producer gave up on will get no reply, as the error its future raises."""
    if err.code() in TOO_LARGE:
        return PayloadTooLargeError(f"the broker refused the search request ({size} bytes): {err.str()}")
    if err.code() in UNKNOWN_TOPIC_ERRORS:
        return UnknownFlowError(f"no topic {msg.topic()}: flow {flow!r} was never run on "
                                "this cluster (start it with streamsearch run FLOW.yml)")
    return DeliveryError(f"search request not delivered: {err.str()}")
