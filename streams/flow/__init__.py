"""Flow YAML: parsing, the typed spec, executor construction."""
