"""Which extras a stage process needs: the join stage of a flow without a model fans queries out, and
with the lexical arm it analyses them with the shards' analyzer (tantivy, in the index extra)."""

from __future__ import annotations

from streams.flow.parse import parse_flow
from streams.stages.extras import stage_extras

WITHOUT_MODEL = "name: x\nstages:\n  index:\n    with: {{dim: 4, lexical: {lexical}}}\n  join: {{}}\n"


def test_the_join_stage_of_a_modelless_flow_with_the_lexical_arm_needs_the_analyzer() -> None:
    assert stage_extras(parse_flow(WITHOUT_MODEL.format(lexical="true")), ["join"]) == {"index"}


def test_without_the_lexical_arm_it_needs_nothing() -> None:
    assert stage_extras(parse_flow(WITHOUT_MODEL.format(lexical="false")), ["join"]) == set()


def test_with_a_model_the_encode_stage_fans_out_and_its_extra_holds_the_analyzer() -> None:
    flow = parse_flow("name: x\nstages:\n  encode: {}\n  index:\n    with: {dim: 384, lexical: true}\n  join: {}\n")
    assert stage_extras(flow, ["join"]) == set()
    assert stage_extras(flow, ["encode"]) == {"encode"}
