"""``index``, ``search`` and ``serve``: what an application does with a running flow, from the command line."""

from __future__ import annotations

import errno
import json
import socket
from pathlib import Path
from typing import Any

import click

from processors.index.types import INDEX_TYPES
from processors.query.limits import REQUEST_LIMITS
from streams.cli.flowref import FLOW, CommandFlow, _client
from streams.cli.group import main, retrieval_options
from streams.exceptions import RequestExpiredError, RequestTimeoutError, StreamsearchError


@main.command("index")
@click.argument("file", type=click.Path(exists=True, path_type=Path))
@click.option("--flow", type=FLOW, default="hello", show_default=True, help="Flow name or flow YAML.")
@click.option("--wait", is_flag=True, help="Return once every shard has applied the documents: searchable (read-your-writes); "
                   "exit 1 naming those a stage dead-lettered on the way.")
@click.option("--timeout", type=float, default=600.0, show_default=True, help="With --wait: give up after S seconds.")
def index(file: Path, flow: CommandFlow, wait: bool, timeout: float) -> None:
    """Index a JSONL file of {"id", "text", ...} objects into a running flow; "text" is optional
    when the flow maps fields (e.g. {"id": "10", "title": ..., "summary": ...}) or a line has an image
    ("blob": base64, or "uri": a local file). FILE may be a directory of images instead (id = relative path)."""
    from streams.demo.corpora import read_image_directory, read_jsonl
    from streams.client.progress import wait_searchable

    # A flow YAML says which fields it maps; a bare name does not, so any string field may do.
    docs = list(read_image_directory(file) if file.is_dir()
                else read_jsonl(file, fields=flow.spec.fields if flow.spec else None))
    with _client(flow) as client:
        receipt = client.index(docs, progress=True, total=len(docs))
        click.echo(f"sent {receipt.count} documents; last offsets {receipt.offsets}")
        if wait:
            click.echo("waiting until every shard has applied them ...", err=True)
            try:
                searchable = wait_searchable(client, receipt, timeout=timeout)
            except RequestTimeoutError as exc:
                raise StreamsearchError(f"{exc}; raise --timeout, or see `streamsearch status`") from exc
            reply, letters = searchable.reply, searchable.dead_letters
            version = f" by index version {reply.version}" if reply is not None else ""
            click.echo(f"{receipt.count - len(letters)} documents searchable{version}")
            if letters:
                raise StreamsearchError(_dead_lettered(letters, receipt.count, flow))


def _dead_lettered(letters: list[Any], count: int, flow: CommandFlow) -> str:
    """One line naming the documents a stage dead-lettered on the way, and why."""
    shown = "; ".join(f"{(letter.key or b'').decode(errors='replace')!r} by {letter.stage}: {letter.error_class}: "
                      f"{letter.message[:200]}" for letter in letters[:3])
    more = f"; and {len(letters) - 3} more" if len(letters) > 3 else ""
    return (f"{len(letters)} of {count} documents were dead-lettered on the way and are not searchable: {shown}{more} "
            f"(`streamsearch dead-letters --flow {flow}`)")


@main.command("search")
@click.argument("text", required=False)
@click.option("--flow", type=FLOW, default="hello", show_default=True, help="Flow name or flow YAML.")
@click.option("--top-k", type=int, default=None,
              help=f"Documents to return, 1..{REQUEST_LIMITS.max_top_k} (max_top_k); the flow's default if unset.")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Deadline in seconds.")
