"""What the bridge tells beyond searching: the flow's status and why a search got no reply."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from streams.client.client import Client
from streams.wire.topics import FlowTopics


class FlowInspector(Protocol):
    """The flow's status and why a search got no reply: operator reads (consumer groups, lag, stage
    kinds) that an application's client does not make. Whoever starts the bridge passes them in:
    ``streamsearch serve`` and the demo pass ``streams.ops.bridge.StatusInspector``."""

    def status(self) -> dict[str, Any]:
        """What ``GET /status`` shows (``streamsearch status --json``).

        :raises StreamsearchError: or ``KafkaException``, when the broker does not answer (503).
        """
        ...

    def why_no_reply(self, topics: FlowTopics, timeout_s: float) -> str:
        """One line: why a search of ``topics``' version got no reply within ``timeout_s``."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class _ClientOnly:
    """What the client alone can tell, for a bridge created without a ``FlowInspector``."""

    client: Client

    def status(self) -> dict[str, Any]:
        return {"flow": self.client.topics.flow, "version": self.client.version,
                "note": "the flow's name and serving version only: this bridge was created without a FlowInspector "
                        "(`streamsearch serve` passes one)"}

    def why_no_reply(self, topics: FlowTopics, timeout_s: float) -> str:
        return (f"no reply within {timeout_s:g}s from version {topics.version} of flow {topics.flow!r} "
                "(`streamsearch status` shows which of its stages run)")
