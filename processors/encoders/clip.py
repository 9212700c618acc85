"""A user's own CLIP-style model: images and texts embedded by two towers trained into one space.

No such model ships its weights in a package that installs here, so nothing downloads one; a user who has
one points ``clip_model_path`` at a local directory that transformers can load with ``CLIPModel`` and
``CLIPProcessor`` (what ``save_pretrained`` of both writes: ``config.json`` with ``projection_dim``, the
weights, the tokenizer's files and ``preprocessor_config.json``). Images are decoded by our own guarded
decoder (size limits, EXIF orientation) before the processor sees them.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from processors.encoders.base import torch_device
from processors.exceptions import ModelNotFoundError
from processors.images import ImageLimits, decode_image

__all__ = ["LocalCLIP"]

logger = logging.getLogger(__name__)


class LocalCLIP:
    """Both towers of a local CLIP model; vectors L2-normalised, so inner product is cosine similarity.

    :param path: the model directory.
    :param limits: what an image may declare before it is decoded.
    :param batch_size: images or texts per forward pass.
    :param device: ``auto`` takes CUDA when present.
    """

    def __init__(self, path: str, limits: ImageLimits, *, batch_size: int = 16, device: str = "auto") -> None:
        self.path = Path(path)
        self.limits = limits
        self.batch_size = batch_size
        self.device_setting = device
        self._loaded: tuple[object, object, object] | None = None
        self._lock = threading.Lock()
        self._dim: int | None = None

    @property
    def output_dim(self) -> int:
        """``projection_dim`` of the model's config.json, read without loading the weights.

        :raises ModelNotFoundError: if the directory holds no such config.
        """
        if self._dim is None:
            config = self.path / "config.json"
            try:
                self._dim = int(json.loads(config.read_text())["projection_dim"])
            except (OSError, KeyError, ValueError, TypeError) as exc:
                raise ModelNotFoundError(f"CLIP: {config} names no projection_dim ({exc})") from None
        return self._dim

    def warm_up(self) -> None:
        self._warm()

    def _warm(self) -> tuple[object, object, object]:
        with self._lock:
            if self._loaded is None:
                self._loaded = self._load()
            return self._loaded

    def _load(self) -> tuple[object, object, object]:
        self.output_dim  # noqa: B018 -- a directory without the config fails with that message first
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import CLIPModel, CLIPProcessor

        device = torch_device(self.device_setting)
        try:
            model = CLIPModel.from_pretrained(str(self.path), local_files_only=True).to(device).eval()
            processor = CLIPProcessor.from_pretrained(str(self.path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(f"CLIP: {self.path} is not a CLIPModel and CLIPProcessor directory: {exc}") from None
        logger.info("clip model loaded", extra={"model": str(self.path), "device": str(device), "dim": self.output_dim})
        return model, processor, device

    def encode_images(self, blobs: Sequence[bytes | None], names: Sequence[str] | None = None) -> np.ndarray:
        """(n, ``output_dim``) float32 unit vectors.

        :raises InvalidDocumentError: for an image that does not decode within the limits, named by ``names``.
        """
        images = [decode_image(blob, names[i] if names is not None else f"image {i}", self.limits)
                  for i, blob in enumerate(blobs)]
        model, processor, device = self._warm()
        return self._batches(images, lambda batch: model.get_image_features(  # type: ignore[attr-defined]
            **processor(images=batch, return_tensors="pt").to(device)))  # type: ignore[operator]

    @property
    def text_max_length(self) -> int:
        """Tokens of a text the text tower reads (its ``max_position_embeddings``: 77 for OpenAI's); loads the model."""
        return int(self._warm()[0].config.text_config.max_position_embeddings)  # type: ignore[attr-defined]

    def encode_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """(n, ``output_dim``) float32 unit vectors, and each text's token count (the text tower reads at
        most :attr:`text_max_length` of them)."""
        model, processor, device = self._warm()
        tokenizer = processor.tokenizer  # type: ignore[attr-defined]
        tokens = [len(ids) for ids in tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]]
        longest = self.text_max_length  # the tokenizer's own limit may be unset (10**30): the model's is not
        vectors = self._batches(list(texts), lambda batch: model.get_text_features(  # type: ignore[attr-defined]
            **tokenizer(batch, padding=True, truncation=True, max_length=longest, return_tensors="pt").to(device)))
        return vectors, tokens

    def _batches(self, items: list, forward) -> np.ndarray:  # type: ignore[type-arg,no-untyped-def]
        import torch

        parts = []
        for start in range(0, len(items), self.batch_size):
            with self._lock, torch.inference_mode():
                out = forward(items[start:start + self.batch_size])
                vectors = out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5: an output
                parts.append(torch.nn.functional.normalize(vectors, p=2, dim=1).float().cpu().numpy())
        return np.concatenate(parts) if parts else np.empty((0, self.output_dim), np.float32)
