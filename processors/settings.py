"""What an executor's settings (a frozen dataclass) declare about themselves beyond their values."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["added_later", "settings_repr"]

_ADDED_LATER = "added_later"


def added_later(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING) -> Any:
    """A setting added after index versions were fingerprinted by their settings' ``repr``
    (``streams.ops.reindex.executors_fingerprint``): at its default it is left out of
    :func:`settings_repr`, so versions built before it keep their fingerprint.

    :param factory: makes the default instead, for a mutable one (a mapping)."""
    return dataclasses.field(default=default, default_factory=factory, metadata={_ADDED_LATER: True})


def _default(spec: dataclasses.Field) -> Any:
    return spec.default_factory() if spec.default is dataclasses.MISSING else spec.default  # type: ignore[misc]


def settings_repr(settings: object) -> str:
    """The dataclass ``repr`` of ``settings`` without the :func:`added_later` fields at their default;
    for anything else, its ``repr``."""
    if not dataclasses.is_dataclass(settings) or isinstance(settings, type):
        return repr(settings)
    shown = [f for f in dataclasses.fields(settings) if f.repr and not (
        f.metadata.get(_ADDED_LATER) and getattr(settings, f.name) == _default(f))]
    values = ", ".join(f"{f.name}={getattr(settings, f.name)!r}" for f in shown)
    return f"{type(settings).__qualname__}({values})"
