"""Handlers for loop tests that are about the loop, not about what a handler does."""

from __future__ import annotations

from collections.abc import Sequence

from streams.runtime.spec import Inbound, Output

__all__ = ["NoOutputs"]


class NoOutputs:
    """Takes every batch and answers nothing."""

    def process(self, records: Sequence[Inbound]) -> list[Output]:
        return []

    def on_failure(self, record: Inbound, error: Exception) -> list[Output]:
        return []

    def tick(self) -> list[Output]:
        return []
