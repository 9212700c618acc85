"""What the HTTP bridge tells beyond searching, from the operator's reads: the flow's status (as
``streamsearch status --json``) and why a search got no reply.

The bridge lives with the client, which never imports operator commands (they need the stage kinds
and consumer-group admin an application does not): whoever starts a bridge (``streamsearch serve``,
the demo) passes this to ``create_app(..., inspector=...)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from streams.flow.spec import FlowSpec
from streams.kafka.settings import KafkaSettings
from streams.ops.status import collect_status, collect_status_by_name, why_no_reply
from streams.wire.topics import FlowTopics

__all__ = ["StatusInspector", "STATUS_TIMEOUT_S"]

STATUS_TIMEOUT_S = 10.0
"""How long ``/status`` waits for the broker's answers."""


class StatusInspector:
    """A ``streams.client.http.FlowInspector`` over the operator's status reads of one flow."""

    def __init__(self, settings: KafkaSettings, flow: FlowSpec | str, *, timeout: float = STATUS_TIMEOUT_S) -> None:
        """:param flow: the flow's YAML spec (stages, lag, shards, topics), or its name alone (what
            the stages that report live tell; the status's ``note`` says what is missing)."""
        self._settings = settings
        self._flow = flow
        self._timeout = timeout

    def status(self) -> dict[str, Any]:
        """:raises StreamsearchError: or ``KafkaException``, when the broker does not answer."""
        found = (collect_status(self._settings, self._flow, timeout=self._timeout) if isinstance(self._flow, FlowSpec)
                 else collect_status_by_name(self._settings, self._flow, timeout=self._timeout))
        return dataclasses.asdict(found)

    def why_no_reply(self, topics: FlowTopics, timeout_s: float) -> str:
        return why_no_reply(self._settings, topics, timeout_s)
