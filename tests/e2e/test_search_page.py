"""The search page in a real browser: Debian's Chromium driven by Playwright, against the bridge
served by uvicorn on a loopback port, in front of a real flow."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from processors.document import Document
from processors.query.limits import REQUEST_LIMITS
from streams.client import Client
from streams.client.http import create_app, serving
from streams.local.runtime import LocalRuntime
from tests.e2e.fixtures import PIPELINE_FLOW, FlowFactory, picture
from tests.fixtures import flow_spec

pytestmark = pytest.mark.kafka

CHROMIUM = "/usr/bin/chromium"  # installed by .ci/run; never `playwright install` (it downloads browsers)
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "search-page.png"


DOCS = {
    "argparse": "Command-line parsing library. This module is an optparse-inspired command-line parsing library "
                "that handles both optional and positional arguments.",
    "csv": "CSV parsing and writing. This module provides classes that assist in the reading and writing of "
           "Comma Separated Value (CSV) files.",
    "json": "JSON (JavaScript Object Notation) is a subset of JavaScript syntax. It is a lightweight data "
            "interchange format.",
    "sqlite3": "The sqlite3 extension module provides a DB-API 2.0 compliant interface to the SQLite library.",
}

FILLER = ("The harbour committee met on a grey morning to discuss the accounts of the fish market and the "
          "repairs to the old stone quay. ")
KEEPER = "The lighthouse keeper wrote every storm and every passing ship into his logbook by lamplight."
LONG = FILLER * 65 + KEEPER + " " + FILLER * 65
"""A 16k-character document whose matched sentence sits in its middle (4,900 px down when the
page showed whole documents)."""


@pytest.fixture(scope="module")
def client(start_flow: FlowFactory) -> Iterator[Client]:
    flow: LocalRuntime = start_flow(PIPELINE_FLOW)
    with flow.client() as c:
        receipt = c.index([Document(id=i, text=t, tags={"module": i}) for i, t in DOCS.items()]
                          + [Document(id="harbour-7", text=LONG, tags={"title": "The keeper's log", "year": 1911})])
        c.search("warm up", after=receipt, timeout_s=60)  # every document is applied before the page asks
        yield c


@pytest.fixture(scope="module")
def base_url(client: Client) -> Iterator[str]:
    with serving(create_app(client, token="s3cret")) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing: apt-get install -y chromium (.ci/run does)"
    with sync_playwright() as p:
        running = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield running
        running.close()


def test_search_page_shows_the_document_with_its_matched_chunk_highlighted(base_url: str, browser: Browser,
                                                                          tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1000, "height": 700})
    # The page asks for the token after a 401 and sends it as a bearer token, never in the URL.
    page.on("dialog", lambda dialog: dialog.accept("s3cret"))
    page.goto(base_url)
    expect(page.locator("#flow")).to_contain_text("flow t")
    page.fill("#q", "read a comma separated values file")
    page.press("#q", "Enter")

    first = page.locator("li.match").first
    expect(first).to_have_attribute("data-id", "csv", timeout=30_000)
    expect(first.locator(".id")).to_have_text("csv")
    expect(first.locator(".score")).to_have_text(re.compile(r"^-?\d+\.\d{3}$"))
    mark = first.locator("mark")
    expect(mark).to_have_count(1)
    assert mark.inner_text().strip() in DOCS["csv"]
    assert "CSV" in mark.inner_text()
    expect(first.locator(".text")).to_contain_text("CSV parsing and writing")
    expect(page.locator("#meta")).to_contain_text(" ms")
    expect(page.locator("#meta")).to_contain_text("index v1")
    assert page.locator("#field").is_hidden()  # a flow without fields offers no filter

    SCREENSHOT.parent.mkdir(exist_ok=True)
    # The committed docs/search-page.png is refreshed on request only, so test runs leave the tree clean.
    target = SCREENSHOT if os.environ.get("STREAMSEARCH_UPDATE_SCREENSHOT") == "1" else tmp_path / "search-page.png"
    page.screenshot(path=str(target), full_page=True)
    assert target.stat().st_size > 10_000
    page.close()


def test_a_long_document_shows_its_matched_passage_in_context_its_tags_and_the_whole_text_in_place(
        base_url: str, browser: Browser) -> None:
    page = browser.new_page(viewport={"width": 1000, "height": 700})
    page.on("dialog", lambda dialog: dialog.accept("s3cret"))
    page.goto(base_url)
    expect(page.locator("#topk")).to_have_attribute("max", str(REQUEST_LIMITS.max_top_k))  # GET /limits
    page.fill("#q", "a lighthouse keeper writing in his logbook")
    page.press("#q", "Enter")
    first = page.locator("li.match").first
    expect(first).to_have_attribute("data-id", "harbour-7", timeout=30_000)
    expect(first.locator(".title")).to_have_text("The keeper's log")
    expect(first.locator(".tags li")).to_have_text(["title: The keeper's log", "year: 1911"])
    snippet = first.locator("p.text").first
    expect(snippet.locator("mark")).to_have_text(KEEPER)
    assert len(snippet.inner_text()) < 3 * len(KEEPER) + 400  # the passage in context, not 26k characters
    mark_box, item_box = snippet.locator("mark").bounding_box(), first.bounding_box()
    assert mark_box is not None and item_box is not None and mark_box["y"] - item_box["y"] < 150
    whole = first.locator("details.whole")
    expect(whole.locator("summary")).to_have_text(f"whole document ({len(LONG)} characters)")
    whole.locator("summary").click()
    expect(whole.locator("p.text")).to_have_text(LONG.strip(), use_inner_text=True)
    expect(whole.locator("mark")).to_have_text(KEEPER)
    page.close()


def test_search_page_without_token_shows_401_when_prompt_dismissed(base_url: str, browser: Browser) -> None:
    page = browser.new_page()
    page.on("dialog", lambda dialog: dialog.dismiss())
    page.goto(base_url)
    page.fill("#q", "csv")
    page.press("#q", "Enter")
    expect(page.locator("#meta")).to_contain_text("401", timeout=15_000)
    page.close()


def test_field_filter_is_offered_when_the_flow_has_fields(client: Client, browser: Browser) -> None:
    with serving(create_app(client, token="", flow_fields=("title", "body"))) as url:
        page = browser.new_page()
        page.goto(url)
        expect(page.locator("#field")).to_be_visible()
        expect(page.locator("#field option")).to_have_text(["all fields", "title", "body"])
        assert _search_with(page, "#field", "title")["filter_by"] == ["title"]
        page.close()


def test_the_retrieval_switch_is_offered_when_the_flow_keeps_the_lexical_arm(
        client: Client, browser: Browser, tmp_path: Path) -> None:
    """The switch follows ``/status``'s ``lexical``; its choice goes as ``retrieval``. This flow keeps no lexical
    arm, so a bridge told otherwise gets the flow's refusal, shown as the 400 it is."""
    with serving(create_app(client, token="", flow=flow_spec(tmp_path, client.topics.flow, lexical=False))) as url:
        page = browser.new_page()
        page.goto(url)
        expect(page.locator("#flow")).to_contain_text("flow t")
        expect(page.locator("#retrieval")).to_be_hidden()
        page.close()
    with serving(create_app(client, token="", flow=flow_spec(tmp_path, client.topics.flow, lexical=True))) as url:
        page = browser.new_page()
        page.goto(url)
        expect(page.locator("#retrieval")).to_be_visible()
        expect(page.locator("#retrieval option")).to_have_text(["dense", "lexical", "hybrid"])
        assert _search_with(page, "#retrieval", "lexical")["retrieval"] == "lexical"
        expect(page.locator("#meta")).to_contain_text("400: ", timeout=15_000)
        expect(page.locator("#meta")).to_contain_text("needs the lexical arm")
        page.close()


