"""Image search quality on a labelled set, through the pipeline: image→image and text→image precision@10.

The set: Tux Paint's stamps (``streams.demo.stamps``: Debian ``tuxpaint-stamps-default``, 297 PNGs in 11
labels). They are indexed through the ``images`` flow (``streams/flows/images.yml``: ImagePatcher, then
CrossModalEncoder = EfficientNet-Lite0 features beside ConSE's text-space vector) on a broker this run
starts, and searched through the request/reply topics:

- image→image: every picture is a query (top 11, itself dropped); precision@10 is the share of the ten
  that carry its label. Baseline in the same run: raw pixels, each picture composited on white, squeezed
  to 32 × 32 RGB, centred and L2-normalised, ranked by cosine (exact, in this process).
- text→image: each label's name (``bird``, ``road sign``, ...) and six paraphrases that avoid the label's
  word (``stamps.PARAPHRASES``); precision@10 against the label. Baseline: a random ranking (seeded), and
  the expected precision of one (the label's share of the set).

Each comparison gets a 95 % paired bootstrap interval over its queries (``processors.evaluators.bootstrap``).
Timings are not the point here; the load average, peak RSS of this process and the run's length are printed.

    python benchmarks/image_search.py [--broker kafka|tansu] [--stamps /usr/share/tuxpaint/stamps]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from setup import broker_label, flow_runtime, fresh_broker, machine, markdown_table, peak_rss_mib

from processors.evaluators.bootstrap import paired_bootstrap
from processors.images import decode_image
from streams.demo.stamps import LABEL_TAG, PARAPHRASES, STAMPS_DIR, LabelledImage, stamp_documents, tuxpaint_stamps
from streams.resources import EXAMPLE_FLOWS

K = 10
BATCH = 16
"""Image queries per request."""


def pixel_vectors(images: Sequence[LabelledImage], side: int = 32) -> np.ndarray:
    """The raw-pixel baseline's vectors: (n, side·side·3) float32, centred and unit length."""
    from PIL import Image

    rows = []
    for image in images:
        picture = decode_image(image.path.read_bytes(), image.id).resize((side, side), Image.BILINEAR)
        values = np.asarray(picture, np.float32).ravel()
        values -= values.mean()
        rows.append(values / max(float(np.linalg.norm(values)), 1e-12))
    return np.stack(rows)


def exact_neighbours(vectors: np.ndarray, k: int) -> list[list[int]]:
    """Each row's k nearest other rows by inner product, ties by position (the ids are sorted)."""
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -np.inf)
    return [list(np.argsort(-row, kind="stable")[:k]) for row in scores]


def precision(found: Sequence[str], label: str, labels: Mapping[str, str]) -> float:
    return sum(labels.get(doc_id) == label for doc_id in found[:K]) / K


def through_pipeline(images: list[LabelledImage], texts: Mapping[str, str]) -> tuple[dict[str, list[str]], dict[str, list[str]], float]:
    """Index the pictures through the images flow and ask every query. Returns the ranked ids of each image
    query (itself dropped) and of each text query, and the seconds the indexing took."""
    from streams.client.progress import IndexProgress

    flow_yaml = (EXAMPLE_FLOWS / "images.yml").read_text()
    with tempfile.TemporaryDirectory(prefix="bench-images-") as state, flow_runtime(Path(state), flow_yaml) as runtime, \
            runtime.client() as client:
        runtime.wait_ready(client, timeout=300)
        started = time.monotonic()
        progress = IndexProgress(runtime.settings, runtime.flow.topics, total=len(images))
        receipt = client.index(list(stamp_documents(images)))
        progress.expect(receipt)
        progress.wait()
        progress.close()
        indexing_s = time.monotonic() - started
        by_image: dict[str, list[str]] = {}
        for start in range(0, len(images), BATCH):
            batch = images[start:start + BATCH]
            reply = client.search(images=[image.path.read_bytes() for image in batch], top_k=K + 1, after=receipt,
                                  timeout_s=120)
            for image, doc in zip(batch, reply.docs):
                by_image[image.id] = [match.id for match in doc.matches if match.id != image.id][:K]
        reply = client.search(list(texts), top_k=K, after=receipt, timeout_s=60)
        by_text = {text: [match.id for match in doc.matches] for text, doc in zip(texts, reply.docs)}
        check_labels(reply, images)
    return by_image, by_text, indexing_s


