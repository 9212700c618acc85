"""Operator actions on a running flow (replay, reindex, versions, dead letters, status); library functions."""
