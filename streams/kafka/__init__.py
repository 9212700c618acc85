"""Thin, typed wrappers over confluent-kafka clients; no knowledge of stages."""
