"""The data the package ships: Avro schemas, example flows, the pom that resolves Apache Kafka.

Package data found with ``importlib.resources``, so a checkout, an editable install and a wheel
read the same single copy (``pyproject.toml`` lists it as package data).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["SCHEMAS", "EXAMPLE_FLOWS", "KAFKA_POM"]


def _package_path(*parts: str) -> Path:
    """A file or folder of the package, as a real path: Maven and the flow loader need one.

    :raises RuntimeError: when the package is imported from an archive (a zipapp), not installed.
    """
    resource = files("streams").joinpath(*parts)
    if not isinstance(resource, Path):
        raise RuntimeError(f"streamsearch must be installed unpacked to read {'/'.join(parts)}, not from {resource}")
    return resource


SCHEMAS = _package_path("schemas")
"""The Avro schemas (``*.avsc``): the one source of the wire format."""
EXAMPLE_FLOWS = _package_path("flows")
"""The example flows (``hello.yml``, ``beir.yml``, ``jep3.yml``, ``images.yml``) and the books ``jep3.yml`` indexes."""
KAFKA_POM = _package_path("local", "kafka", "pom.xml")
"""Resolves the pinned Apache Kafka and its runtime jars with Maven (``streams.local.apache_kafka``)."""
