"""``hello-world`` and ``eval``: the demos of ``streams.demo``, each on a local broker it starts."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from processors.query.parameters import DEFAULT_FUSION, RETRIEVALS
from streams.cli.group import BROKER_OPTION, main, retrieval_options
from streams.local.brokers import BrokerKind

DEFAULT_LIMIT = 1000
"""Docstrings the text hello-world indexes."""


@main.command("hello-world")
@click.option("--limit", type=int, default=None, show_default=f"{DEFAULT_LIMIT} docstrings; every picture",
              help="Docstrings (or pictures) to index.")
@click.option("--flow", "flow_path", type=click.Path(path_type=Path), default=None, help="Flow YAML (default: the example flow hello.yml, streams/flows/).")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None, help="Where shard state and stage logs go.")
@click.option("--port", default=0, show_default="a free port", help="Port of the search page and HTTP API.")
@click.option("--serve/--no-serve", default=None,
              help="Keep serving the search page after the demo (default: when run in a terminal).")
@click.option("--images", is_flag=True,
              help="Index labelled pictures (Tux Paint's stamps: apt-get install tuxpaint-stamps-default) and "
                   "search them by picture and by text, with the flow images.yml.")
@BROKER_OPTION
def hello_world(limit: int | None, flow_path: Path | None, state_dir: Path | None, port: int, serve: bool | None,
                images: bool, broker: str) -> None:
    """Index Python's docstrings on a local broker and search them while they stream in; with --images,
    pictures searched by picture and by text."""
    keep_serving = sys.stdin.isatty() if serve is None else serve
    logging.getLogger().setLevel(logging.WARNING)
    if images:
        from streams.demo.image_hello_world import IMAGE_FLOW, run_image_hello_world

        run_image_hello_world(limit=limit, flow_path=flow_path or IMAGE_FLOW, state_dir=state_dir,
                              bridge_port=port, keep_serving=keep_serving, broker=BrokerKind(broker))
        return
    from streams.demo.hello_world import DEFAULT_FLOW, run_hello_world

    run_hello_world(limit=limit or DEFAULT_LIMIT, flow_path=flow_path or DEFAULT_FLOW, state_dir=state_dir,
                    bridge_port=port, keep_serving=keep_serving, broker=BrokerKind(broker))



@main.command("eval")
@click.option("--beir", "beir_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--flow", "flow_path", type=click.Path(path_type=Path), default=None, help="Flow YAML (default: the example flow beir.yml, streams/flows/).")
@click.option("--limit-queries", type=int, default=None, help="Evaluate only the first N test queries.")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None)
@retrieval_options(retrieval=RETRIEVALS[0], fusion=DEFAULT_FUSION, multiple=True)
def evaluate(beir_dir: Path, flow_path: Path | None, limit_queries: int | None, state_dir: Path | None,
             retrieval: tuple[str, ...], fusion: str) -> None:
    """Index a BEIR folder through the pipeline, send its test queries, print nDCG@10 and recall@100.
    With --retrieval lexical and/or hybrid (repeatable), the same index answers dense too, and a 95 %
    paired bootstrap interval of each one's nDCG@10 difference to dense is printed."""
    from streams.demo.beir import DEFAULT_EVAL_FLOW, run_eval

    logging.getLogger().setLevel(logging.WARNING)
    report = run_eval(beir_dir, flow_path=flow_path or DEFAULT_EVAL_FLOW, state_dir=state_dir,
                      limit_queries=limit_queries, retrievals=retrieval, fusion=fusion)
    for line in report.lines():
        click.echo(line)
