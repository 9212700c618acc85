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
