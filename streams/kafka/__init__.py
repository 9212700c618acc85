"""Thin, typed wrappers over confluent-kafka clients; no knowledge of stages.

``settings`` (where the cluster is), ``producer``, ``consumer``, ``reader`` (a topic read to its end or
followed) and ``admin`` (topics).
"""
