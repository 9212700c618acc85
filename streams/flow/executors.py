"""The executors a flow may name in ``uses``, by family, and how their ``with`` is checked."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from processors.encoders.cross_modal import CrossModalEncoder, CrossModalEncoderConfig
from processors.encoders.image import ImageEncoder, ImageEncoderConfig
from processors.encoders.transformer import TransformerEncoder, TransformerEncoderConfig
from processors.index.config import CompoundIndexerConfig
from processors.rankers.chunk2doc import Chunk2DocRanker, Chunk2DocRankerConfig
from processors.segmenters.fields import FieldMapper, FieldMapperConfig
from processors.segmenters.image import ImagePatcher, ImagePatcherConfig
from processors.segmenters.sentence import Sentencizer, SentencizerConfig
from streams.exceptions import FlowConfigError

__all__ = ["DEFAULT_RANKER", "ENCODERS", "IMAGE", "INDEXERS", "RANKERS", "SEGMENTERS", "TEXT", "Executor", "build_config"]


TEXT, IMAGE = "text", "image"
"""What a query may carry for an encoder to embed it (``Executor.embeds``; ``/status`` shows them)."""


@dataclass(frozen=True, slots=True)
class Executor:
    """An executor name bound to its config class and constructor."""

    config_type: type
    build: Callable[[Any], Any]
    extra: str | None = None
    """The optional dependencies (``pip install 'streamsearch[EXTRA]'``) a process running it needs;
    None when the core install runs it. A flow is read and checked without any of them."""
    embeds: tuple[str, ...] = (TEXT,)
    """For an encoder: what a query may carry for it to embed (``TEXT``, ``IMAGE``, or both)."""


SEGMENTERS: Mapping[str, Executor] = {
    "Sentencizer": Executor(SentencizerConfig, Sentencizer),
    "FieldMapper": Executor(FieldMapperConfig, FieldMapper),
    "ImagePatcher": Executor(ImagePatcherConfig, ImagePatcher, extra="image"),
}
ENCODERS: Mapping[str, Executor] = {
    "TransformerEncoder": Executor(TransformerEncoderConfig, TransformerEncoder, extra="encode"),
    "ImageEncoder": Executor(ImageEncoderConfig, ImageEncoder, extra="image", embeds=(IMAGE,)),
    "CrossModalEncoder": Executor(CrossModalEncoderConfig, CrossModalEncoder, extra="image", embeds=(TEXT, IMAGE)),
}
# The index stage builds one CompoundIndexer per partition itself: it needs path and codec.
INDEXERS: Mapping[str, Executor] = {
    "CompoundIndexer": Executor(CompoundIndexerConfig, lambda config: config, extra="index"),
}
RANKERS: Mapping[str, Executor] = {"Chunk2DocRanker": Executor(Chunk2DocRankerConfig, Chunk2DocRanker)}
"""The executor families; each stage kind (``streams.stages.kinds``) names the family its ``uses`` picks from."""
DEFAULT_RANKER = "Chunk2DocRanker"


def build_config(config_type: type, params: Mapping[str, Any], where: str) -> Any:
    """Build a frozen config from YAML values, checking names and simple types.

    :raises FlowConfigError: naming the unknown key or the value of the wrong type.
    """
    hints = typing.get_type_hints(config_type)
    names = [f.name for f in dataclasses.fields(config_type)]
    for key, value in params.items():
        if key not in hints:
            raise FlowConfigError(f"{where}: unknown parameter {key!r}; known: {', '.join(names)}")
        problem = _type_problem(value, hints[key])
        if problem:
            raise FlowConfigError(f"{where}: parameter {key!r} {problem}")
    try:
        return config_type(**params)
    except (TypeError, ValueError) as exc:
        raise FlowConfigError(f"{where}: {exc}") from exc


def _type_problem(value: Any, hint: Any) -> str | None:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        problems = [_type_problem(value, arg) for arg in args]
        return None if any(p is None for p in problems) else problems[0]
    if hint is type(None):
        return None if value is None else f"must be null, got {value!r}"
    if origin is Literal:
        return None if value in args else f"must be one of {', '.join(map(str, args))}, got {value!r}"
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return f"must be a list, got {value!r}"
        return next((p for item in value if (p := _type_problem(item, args[0]))), None)
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(hint, type):
        ok = isinstance(value, hint)
    else:
        ok = True
    return None if ok else f"must be {getattr(hint, '__name__', hint)}, got {value!r}"