def check_labels(reply: object, images: list[LabelledImage]) -> None:
    """The matches carry the label tag they were indexed with (the shards keep the tags)."""
    labels = {image.id: image.label for image in images}
    for doc in reply.docs:  # type: ignore[attr-defined]
        for match in doc.matches:
            assert match.tags.get(LABEL_TAG) == labels[match.id], match.id


def interval_line(name: str, baseline: Mapping[str, float], system: Mapping[str, float]) -> str:
    interval = paired_bootstrap(baseline, system)
    return (f"{name}: mean difference {interval.mean:+.3f}, 95 % interval [{interval.low:+.3f}, {interval.high:+.3f}]"
            f" over {len(system)} queries{' (excludes 0)' if interval.excludes_zero else ''}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", choices=("kafka", "tansu"), default="kafka")
    parser.add_argument("--stamps", type=Path, default=STAMPS_DIR)
    args = parser.parse_args(argv)
    began = time.monotonic()
    images = tuxpaint_stamps(args.stamps)
    labels = {image.id: image.label for image in images}
    label_names = sorted(set(labels.values()))
    texts = {name: name for name in label_names} | {phrase: label for label, phrase in PARAPHRASES.items()}
    print(f"# image search quality: {len(images)} Tux Paint pictures, {len(label_names)} labels")
    print(f"machine: {machine()}; load before: {os.getloadavg()[0]:.2f}; broker: {broker_label(args.broker)}")

    with fresh_broker(args.broker):
        by_image, by_text, indexing_s = through_pipeline(images, texts)

    ids = [image.id for image in images]
    pixels = {ids[i]: [ids[j] for j in row] for i, row in enumerate(exact_neighbours(pixel_vectors(images), K))}
    rng = np.random.default_rng(0)
    random_text = {text: list(rng.permutation(ids)[:K]) for text in texts}
    share = {label: sum(v == label for v in labels.values()) / len(labels) for label in label_names}

    image_p = {i: precision(by_image[i], labels[i], labels) for i in ids}
    pixel_p = {i: precision(pixels[i], labels[i], labels) for i in ids}
    text_p = {t: precision(by_text[t], texts[t], labels) for t in texts}
    random_p = {t: precision(random_text[t], texts[t], labels) for t in texts}
    names = [t for t in texts if t in label_names]
    phrases = [t for t in texts if t not in label_names]

    def mean(values: Mapping[str, float], keys: Sequence[str]) -> str:
        return f"{np.mean([values[k] for k in keys]):.3f}"

    rows = [
        ("image→image", [f"{len(ids)}", mean(image_p, ids), mean(pixel_p, ids) + " (raw pixels)"]),
        ("text→image, label names", [f"{len(names)}", mean(text_p, names),
                                     mean(random_p, names) + f" (random; expected {np.mean([share[texts[t]] for t in names]):.3f})"]),
        ("text→image, paraphrases", [f"{len(phrases)}", mean(text_p, phrases),
                                     mean(random_p, phrases) + f" (random; expected {np.mean([share[texts[t]] for t in phrases]):.3f})"]),
    ]
    print(markdown_table(["queries", "precision@10", "baseline, same run"], rows))
    print(interval_line("image→image, encoder − raw pixels", pixel_p, image_p))
    print(interval_line("text→image, ConSE − random", random_p, text_p))
    print("per text query: " + ", ".join(f"{t!r} {text_p[t]:.1f}" for t in texts))
    per_label = {label: np.mean([image_p[i] for i in ids if labels[i] == label]) for label in label_names}
    print("image→image by label: " + ", ".join(f"{label} {value:.2f}" for label, value in per_label.items()))
    print(f"indexing through the pipeline: {indexing_s:.1f} s ({len(images) / indexing_s:.1f} pictures/s); "
          f"run {time.monotonic() - began:.0f} s; load after: {os.getloadavg()[0]:.2f}; "
          f"peak RSS of this process {peak_rss_mib():.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
