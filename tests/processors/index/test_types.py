"""The table of vector index types: every row is complete and is what the rest reads."""

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest

from processors.exceptions import ConfigError
from processors.index.base import SearchTuning
from processors.index.config import CompoundIndexerConfig
from processors.index.types import (EXACT, INDEX_TYPES, VECTOR_INDEX_TYPES, IndexInputs, VectorIndexType,
                                   known_index_type)

ROWS = list(VECTOR_INDEX_TYPES.values())
CONFIG = CompoundIndexerConfig(dim=16, pq_m=4, pq_bits=4)
SHARED = {"dim", "metric", "index_type", "lexical", "bm25_k1", "bm25_b", "filterable", "exact_filter_limit",
          "exact_filter_share"}
"""Config fields every type reads, or that are not about vector indexes (``lexical``, ``bm25_*``); the rest belong to a
row."""


class TestTable:
    def test_names_are_the_flow_choices_and_exact_comes_first(self) -> None:
        assert tuple(VECTOR_INDEX_TYPES) == INDEX_TYPES and INDEX_TYPES[0] == EXACT.name
        hint = typing.get_type_hints(CompoundIndexerConfig)["index_type"]
        assert typing.get_args(hint) == INDEX_TYPES  # what the flow's `with` check offers

    def test_every_config_setting_belongs_to_a_row_and_every_row_names_real_ones(self) -> None:
        settings = {f.name for f in dataclasses.fields(CompoundIndexerConfig)} - SHARED
        assert set().union(*(row.settings for row in ROWS)) == settings

    def test_knobs_are_search_tuning_fields(self) -> None:
        knobs = {f.name for f in dataclasses.fields(SearchTuning)} - {"allowed"}
        assert all(set(row.knobs) <= knobs for row in ROWS)
        assert set().union(*(row.knobs for row in ROWS)) == knobs  # no knob without a type reading it

    @pytest.mark.parametrize("row", ROWS, ids=INDEX_TYPES)
    def test_each_row_builds_an_empty_index_from_its_training_size(self, row: VectorIndexType) -> None:
        needed = row.training_size(CONFIG)
        training = np.random.default_rng(0).normal(size=(max(needed, 1) * 4, CONFIG.dim)).astype(np.float32)
        index = row.build(IndexInputs(CONFIG, training, source=lambda ids: training[ids]))  # ids: rows
        assert index.size == 0 and index.op_name.startswith("faiss.")
        index.add(np.arange(len(training), dtype=np.int64), training)
        scores, ids = index.search(training[:2], 1, SearchTuning(**{knob: 8 for knob in row.knobs}))
        assert ids.shape == (2, 1) and set(ids[:, 0]) <= set(range(len(training)))

    def test_unknown_name_lists_the_table(self) -> None:
        assert known_index_type("hnsw") == "hnsw"
        with pytest.raises(ConfigError, match=", ".join(INDEX_TYPES)):
            known_index_type("annoy")

    def test_table_is_read_without_faiss(self) -> None:
        # A flow is checked by the client and the CLI, which may not have the index extra.
        code = ("import sys; import processors.index.config, processors.index.types; "
                "assert 'faiss' not in sys.modules and 'rocksdict' not in sys.modules")
        subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[3])
