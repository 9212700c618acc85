"""Encoders give documents embeddings."""
