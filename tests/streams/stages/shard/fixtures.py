"""What tests of the shard stage share."""

from __future__ import annotations

import time


def later_ms(seconds: float = 120.0) -> int:
    """A deadline ``seconds`` from now, in epoch ms: well inside ``max_deadline_s``, computed when the
    record is built (one built at collection would have expired in a long suite)."""
    return int((time.time() + seconds) * 1000)
