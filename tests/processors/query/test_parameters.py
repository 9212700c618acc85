import pytest

from processors.query.parameters import InvalidParameterError, SearchParameters


class TestSearchParameters:
    def test_request_overrides_flow_defaults(self) -> None:
        defaults = SearchParameters(top_k=7, chunk_oversample=2)
        assert SearchParameters.parse({"top_k": 3}, defaults) == SearchParameters(top_k=3, chunk_oversample=2)
        assert SearchParameters.parse({}, defaults) == defaults

    @pytest.mark.parametrize(("raw", "message"), [
        ({"top_k": "ten"}, "top_k"), ({"top_k": 0}, "top_k"), ({"top_k": True}, "top_k"),
        ({"top_k": 10**9}, "top_k"), ({"__class__": 1}, "unknown parameter '__class__'"),
    ])
    def test_bad_values_name_the_problem(self, raw: dict, message: str) -> None:
        with pytest.raises(InvalidParameterError, match=message):
            SearchParameters.parse(raw)


class TestSearchParameterFields:
    def test_round_trip_through_json_ready_dict(self) -> None:
        raw = {"top_k": 3, "filter_by": ["title"], "index_type": "hnsw", "ground_truth": {"q0": {"d1": 1}},
               "metrics": ["ndcg@10"], "query_language": [{"operator": "reverse", "stage": "index"}]}
        params = SearchParameters.parse(raw)
        assert params.filter_by == ("title",) and params.index_type == "hnsw"
        assert SearchParameters.parse(params.to_dict()) == params
        assert [op.operator for op in params.operations_for("index")] == ["reverse"]
        assert params.operations_for("join") == ()

    @pytest.mark.parametrize(("raw", "message"), [
        ({"filter_by": "title"}, "filter_by"), ({"filter_by": []}, "filter_by"),
        ({"ground_truth": {"q0": {"d": "1"}}}, "ground_truth"), ({"metrics": [1]}, "metrics"),
        ({"query_language": {"operator": "x"}}, "query_language"),
        ({"query_language": [{"operator": "x", "stage": "encode"}]}, "stage"),
        ({"index_type": 3}, "index_type"),
    ])
    def test_bad_values(self, raw: dict, message: str) -> None:
        with pytest.raises(InvalidParameterError, match=message):
            SearchParameters.parse(raw)
