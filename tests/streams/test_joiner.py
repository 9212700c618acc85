"""The joiner's fan-in logic, driven with records as the stage loop would hand them over."""

import time

from processors.document import Direction, Document, Score
from streams import headers as h
from streams.joiner import Joiner
from streams.serde import PARTIAL_RESULT, SEARCH_REPLY, PartialResult
from streams.stage import Inbound


def part(shard: int, matches: list[tuple[str, float]], *, deadline_ms: int | None = None, request_id: str = "r",
         error: str | None = None) -> Inbound:
    deadline_ms = deadline_ms or int(time.time() * 1000) + 60_000
    query = Document(id="q0", text="q", matches=[
        Document(id=doc_id, scores={"score": Score(value, "op", Direction.SIMILARITY)}) for doc_id, value in matches])
    value = PartialResult(request_id, shard, [0, 1], "replies", deadline_ms,
                          {"top_k": 2}, [query], error=error)
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