@click.option("--filter-by", multiple=True, help="Search only this field (repeatable; multi-field flows).")
@click.option("--index-type", default=None, help=f"Shard index to answer from: {', '.join(INDEX_TYPES)}.")
@click.option("--image", "image", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Search by this image instead of a text (a flow whose encoder embeds images).")
@click.option("--filter", "filter_json", default=None, metavar="JSON",
              help='Only documents whose tags match, e.g. \'{"year": {"$gte": 2015}}\' (README, "Filtered search").')
@retrieval_options(retrieval=None, fusion=None)
def search(text: str | None, flow: CommandFlow, top_k: int | None, timeout: float, filter_by: tuple[str, ...],
           index_type: str | None, image: Path | None, filter_json: str | None, retrieval: str | None,
           fusion: str | None) -> None:
    """Search a running flow by TEXT (or --image FILE) and print the matches."""
    from streams.demo.hello_world import format_reply
    from streams.ops.status import why_no_reply

    conditions = _json_option("--filter", filter_json)
    with _client(flow) as client:
        try:
            if (text is None) == (image is None):
                raise ValueError("give a TEXT to search for, or --image FILE, not both")
            reply = client.search(text, images=[image] if image is not None else None, top_k=top_k,
                                  timeout_s=timeout, filter_by=filter_by or None, index_type=index_type,
                                  retrieval=retrieval, fusion=fusion, filter=conditions)
        except ValueError as exc:  # refused before sending: a blank text, a timeout over the limit
            raise StreamsearchError(str(exc)) from None
        except RequestExpiredError:  # answered: the flow says why
            raise
        except RequestTimeoutError as exc:  # a flow that does not run, or a deadline too short for it?
            raise StreamsearchError(why_no_reply(client.settings, client.topics, timeout)
                                    .replace("raise the timeout", "raise --timeout")) from exc
    if reply.errors:
        raise StreamsearchError("; ".join(reply.errors))
    for warning in reply.warnings:  # a short but good result: said, and the matches shown
        click.echo(f"streamsearch: warning: {warning}", err=True)
    click.echo(format_reply(text if text is not None else f"[image] {image}", reply))
    scored = sorted({f"{m.scores['score'].op_name} ({m.scores['score'].direction.value})"
                     for doc in reply.docs for m in doc.matches if "score" in m.scores})
    click.echo(f"\n  answered by index version {reply.version}"
               f"{'; scores: ' + ', '.join(scored) if scored else ''}")


def _json_option(name: str, raw: str | None) -> Any:
    """An option's JSON value, or None when not given.

    :raises StreamsearchError: in one line, for text that is not JSON.
    """
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise StreamsearchError(f"{name} is not JSON: {exc}") from None


@main.command("serve")
@click.option("--flow", type=FLOW, required=True,
              help="Flow name or flow YAML (a YAML also gives the page its field filter).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
def serve(flow: CommandFlow, host: str, port: int) -> None:
    """Serve the HTTP bridge and the search page for a running flow (bearer token: STREAMSEARCH_TOKEN)."""
    import uvicorn

    from streams.client.http import create_app, warn_if_unprotected
    from streams.ops.bridge import StatusInspector
    from streams.runtime.heap import freeze_startup_heap

    with _client(flow) as client:
        listener = _listen(host, port)  # a busy port is one line, before anything is started
        client.start()  # reply topic and serving version before the first request, off the event loop
        app = create_app(client, flow=flow.spec, inspector=StatusInspector(client.settings, flow.spec or flow.name))
        warn_if_unprotected(app, host)
        bound_host, bound_port = listener.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        click.echo(f"serving flow {client.topics.flow!r}: search page http://{shown}:{bound_port}/ , "
                   f"API docs http://{shown}:{bound_port}/docs (Ctrl-C stops)")
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port))
        freeze_startup_heap()  # the bridge's modules and app: never walked by a full collection
        server.run(sockets=[listener])


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``.

    :raises StreamsearchError: if the address is taken or cannot be bound.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise StreamsearchError(f"cannot serve on {host}:{port}: {exc.strerror}") from exc
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a socket in TIME_WAIT is free
    try:
        listener.bind(address)
        listener.listen(2048)
    except OSError as exc:
        listener.close()
        raise StreamsearchError(f"cannot serve on {host}:{port}: {exc.strerror}"
                                f"{'; choose another --port' if exc.errno == errno.EADDRINUSE else ''}") from exc
    return listener
