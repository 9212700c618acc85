"""State kept by stages: shard indexes per partition."""