def _search_with(page: Page, select: str, option: str) -> Any:
    """Choose ``option`` in the page's ``select``, search "csv"; the JSON body the page sent."""
    with page.expect_request("**/search") as request:
        page.select_option(select, option)
        page.fill("#q", "csv")
        page.press("#q", "Enter")
    return request.value.post_data_json


def test_an_image_flow_is_searched_by_uploading_an_image_and_shows_thumbnails(
        start_flow: FlowFactory, browser: Browser, tmp_path: Path) -> None:
    from streams.resources import EXAMPLE_FLOWS

    images = {"red-disc": picture("disc", (200, 20, 20)), "blue-stripes": picture("stripes", (20, 40, 200)),
              "green-disc": picture("disc", (20, 160, 40))}
    flow: LocalRuntime = start_flow((EXAMPLE_FLOWS / "images.yml").read_text().replace("name: images", 'name: "{name}"'))
    with flow.client() as client:
        receipt = client.index([Document(id=name, blob=blob) for name, blob in images.items()])
        client.probe(after=receipt, timeout_s=60)
        query = tmp_path / "query.png"
        query.write_bytes(images["blue-stripes"])
        with serving(create_app(client, token="", flow=flow.flow)) as url:
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            page.goto(url)
            expect(page.locator("#image")).to_be_visible()  # /status says the flow embeds images and texts
            expect(page.locator("#q")).to_be_visible()
            page.set_input_files("#image", str(query))
            page.click("button[type=submit]")
            first = page.locator("li.match").first
            expect(first).to_have_attribute("data-id", "blue-stripes", timeout=60_000)
            thumbnail = first.locator("img.thumb")
            expect(thumbnail).to_have_attribute("src", re.compile(r"^data:image/jpeg;base64,"))
            assert page.evaluate("document.querySelector('li.match img.thumb').naturalWidth") == 96
            expect(first.locator(".tags li")).to_have_count(0)  # the thumbnail is shown, not listed as a tag
            page.set_input_files("#image", [])  # no image chosen: the text is searched (the flow embeds both)
            with page.expect_request("**/search") as request:
                page.fill("#q", "stripes")
                page.press("#q", "Enter")
            assert request.value.post_data_json["texts"] == "stripes"
            expect(page.locator("li.match img.thumb")).to_have_count(3, timeout=60_000)
            page.close()
