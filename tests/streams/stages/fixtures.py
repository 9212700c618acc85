"""What tests of several stages share."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from processors.document import Document
from processors.encoders.base import EncodeResult


class FixedEncoder:
    """An encoder without a model: every text gets the same 4-d vector (for tests of what the stage does
    around encoding, not of the encoding)."""

    dim = output_dim = 4

    def warm_up(self) -> None: ...

    def run(self, *, docs: Sequence[Document], traversal_paths: Sequence[str] | None = None,
            filter_by: Sequence[str] | None = None) -> EncodeResult:
        return EncodeResult(docs=tuple(Document(id=d.id, text=d.text, embedding=np.ones(4, np.float32)) for d in docs))
