"""Segmenters turn a Document into chunks, one granularity down."""
