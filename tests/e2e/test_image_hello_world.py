"""The image hello-world on a third of its labelled pictures: a picture finds itself first and pictures of its
own label next, and a label's name and a paraphrase find pictures of that label above the others."""

from pathlib import Path

import pytest

from streams.demo.image_hello_world import TEXT_QUERIES, image_queries, run_image_hello_world
from streams.demo.stamps import LABEL_TAG, PARAPHRASES, tuxpaint_stamps
from streams.local.brokers import LocalBroker

pytestmark = pytest.mark.kafka


def test_pictures_are_found_by_picture_and_by_text(broker: LocalBroker, tmp_path: Path) -> None:
    printed: list[str] = []
    replies = run_image_hello_world(limit=100, state_dir=tmp_path, top_k=5, print_fn=printed.append)
    indexed = tuxpaint_stamps()[::3]  # 100 of 297: every third
    queries = image_queries(indexed)
    assert queries and all(image.id in replies for image in queries)
    for image in queries:
        matches = replies[image.id]
        assert matches[0].id == image.id, [m.id for m in matches]
        labels = [m.tags[LABEL_TAG] for m in matches[1:]]
        assert labels.count(image.label) >= 2, (image.id, labels)  # 4 others; a random ranking: 0.4 of them
    expected = {"bird": "bird", "road sign": "road sign", PARAPHRASES["musical instrument"]: "musical instrument"}
    for text, label in expected.items():
        assert text in TEXT_QUERIES
        labels = [m.tags[LABEL_TAG] for m in replies[text]]
        assert labels.count(label) >= 3, (text, labels)  # a random ranking: about 0.4 of 5
    output = "\n".join(printed)
    assert f"streaming {len(indexed)} Tux Paint pictures in 11 labels" in output
    assert '[bird]' in output and "search page and HTTP API: http://127.0.0.1:" in output


def test_the_set_names_its_package_when_it_is_not_installed(tmp_path: Path) -> None:
    from streams.demo.stamps import StampsNotInstalledError

    with pytest.raises(StampsNotInstalledError, match="apt-get install tuxpaint-stamps-default"):
        tuxpaint_stamps(tmp_path)
