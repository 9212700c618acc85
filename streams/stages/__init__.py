"""One module per stage kind, in data-flow order: documents, fan-out, shard, join."""
