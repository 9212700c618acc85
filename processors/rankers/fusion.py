"""Hybrid fusion (placeholder until the joiner's fusion lands): the names of the arms' scores."""

DENSE_ARM = "dense"
LEXICAL_ARM = "lexical"
