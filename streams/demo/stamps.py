"""A labelled image set that installs offline: Tux Paint's stamps (Debian ``tuxpaint-stamps-default``, GPL-2).

Photographs and drawings of animals, food, plants and objects, cut out on transparent backgrounds, one PNG
each, filed in category folders: the folder is the label. Only the folders that name a kind of thing and
hold at least 11 PNGs are taken (precision@10 needs ten others of the label); occasions (``seasonal/``)
and glyphs (``symbols/``) are left out: a picture of a pumpkin is not a picture of "Halloween" to a
classifier of things. 297 images in 11 labels in the 2022.06.04 package.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from processors.document import Document
from processors.images import IMAGE_LIMITS
from streams.demo.corpora import TITLE_TAG
from streams.exceptions import StreamsearchError

__all__ = [
    "LABELS",
    "LABEL_TAG",
    "PARAPHRASES",
    "STAMPS_DIR",
    "STAMPS_PACKAGE",
    "LabelledImage",
    "StampsNotInstalledError",
    "stamp_documents",
    "tuxpaint_stamps",
]

STAMPS_PACKAGE = "tuxpaint-stamps-default"
STAMPS_DIR = Path("/usr/share/tuxpaint/stamps")
"""Where the Debian package puts them."""
LABEL_TAG = "label"

LABELS: Mapping[str, str] = {
    "animals/birds": "bird",
    "animals/fish": "fish",
    "animals/insects": "insect",
    "animals/mammals": "mammal",
    "food/fruit": "fruit",
    "food/vegetables": "vegetable",
    "hobbies/music": "musical instrument",
    "household/tools": "tool",
    "plants/flowers": "flower",
    "town/houses": "house",
    "town/roadsigns": "road sign",
}
"""Category folder → the label's name, which is also its text query."""

PARAPHRASES: Mapping[str, str] = {
    "bird": "an animal with feathers and a beak",
    "fish": "something that swims in water",
    "fruit": "sweet food that grows on trees",
    "flower": "a plant in bloom with petals",
    "musical instrument": "something you play music on",
    "tool": "something for repairing things in a workshop",
}
"""Text queries that do not use the label's own word: what an embedding must carry beyond the name."""


class StampsNotInstalledError(StreamsearchError):
    """The image set is not on this machine."""


@dataclass(frozen=True, slots=True)
class LabelledImage:
    path: Path
    """The PNG file."""
    id: str
    """Its path under the stamps folder, e.g. ``animals/birds/crow.png``."""
    label: str


def tuxpaint_stamps(root: Path = STAMPS_DIR) -> list[LabelledImage]:
    """The PNGs of the :data:`LABELS` folders (and their sub-folders), sorted by id.

    :raises StampsNotInstalledError: if ``root`` holds none of them, naming the package to install.
    """
    found = [LabelledImage(path, path.relative_to(root).as_posix(), label)
             for folder, label in LABELS.items() for path in sorted((root / folder).rglob("*.png"))
             if path.stat().st_size <= IMAGE_LIMITS.max_bytes]
    if not found:
        raise StampsNotInstalledError(f"no Tux Paint stamps under {root}: apt-get install {STAMPS_PACKAGE}")
    return sorted(found, key=lambda item: item.id)


def stamp_documents(images: list[LabelledImage]) -> Iterator[Document]:
    """One document per image: its bytes as ``blob``, its label and name as tags."""
    for image in images:
        yield Document(id=image.id, blob=image.path.read_bytes(), mime_type="image/png",
                       tags={LABEL_TAG: image.label, TITLE_TAG: image.path.stem.replace("_", " ")})
