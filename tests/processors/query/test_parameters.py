import pytest

from processors.exceptions import RequestLimitError
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


class TestGroupingAndDiversity:
    def test_defaults_leave_the_ranking_alone(self) -> None:
        params = SearchParameters.parse({})
        assert (params.group_by, params.group_size, params.diversity) == (None, 1, None)
        assert not params.reranks and params.arm_depth == params.top_k

    def test_grouping_and_diversity_round_trip_and_widen_the_candidates(self) -> None:
        params = SearchParameters.parse({"top_k": 5, "group_by": "category", "group_size": 30, "diversity": 0.5})
        assert SearchParameters.parse(params.to_dict()) == params
        assert params.arm_depth == 150 and params.depth_rule == "top_k × group_size"  # over candidates (100)
        assert SearchParameters.parse({"top_k": 5, "group_by": "c"}).arm_depth == 100
        assert SearchParameters.parse({"top_k": 5, "diversity": 1}).depth_rule == "candidates"
        assert SearchParameters.parse({"top_k": 5, "group_size": 30}).arm_depth == 5  # no group_by: no groups

    @pytest.mark.parametrize(("raw", "message"), [
        ({"group_by": ""}, "'group_by' must be a tag name"), ({"group_by": ["a"]}, "'group_by' must be a tag name"),
        ({"group_size": 0}, "'group_size' must be an integer"), ({"group_size": 2.5}, "'group_size'"),
        ({"diversity": 1.5}, r"'diversity' must be a number in \[0, 1\]"), ({"diversity": True}, "'diversity'"),
        ({"diversity": "0.5"}, "'diversity'"),
    ])
    def test_bad_values_name_the_parameter(self, raw: dict, message: str) -> None:
        with pytest.raises(InvalidParameterError, match=message):
            SearchParameters.parse(raw)

    def test_a_group_size_over_its_limit_names_the_limit(self) -> None:
        with pytest.raises(RequestLimitError, match="group_size' is 101; the limit max_group_size is 100"):
            SearchParameters.parse({"group_by": "c", "group_size": 101})
