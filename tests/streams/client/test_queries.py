"""What the client refuses before sending a search: the same values the flow would refuse."""

from __future__ import annotations

from typing import Any

import pytest

from processors.query.parameters import FUSIONS, RETRIEVALS
from streams.client import Client
from streams.client.queries import search_parameters
from streams.kafka.settings import KafkaSettings


class TestSearchParameters:
    def test_retrieval_and_fusion_join_the_parameters_when_set(self) -> None:
        assert search_parameters({"rrf_k": 30}, top_k=None, filter_by=None, index_type=None, retrieval="hybrid",
                                 fusion="dbsf") == {"rrf_k": 30, "retrieval": "hybrid", "fusion": "dbsf"}
        assert search_parameters(None, top_k=None, filter_by=None, index_type=None) == {}

    @pytest.mark.parametrize(("option", "allowed"), [("retrieval", RETRIEVALS), ("fusion", FUSIONS)])
    def test_an_unknown_value_is_refused_naming_the_allowed_ones(self, option: str, allowed: tuple[str, ...]) -> None:
        with pytest.raises(ValueError, match=f"{option} must be one of {', '.join(allowed)}, got 'bm42'"):
            search_parameters(None, top_k=None, filter_by=None, index_type=None, **{option: "bm42"})


@pytest.mark.parametrize("options", [{"retrieval": "sparse"}, {"fusion": "rrf2"}])
def test_search_refuses_it_before_sending(options: dict[str, Any]) -> None:
    """A client of an address nobody listens on: the refusal comes before any broker contact."""
    with Client("nobody", settings=KafkaSettings("127.0.0.1:1", {"socket.timeout.ms": 1000})) as client:
        with pytest.raises(ValueError, match="must be one of"):
            client.search_async("anything", **options)
        assert client._replies is None  # nothing was started: no reply topic, no request
