"""Free loopback ports for the servers the local runtime and the tests start (brokers, bridges).

Why not ``bind(0)``: a port the kernel hands out that way lies in its ephemeral range, and between the
moment it is picked and the moment the server binds it (a broker's JVM takes seconds) the Kafka clients of
the same machine open connections whose local ports the kernel draws from that same range; one of them can
take the port first (a CI run once lost a stage's metrics port this way; two test sessions side by side,
``pytest -n 2``, make it likelier). A port below that range is taken only by another explicit bind.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["free_port", "free_port_block"]

_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10_000
"""Below it lie the well-known and registered ports other software on the machine may expect."""
_ATTEMPTS = 200


def free_port() -> int:
    """A loopback port free now and outside the kernel's ephemeral range.

    :raises OSError: if no free port is found in ``_ATTEMPTS`` draws.
    """
    return free_port_block(1)


def free_port_block(size: int = 1) -> int:
    """A base port whose next ``size`` ports (``base .. base + size - 1``) are free now on 127.0.0.1, below
    the kernel's ephemeral range (Linux: ``/proc/sys/net/ipv4/ip_local_port_range``, else 32768).

    :raises OSError: if no such block is found in ``_ATTEMPTS`` random draws.
    """
    low = int(_EPHEMERAL.read_text().split()[0]) if _EPHEMERAL.exists() else 32768
    if low - size <= _LOWEST:
        raise OSError(f"no room for {size} ports between {_LOWEST} and the ephemeral range at {low}")
    for _ in range(_ATTEMPTS):
        base = random.randrange(_LOWEST, low - size)
        if all(_free(base + offset) for offset in range(size)):
            return base
    raise OSError(f"no {size} free ports in {_LOWEST}..{low} after {_ATTEMPTS} draws")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False
