"""Search-request parameters and the query language: plain data, checked, never executed."""
