"""The image hello-world: index labelled pictures, then search them by picture and by text.

Jina's first hello-world searched Fashion-MNIST by image; this one streams Tux Paint's stamps
(``streams.demo.stamps``) through the ``images`` flow, whose encoder puts pictures and texts in one space
(``CrossModalEncoder``), and asks both kinds of query. Each answer line shows the match's label, so
whether the search worked can be read off the screen.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from processors.document import Document
from streams.client import Client, IndexReceipt
from streams.client.progress import index_with_progress
from streams.demo.hello_world import demo_session, keep_serving_until_interrupted
from streams.demo.stamps import LABEL_TAG, PARAPHRASES, STAMPS_DIR, LabelledImage, stamp_documents, tuxpaint_stamps
from streams.flow.parse import load_flow
from streams.local.brokers import BrokerKind
from streams.resources import EXAMPLE_FLOWS
from streams.wire.records import SearchReply

__all__ = ["IMAGE_FLOW", "TEXT_QUERIES", "format_image_reply", "image_queries", "run_image_hello_world"]

IMAGE_FLOW = EXAMPLE_FLOWS / "images.yml"
TEXT_QUERIES = ("bird", "fruit", PARAPHRASES["musical instrument"], "road sign")
"""Label names, and one paraphrase that avoids the label's word."""
IMAGE_QUERY_LABELS = ("mammal", "flower", "tool")
"""One picture of each of these labels (the first by id) is a query."""


def image_queries(images: list[LabelledImage]) -> list[LabelledImage]:
    """The first image of each of :data:`IMAGE_QUERY_LABELS` present in ``images``."""
    firsts = {}
    for image in images:
        firsts.setdefault(image.label, image)
    return [firsts[label] for label in IMAGE_QUERY_LABELS if label in firsts]


def format_image_reply(query: str, reply: SearchReply, index: int = 0) -> str:
    """Rank, score, id and label of each match of query ``index``."""
    matches = reply.docs[index].matches if index < len(reply.docs) else []
    lines = [f'\n  {query}' + ("  (partial)" if reply.partial else "")]
    if not matches:
        lines.append("     (no matches yet)")
    for rank, match in enumerate(matches, start=1):
        lines.append(f"  {rank}. {match.scores['score'].value:.3f}  [{match.tags.get(LABEL_TAG, '?')}]  {match.id}")
    return "\n".join(lines)


def run_image_hello_world(*, stamps_dir: Path = STAMPS_DIR, limit: int | None = None, state_dir: Path | None = None,
                          top_k: int = 5, print_fn: Callable[[str], None] = print, bridge_port: int = 0,
                          keep_serving: bool = False, broker: BrokerKind = BrokerKind.AUTO,
                          flow_path: Path = IMAGE_FLOW) -> dict[str, list[Document]]:
    """Start everything, stream the labelled pictures, answer image and text queries once they are indexed.

    :param limit: index every ``len / limit``-th picture only (a quicker run), at most ``limit`` of them.
    :returns: the matches of each query, by the query's id (an image's) or text.
    :raises StampsNotInstalledError: if the pictures are not installed (the message says how).
    """
    images = tuxpaint_stamps(stamps_dir)
    if limit is not None and limit < len(images):
        images = images[::-(-len(images) // limit)][:limit]
    flow = load_flow(flow_path)
    with demo_session(flow, flow_path=flow_path, state_dir=state_dir, bridge_port=bridge_port, broker=broker,
                      print_fn=print_fn) as (runtime, client, url):
        labels = sorted({image.label for image in images})
        print_fn(f"streaming {len(images)} Tux Paint pictures in {len(labels)} labels ({', '.join(labels)}) "
                 f"onto {flow.topics.ingest}")
        receipt = index_with_progress(client, list(stamp_documents(images)), topics=runtime.flow.topics)
        print_fn("\nindexing done; [label] of each match:")
        replies = _ask(client, images, top_k, receipt, print_fn)
        if keep_serving:
            keep_serving_until_interrupted(url, print_fn)
    return replies


def _ask(client: Client, images: list[LabelledImage], top_k: int, receipt: IndexReceipt,
         print_fn: Callable[[str], None]) -> dict[str, list[Document]]:
    replies: dict[str, list[Document]] = {}
    queries = image_queries(images)
    if queries:
        reply = client.search(images=[image.path.read_bytes() for image in queries], top_k=top_k, after=receipt,
                              timeout_s=60)
        for i, image in enumerate(queries):
            print_fn(format_image_reply(f"search by the picture {image.id} [{image.label}]:", reply, i))
            replies[image.id] = list(reply.docs[i].matches)
    reply = client.search(list(TEXT_QUERIES), top_k=top_k, after=receipt, timeout_s=60)
    for i, text in enumerate(TEXT_QUERIES):
        print_fn(format_image_reply(f'search by the text "{text}":', reply, i))
        replies[text] = list(reply.docs[i].matches)
    return replies
