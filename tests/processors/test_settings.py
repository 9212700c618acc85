"""Settings added after versions were fingerprinted leave the fingerprints of existing versions alone."""

from __future__ import annotations

from processors.index.config import CompoundIndexerConfig
from processors.segmenters.sentence import SentencizerConfig
from processors.settings import settings_repr

BEFORE_THE_LEXICAL_ARM = ("CompoundIndexerConfig(dim=384, metric='inner_product', index_type='flat', hnsw_m=32, "
                          "hnsw_ef_construction=200, hnsw_ef_search=128, ivf_nlist=0, ivf_nprobe=16, pq_m=0, pq_bits=8)")
"""``repr`` of the default index settings as versions built before ``lexical`` existed hashed it."""


def test_a_setting_added_later_is_left_out_at_its_default_only() -> None:
    assert settings_repr(CompoundIndexerConfig()) == BEFORE_THE_LEXICAL_ARM
    assert settings_repr(CompoundIndexerConfig(lexical=True)) == BEFORE_THE_LEXICAL_ARM[:-1] + ", lexical=True)"
    filtered = CompoundIndexerConfig(filterable={"year": "number"})
    assert settings_repr(filtered) == BEFORE_THE_LEXICAL_ARM[:-1] + ", filterable=mappingproxy({'year': 'number'}))"
    assert "filterable" in repr(CompoundIndexerConfig())  # repr itself shows every field


def test_other_settings_read_as_their_repr() -> None:
    assert settings_repr(SentencizerConfig()) == repr(SentencizerConfig())
    assert settings_repr("not a dataclass") == repr("not a dataclass")
