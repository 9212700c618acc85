"""The joiner's fan-in logic, driven with records as the stage loop would hand them over."""

import dataclasses
import itertools
import re
import time

import pytest

from processors.document import Direction, Document, Score
from streams.wire import headers as h
from streams.exceptions import InvalidRecordError, ReplyTopicError
from streams.stages.join import Joiner
from streams.wire.topics import FlowTopics
from streams.wire.codec import PARTIAL_RESULT, SEARCH_REPLY
from streams.wire.records import PartialResult
from streams.runtime.spec import Inbound


def part(shard: int, matches: list[tuple[str, float]], *, deadline_ms: int | None = None, request_id: str = "r",
         error: str | None = None, warning: str | None = None, parameters: dict | None = None,
         restoring: bool = False) -> Inbound:
    deadline_ms = deadline_ms or int(time.time() * 1000) + 60_000
    query = Document(id="q0", text="q", matches=[
        Document(id=doc_id, scores={"score": Score(value, "op", Direction.SIMILARITY)}) for doc_id, value in matches])
    value = PartialResult(request_id, shard, [0, 1], "replies", deadline_ms,
                          parameters or {"top_k": 2}, [query], error=error, warning=warning, restoring=restoring)
    return Inbound("f.partials", 0, shard + 1, request_id.encode(), PARTIAL_RESULT.encode(value),
                   {h.DEADLINE_MS: str(deadline_ms).encode()})


