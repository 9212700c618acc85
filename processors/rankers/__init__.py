"""Rankers turn chunk-level hits into ranked document matches and merge ranked lists."""
