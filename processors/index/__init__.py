"""The shard index: RocksDB holds the truth, FAISS is derived from it."""