class TestJoiner:
    def test_replies_once_all_shards_answered_with_merged_top_k(self) -> None:
        joiner = Joiner()
        assert joiner.process([part(-1, []), part(0, [("a", 0.5), ("b", 0.4)])]) == []
        outputs = joiner.process([part(1, [("c", 0.9), ("d", 0.1)])])
        assert len(outputs) == 1 and outputs[0].topic == "replies"
        reply = SEARCH_REPLY.decode(outputs[0].value)
        assert not reply.partial and reply.missing_shards == []
        assert [m.id for m in reply.docs[0].matches] == ["c", "a"]

    def test_deadline_gives_a_partial_reply_naming_missing_shards(self) -> None:
        joiner = Joiner()
        soon = int(time.time() * 1000) + 50
        joiner.process([part(-1, [], deadline_ms=soon), part(1, [("c", 0.9)], deadline_ms=soon)])
        assert joiner.tick() == []
        while time.time() * 1000 < soon:
            time.sleep(0.01)
        outputs = joiner.tick()
        reply = SEARCH_REPLY.decode(outputs[0].value)
        assert reply.partial and reply.missing_shards == [0]
        assert [m.id for m in reply.docs[0].matches] == ["c"]

    def test_late_parts_of_a_replied_request_are_dropped(self) -> None:
        joiner = Joiner()
        joiner.process([part(0, [("a", 0.5)]), part(1, [("b", 0.4)])])
        assert joiner.process([part(-1, [])]) == []
        assert joiner.tick() == []

    def test_a_shard_error_is_reported_and_marks_the_reply_partial(self) -> None:
        joiner = Joiner()
        outputs = joiner.process([part(-1, []), part(0, [("a", 0.5)]), part(1, [], error="shard 1: boom")])
        reply = SEARCH_REPLY.decode(outputs[0].value)
        assert reply.partial and reply.errors == ["shard 1: boom"]
        assert [m.id for m in reply.docs[0].matches] == ["a"]

    def test_a_second_answer_of_a_shard_never_replaces_a_better_one(self) -> None:
        """A shard answers twice when its partition moved while the search waited for a write: the new
        owner, still restoring, answers without matches (or fails); the old owner's answer stays."""
        joiner = Joiner()
        assert joiner.process([part(-1, []), part(0, [("a", 0.5)]), part(0, [], restoring=True),
                               part(0, [], error="shard 0: boom")]) == []
        reply = SEARCH_REPLY.decode(joiner.process([part(1, [("b", 0.4)])])[0].value)
        assert not reply.partial and not reply.restoring_shards and not reply.errors
        assert [m.id for m in reply.docs[0].matches] == ["a", "b"]

    def test_a_better_second_answer_replaces_a_restoring_one(self) -> None:
        joiner = Joiner()
        assert joiner.process([part(-1, []), part(0, [], restoring=True), part(0, [("a", 0.5)])]) == []
        reply = SEARCH_REPLY.decode(joiner.process([part(1, [("b", 0.4)])])[0].value)
        assert not reply.partial and not reply.restoring_shards
        assert [m.id for m in reply.docs[0].matches] == ["a", "b"]

    def test_a_part_short_of_top_k_is_a_warning_not_an_error(self) -> None:
        """A shard whose window stopped at its limit answers what it found, and says so: a
        warning on a complete reply, not an error (which a CLI and HTTP treat as a failure)."""
        joiner = Joiner()
        outputs = joiner.process([part(-1, []), part(0, [("a", 0.5)]),
                                  part(1, [("b", 0.7)], warning="shard 1: index-stage window limit reached")])
        reply = SEARCH_REPLY.decode(outputs[0].value)
        assert not reply.partial and not reply.errors
        assert reply.warnings == ["shard 1: index-stage window limit reached"]
        assert [m.id for m in reply.docs[0].matches] == ["b", "a"]

    def test_a_join_stage_filter_short_of_top_k_says_so(self) -> None:
        only_b = {"top_k": 2, "query_language": [{"operator": "filter", "traversal_paths": ["m"],
                                                  "parameters": {"conditions": {"id__in": ["b"]}}}]}
        joiner = Joiner()
        outputs = joiner.process([part(shard, matches, parameters=only_b) for shard, matches in
                                  ((-1, []), (0, [("a", 0.5), ("c", 0.4)]), (1, [("b", 0.7), ("d", 0.1)]))])
        reply = SEARCH_REPLY.decode(outputs[0].value)
        assert [m.id for m in reply.docs[0].matches] == ["b"] and not reply.errors and not reply.partial
        assert reply.warnings == ["join: a join-stage filter kept 1 of the 4 documents the shards sent for q0, fewer "
                                  "than top_k=2; it ran after each shard's top-k cut, so more may match: give the "
                                  "filter \"stage\": \"index\" to filter before the cut"]


    def test_a_reply_over_the_payload_limit_becomes_an_error_reply_that_fits(self) -> None:
        joiner = Joiner(max_reply_bytes=500)
        big = [(f"doc-{i}-" + "x" * 400, 0.5) for i in range(2)]
        outputs = joiner.process([part(-1, []), part(0, big), part(1, [("c", 0.9)])])
        reply = SEARCH_REPLY.decode(outputs[0].value)
        assert len(outputs[0].value) <= 500 and reply.partial and not reply.docs
        assert reply.errors[0].startswith("join: the reply is ") and "over max_payload_bytes=500" in reply.errors[0]

    def test_parts_no_stage_of_the_flow_writes_are_refused(self) -> None:
        topics = FlowTopics("f", 2)
        joiner = Joiner(topics=topics, fields=["title"])
        deadline = int(time.time() * 1000) + 60_000
        good = PartialResult("r", 0, [0, 1], topics.new_reply_topic(), deadline, {}, [Document(id="q0")],
                             field_name="title", expected_fields=["title"])
        bad = {
            "is not a reply topic": dataclasses.replace(good, reply_to="f.ingest"),
            "from shard 2; the flow has shards 0..1": dataclasses.replace(good, shard=2),
            "expects shards [0, 0]": dataclasses.replace(good, expected_shards=[0, 0]),
            "names fields ['body', 'title']": dataclasses.replace(good, expected_fields=["body"]),
            "the limit max_deadline_s is 300": dataclasses.replace(good, deadline_ms=deadline + 10**9),
        }
        for message, value in bad.items():
            record = Inbound("f.partials", 0, 0, b"r", PARTIAL_RESULT.encode(value), {h.DEADLINE_MS: str(deadline).encode()})
            with pytest.raises((ReplyTopicError, InvalidRecordError), match=re.escape(message)):
                joiner.process([record])
        assert joiner.process([Inbound("f.partials", 0, 0, b"r", PARTIAL_RESULT.encode(good),
                                       {h.DEADLINE_MS: str(deadline).encode()})]) == []

    def test_a_refused_part_in_a_batch_loses_no_reply(self) -> None:
        """The loop retries a failed batch record by record: the first try must not have consumed
        the request its good part completed."""
        topics = FlowTopics("f", 2)
        joiner = Joiner(topics=topics)
        deadline = int(time.time() * 1000) + 60_000
        reply_to = topics.new_reply_topic()
        good = [PartialResult("r1", shard, [0, 1], reply_to, deadline, {"top_k": 2}, [Document(id="q0")])
                for shard in (-1, 0, 1)]
        bad = dataclasses.replace(good[0], request_id="r2", shard=9)
        records = [Inbound("f.partials", 0, i, b"r", PARTIAL_RESULT.encode(value), {h.DEADLINE_MS: str(deadline).encode()})
                   for i, value in enumerate([*good, bad])]
        with pytest.raises(InvalidRecordError):
            joiner.process(records)
        replies = [out for record in records[:3] for out in joiner.process([record])]
        assert [SEARCH_REPLY.decode(out.value).request_id for out in replies] == ["r1"]

    def test_past_max_pending_the_request_due_first_is_answered_at_once(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(Joiner, "MAX_PENDING", 2)
        joiner = Joiner()
        now = int(time.time() * 1000)
        outputs = [out for i, due in enumerate([30_000, 10_000, 20_000])
                   for out in joiner.process([part(-1, [], deadline_ms=now + due, request_id=f"r{i}")])]
        shed = [SEARCH_REPLY.decode(out.value) for out in outputs]
        assert [(r.request_id, r.partial) for r in shed] == [("r1", True)]  # due first, answered with what it had

def field_part(shard: int, field_name: str | None, expected_fields: list[str], matches: list[tuple[str, float]],
               parameters: dict | None = None, error: str | None = None) -> Inbound:
    deadline_ms = int(time.time() * 1000) + 60_000
    query = Document(id="q0", text="q", matches=[
        Document(id=doc_id, scores={"score": Score(value, "op", Direction.SIMILARITY)}) for doc_id, value in matches])
    value = PartialResult("r", shard, [0, 1], "replies", deadline_ms, parameters or {"top_k": 5}, [query],
                          field_name=field_name, expected_fields=expected_fields, error=error)
    return Inbound("f.partials", 0, 0, b"r", PARTIAL_RESULT.encode(value), {h.DEADLINE_MS: str(deadline_ms).encode()})


class TestJoinerFields:
    def test_expects_one_part_per_shard_and_selected_field(self) -> None:
        joiner = Joiner()
        fields = ["title", "summary"]
        assert joiner.process([field_part(-1, None, fields, []), field_part(0, "title", fields, [("11", 0.6)]),
                               field_part(1, "title", fields, []), field_part(0, "summary", fields, [("10", 0.5)])]) == []
        outputs = joiner.process([field_part(1, "summary", fields, [("11", 0.2)])])
        reply = SEARCH_REPLY.decode(outputs[0].value)
        assert not reply.partial
        assert [(m.id, m.scores["score"].value) for m in reply.docs[0].matches] == [("11", 0.6), ("10", 0.5)]

    def test_a_shards_answers_per_field_replace_its_earlier_failure_for_all_of_them(self) -> None:
        """The old owner of a partition failed the search (for every field), its new owner answers each field."""
        joiner = Joiner()
        fields = ["title", "summary"]
        assert joiner.process([field_part(-1, None, fields, []), field_part(0, None, [], [], error="shard 0: boom"),
                               field_part(0, "title", fields, [("10", 0.5)]), field_part(0, "summary", fields, [("11", 0.6)]),
                               field_part(1, "title", fields, [])]) == []  # shard 1's summary still to come
        reply = SEARCH_REPLY.decode(joiner.process([field_part(1, "summary", fields, [])])[0].value)
        assert not reply.partial and not reply.errors
        assert [m.id for m in reply.docs[0].matches] == ["11", "10"]

    def test_one_field_answered_keeps_the_shards_failure_for_the_others(self) -> None:
        joiner = Joiner()
        fields = ["title", "summary"]
        outputs = joiner.process([field_part(-1, None, fields, []), field_part(0, None, [], [], error="shard 0: boom"),
                                  field_part(0, "title", fields, [("10", 0.5)]), field_part(1, "title", fields, []),
                                  field_part(1, "summary", fields, [])])
        reply = SEARCH_REPLY.decode(outputs[0].value)  # complete: summary of shard 0 answered by the failure
        assert reply.partial and reply.errors == ["shard 0: boom"]
        assert [m.id for m in reply.docs[0].matches] == ["10"]

    def test_one_selected_field_completes_without_the_others(self) -> None:
        joiner = Joiner()
        outputs = joiner.process([field_part(0, "title", ["title"], [("11", 0.6)]), field_part(1, "title", ["title"], [])])
        assert len(outputs) == 1 and not SEARCH_REPLY.decode(outputs[0].value).partial

    def test_ground_truth_gives_evaluations_and_running_stats(self) -> None:
        joiner = Joiner()
        params = {"top_k": 5, "ground_truth": {"q0": {"a": 1}}, "metrics": ["mrr", "recall@1"]}
        first = joiner.process([field_part(0, None, [], [("a", 0.9)], params), field_part(1, None, [], [], params)])
        scores = SEARCH_REPLY.decode(first[0].value).docs[0].scores
        assert scores["mrr"].value == 1.0 and scores["recall@1"].value == 1.0
        params["ground_truth"] = {"q0": {"b": 1}}
        raw = [field_part(0, None, [], [("a", 0.9), ("b", 0.5)], params), field_part(1, None, [], [], params)]
        decoded = [PARTIAL_RESULT.decode(r.value) for r in raw]
        for part in decoded:
            part.request_id = "r2"
        second = joiner.process([Inbound("f.partials", 0, 0, b"r2", PARTIAL_RESULT.encode(p), raw[0].headers)
                                 for p in decoded])
        scores = SEARCH_REPLY.decode(second[0].value).docs[0].scores
        assert scores["mrr"].value == 0.5
        assert scores["mrr.mean"].value == 0.75 and scores["mrr.std"].value == 0.25


class TestJoinerTies:
    def test_equal_scores_across_shards_and_fields_reply_in_id_order_whatever_arrives_first(self) -> None:
        fields = ["title", "summary"]
        parts = [field_part(0, "title", fields, [("d", 0.5), ("b", 0.5)]),
                 field_part(0, "summary", fields, [("b", 0.5), ("f", 0.5)]),
                 field_part(1, "title", fields, [("c", 0.5), ("a", 0.5)]),
                 field_part(1, "summary", fields, [("e", 0.5), ("a", 0.5)])]
        answers = set()
        for order in itertools.permutations(parts):
            outputs = Joiner().process(list(order))
            answers.add(tuple(m.id for m in SEARCH_REPLY.decode(outputs[0].value).docs[0].matches))
        assert answers == {("a", "b", "c", "d", "e")}  # top_k 5 of six tied documents: the first five ids


def test_a_request_the_joiner_sees_only_after_its_deadline_is_answered_once_with_the_expiry() -> None:
    """A joiner behind its input (or restarting) must not leave the client waiting in silence."""
    joiner = Joiner(flow="f")
    past = int(time.time() * 1000) - 5_000

    def late(shard: int) -> Inbound:
        record = part(shard, [], deadline_ms=past, request_id="gone")
        return dataclasses.replace(record, headers={**record.headers, h.REQUEST_ID: b"gone", h.REPLY_TO: b"f.reply.x"})

    [out] = joiner.process([late(-1), late(0)])
    reply = SEARCH_REPLY.decode(out.value)
    assert out.topic == "f.reply.x" and reply.request_id == "gone"
    assert reply.errors[0].startswith("RequestExpiredError: the join stage took the request up ")
    assert joiner.process([late(1)]) == [] and joiner.tick() == []
