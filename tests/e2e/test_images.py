"""Image documents end to end on a real broker (issue 18, first part): the segment stage cuts them, the
encode stage embeds them (CrossModalEncoder: EfficientNet-Lite0 beside ConSE), the shards keep vectors and a
thumbnail but no image bytes; an image query finds its own image first; hostile images (not an image,
truncated, a decompression bomb, empty) are dead-lettered with a reason naming them while the next image is
indexed; a text query is answered with pictures, an image query that is no image with an error naming it.
The labelled-set quality (text→image) is checked by tests/e2e/test_image_hello_world.py."""

from __future__ import annotations

import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from processors.document import Document
from streams.client import Client, IndexReceipt
from streams.client.dead_letters import read_dead_letters
from streams.exceptions import SearchError
from streams.kafka.settings import KafkaSettings
from streams.local.runtime import LocalRuntime
from streams.resources import EXAMPLE_FLOWS
from tests.e2e.fixtures import FlowFactory, picture, stage_logs

pytestmark = pytest.mark.kafka

COLOURS = [(200, 30, 30), (30, 160, 40), (30, 40, 190), (230, 200, 20), (20, 20, 20), (160, 60, 200)]


def bomb() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20_000, 20_000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


IMAGES = {f"{shape}-{i}.png": picture(shape, colour) for shape in ("disc", "stripes") for i, colour in enumerate(COLOURS)}
WRONG_MIME = {"stripes-3.png": "image/jpeg", "disc-5.png": "text/plain"}
"""Declared types the bytes contradict: decoding goes by the bytes, so these are indexed like the others."""
HOSTILE = {"not-an-image.png": b"%PDF-1.4 this is not an image", "truncated.png": picture("disc", COLOURS[0])[:300],
           "bomb.png": bomb(), "empty.png": b""}


@pytest.fixture(scope="module")
def flow(start_flow: FlowFactory) -> LocalRuntime:
    return start_flow((EXAMPLE_FLOWS / "images.yml").read_text().replace("name: images", 'name: "{name}"'))


@pytest.fixture(scope="module")
def client(flow: LocalRuntime) -> Iterator[Client]:
    with flow.client() as c:
        yield c


@pytest.fixture(scope="module")
def indexed(client: Client) -> IndexReceipt:
    hostile_first = [Document(id=name, blob=blob, mime_type="image/png") for name, blob in HOSTILE.items()]
    images = [Document(id=name, blob=blob, mime_type=WRONG_MIME.get(name, "image/png")) for name, blob in IMAGES.items()]
    return client.index([*hostile_first, *images])


def test_an_image_query_finds_its_own_image_first_with_a_thumbnail_and_no_bytes(
        client: Client, flow: LocalRuntime, indexed: IndexReceipt) -> None:
    names = ["disc-0.png", "stripes-3.png", "disc-5.png"]  # the last two declared as JPEG and as text
    reply = client.search(images=[IMAGES[name] for name in names], top_k=3, after=indexed, timeout_s=120)
    assert not reply.partial and not reply.errors, stage_logs(flow)
    for name, doc in zip(names, reply.docs):
        first = doc.matches[0]
        assert first.id == name, [m.id for m in doc.matches]
        assert first.blob is None and all(chunk.blob is None for chunk in first.chunks)
        assert str(first.tags["thumbnail"]).startswith("data:image/jpeg;base64,")
    same_shape = [m.id for m in reply.docs[0].matches[1:]]
    assert all(m.startswith("disc-") for m in same_shape), same_shape  # the nearest others are discs too


def test_hostile_images_are_dead_lettered_naming_them_while_the_others_are_indexed(
        client: Client, flow: LocalRuntime, kafka_settings: KafkaSettings, indexed: IndexReceipt) -> None:
    reply = client.search(images=[IMAGES["stripes-5.png"]], top_k=1, after=indexed, timeout_s=120)
    assert reply.docs[0].matches[0].id == "stripes-5.png"  # indexed after the four hostile ones
    expected = {"not-an-image.png": "not an image", "truncated.png": "cannot be decoded",
                "bomb.png": "decompression bomb", "empty.png": "no image bytes"}
    deadline = time.monotonic() + 60
    while not set(expected) <= set(letters := {d.key.decode(): d for d in read_dead_letters(
            kafka_settings, flow.flow.topics) if d.key}):  # each read runs to the topic's end
        assert time.monotonic() < deadline, f"dead letters within 60 s: {sorted(letters)}"
    for name, reason in expected.items():
        assert name in letters, (name, sorted(letters))
        letter = letters[name]
        assert (letter.stage, letter.error_class) == ("segment", "InvalidDocumentError")
        assert f"document '{name}'" in letter.message and reason in letter.message, letter.message


def test_a_text_query_is_answered_with_pictures_and_a_broken_image_query_is_refused(
        client: Client, indexed: IndexReceipt) -> None:
    reply = client.search("a red disc", top_k=3, after=indexed, timeout_s=60)  # the flow's space holds texts too
    assert not reply.errors and {m.id for m in reply.docs[0].matches} <= set(IMAGES), reply.docs[0].matches
    assert len(reply.docs[0].matches) == 3
    with pytest.raises(SearchError, match="document 'q0': not an image"):
        client.search(images=[b"GIF89a, or so it says"], timeout_s=60)


def test_the_cli_indexes_a_folder_of_images_and_searches_by_one(
        flow: LocalRuntime, tmp_path: Path, indexed: IndexReceipt) -> None:
    folder = tmp_path / "album"
    (folder / "red").mkdir(parents=True)
    (folder / "red" / "a.png").write_bytes(picture("disc", (250, 10, 10)))
    (folder / "b.png").write_bytes(picture("stripes", (10, 10, 250)))
    (folder / "notes.txt").write_text("not an image: not indexed")
    assert flow.settings is not None
    env = {"PATH": "/usr/bin:/bin", "KAFKA_BOOTSTRAP_SERVERS": flow.settings.bootstrap_servers, "HOME": str(tmp_path)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "streams.cli", *args], check=False, capture_output=True,
                              text=True, timeout=300, env=env)

    indexed_now = cli("index", str(folder), "--flow", flow.flow.name, "--wait", "--timeout", "120")
    assert indexed_now.returncode == 0, indexed_now.stderr
    assert "sent 2 documents" in indexed_now.stdout and "2 documents searchable" in indexed_now.stdout
    found = cli("search", "--image", str(folder / "red" / "a.png"), "--flow", flow.flow.name, "--top-k", "2",
                "--timeout", "60")
    assert found.returncode == 0, found.stderr
    assert found.stdout.split("\n  1. ")[1].split()[1] == "red/a.png", found.stdout
    both = cli("search", "red", "--image", str(folder / "b.png"), "--flow", flow.flow.name)
    assert both.returncode == 1 and both.stderr.strip() == (
        "streamsearch: error: give a TEXT to search for, or --image FILE, not both")
