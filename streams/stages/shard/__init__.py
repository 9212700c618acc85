"""The index stage: ingest into sharded state, answer searches, restore from a changelog."""
