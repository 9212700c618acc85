"""Retrieval metrics against ground truth."""
