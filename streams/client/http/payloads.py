"""The bridge's JSON: request bodies, reply and receipt JSON, and the errors it answers with."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from typing import Annotated, Any, Literal

from fastapi import HTTPException, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from processors.document import Document
from processors.query.limits import REQUEST_LIMITS
from processors.query.parameters import FUSIONS, RETRIEVALS
from streams.client.receipts import IndexReceipt
from streams.wire.records import SearchReply

logger = logging.getLogger(__package__)  # the bridge's one logger, streams.client.http

# -- request bodies ----------------------------------------------------------------------------


class DocIn(BaseModel):
    """A document to index; ``id`` is the Kafka key, so resending an id replaces it."""

    id: str = Field(min_length=1)
    text: str
    tags: dict[str, str | bool | int | float] = Field(default_factory=dict, description="Typed: a number compares as a number.")


Offset = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
"""What a Kafka offset field carries (Avro long); the flow refuses implausible ones (HTTP 400)."""


class SearchIn(BaseModel):
    """A search; unset options fall back to the flow's defaults. The flow checks the
    per-request limits (README, "Per-request limits") and answers 400 naming the one exceeded."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["texts"]}, {"required": ["images"]}]})
    """Texts or images, exactly one of them (``_texts_or_images``), said in the OpenAPI schema too: a
    client generated from it, or a fuzzer drawing valid bodies, then sends searches that can be answered."""

    texts: str | list[str] | None = Field(default=None, min_length=1, description="What to search for; or give images.")
    images: list[Annotated[str, Field(min_length=1)]] | None = Field(
        default=None, min_length=1, description="Query images, base64 (PNG, JPEG, ...), instead of texts: for a flow "
                                                "whose encoder embeds images; the reply's `query` is `image <n>`.")
    top_k: int | None = Field(default=None, ge=1, description="1..max_top_k (GET /limits); over it: 422 naming the limit",
                              json_schema_extra={"maximum": REQUEST_LIMITS.max_top_k})
    filter_by: list[str] | None = None
    query_language: list[dict[str, Any]] | None = None
    index_type: str | None = None
    retrieval: Literal[RETRIEVALS] | None = Field(  # type: ignore[valid-type]
        default=None, description="dense (the default), lexical (BM25) or hybrid: the last two need a flow whose "
                                  "index keeps the lexical arm (GET /status: `lexical`), else 400 saying so")
    fusion: Literal[FUSIONS] | None = Field(default=None, description="How hybrid fuses the arms' lists.")  # type: ignore[valid-type]
    rrf_k: int | None = Field(default=None, ge=1, le=REQUEST_LIMITS.max_rrf_k, description="The constant of rrf.")
    candidates: int | None = Field(default=None, ge=1, le=REQUEST_LIMITS.max_candidates,
                                   description="Documents each arm contributes to a hybrid fusion.")
    dense_weight: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False,
                                       description="The dense arm's weight in linear fusion.")
    filter: dict[str, Any] | None = Field(default=None, description=(
        'Conditions on the documents\' tags, e.g. {"year": {"$gte": 2015}, "lang": "en"}: only documents it '
        'accepts are searched (README, "Filtered search"); fields must be declared filterable (GET /status: '
        '`filterable`), else 400 naming them.'))
    deadline_s: float | None = Field(default=None, gt=0, le=REQUEST_LIMITS.max_deadline_s, allow_inf_nan=False)
    after: dict[int, Offset] | None = Field(default=None, description="An index receipt's offsets: read your writes.")

    @model_validator(mode="after")
    def _texts_or_images(self) -> SearchIn:
        if (self.texts is None) == (self.images is None):
            raise ValueError("give texts or images, one of them")
        return self

    def parameters(self) -> dict[str, Any] | None:
        """What the client sends as ``parameters``: the fields of :data:`PASSED_AS_PARAMETERS` that are set."""
        chosen = {key: getattr(self, key) for key in PASSED_AS_PARAMETERS if getattr(self, key) is not None}
        return chosen or None


PASSED_AS_PARAMETERS = ("query_language", "rrf_k", "candidates", "dense_weight")
"""``SearchIn`` fields that travel in the request's ``parameters`` as they are (the client has no argument of their own)."""


# -- replies -----------------------------------------------------------------------------------


def _match_json(match: Document) -> dict[str, Any]:
    score = match.scores.get("score")
    chunk = match.chunks[0] if match.chunks else None
    return {
        "id": match.id,
        "text": match.text,
        "tags": match.tags,
        "score": {"value": score.value, "op_name": score.op_name, "direction": score.direction.value}
        if score else None,
        "chunk": {"text": chunk.text, "location": chunk.location, "field_name": chunk.field_name} if chunk else None,
    }


REPLY_INTERNAL = frozenset({"request_id", "docs"})
"""SearchReply fields the bridge does not pass on as they are: ``docs`` become ``results``."""


def _reply_json(texts: list[str], reply: SearchReply, latency_ms: float) -> dict[str, Any]:
    """Every reply field (a new one reaches HTTP with no edit here), the matches per query, and the latency."""
    fields = {f.name: getattr(reply, f.name) for f in dataclasses.fields(reply) if f.name not in REPLY_INTERNAL}
    return {
        "results": [{"query": text, "matches": [_match_json(m) for m in doc.matches]}
                    for text, doc in zip(texts, reply.docs)],
        **fields,
        "latency_ms": round(latency_ms, 1),
    }


def _receipt_json(receipt: IndexReceipt) -> dict[str, Any]:
    return {"count": receipt.count, "offsets": receipt.offsets}


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as null: JSON has no such numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


class _AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped and non-finite numbers as null, so that a lone
    surrogate or a NaN a request carried (and a 422 echoes) still encodes: an answer, never a 500."""

    def render(self, content: Any) -> bytes:
        return json.dumps(_finite(content), ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _refused(exc: Exception, where: str = "") -> HTTPException:
    """422 with the validator's message (ASCII only), prefixed with the item it names in a list."""
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{where}{exc}")


def _unavailable(exc: BaseException) -> HTTPException:
    logger.warning("broker unavailable", extra={"error": f"{type(exc).__name__}: {exc}"})
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"broker unavailable: {type(exc).__name__}: {exc}")
