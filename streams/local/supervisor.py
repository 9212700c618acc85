"""Runs a flow's stages as local processes and restarts those that die, as Kubernetes would."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from streams.flow import FlowSpec
from streams.metrics import PORT_ENV
from streams.stage import REPLICA_ENV

__all__ = ["StageProcess", "LocalFlow"]

logger = logging.getLogger(__name__)

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]
"""The folder that holds the ``streams`` package, so stage processes import this very copy."""


@dataclass(slots=True)
class StageProcess:
    """One replica of one stage."""

    stage: str
    replica: int
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    restarts: int = 0
    paused: bool = False


class LocalFlow:
    """Starts every replica of every stage (or only some stages) and keeps them alive.

    Stage output goes to ``<log_dir>/<stage>-<replica>.log``, so the caller's terminal stays
    readable. ``pause``/``resume`` stop a process without killing it (SIGSTOP), as a hung
    shard would be.
    """

    def __init__(
        self,
        flow: FlowSpec,
        *,
        flow_path: Path,
        bootstrap_servers: str,
        log_dir: Path,
        stages: list[str] | None = None,
        replicas: dict[str, int] | None = None,
        restart: bool = True,
        label: str = "main",
    ) -> None:
        self.flow = flow
        self.flow_path = Path(flow_path)
        self.bootstrap_servers = bootstrap_servers
        self.log_dir = Path(log_dir)
        self.stages = stages or [s.name for s in flow.stages]
        self.replicas = {s.name: s.replicas for s in flow.stages} | (replicas or {})
        self.restart = restart
        self.label = label
        self.processes: list[StageProcess] = []
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(self) -> "LocalFlow":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for stage in self.stages:
            for replica in range(self.replicas[stage]):
                self.processes.append(self._spawn(stage, replica))
        if self.restart:
            self._watcher = threading.Thread(target=self._watch, daemon=True, name="supervisor")
            self._watcher.start()
        return self

    def _spawn(self, stage: str, replica: int, restarts: int = 0) -> StageProcess:
        name = f"{stage}-{replica}" if self.label == "main" else f"{stage}-{self.label}-{replica}"
        log = open(self.log_dir / f"{name}.log", "ab")
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers, "PYTHONUNBUFFERED": "1",
               REPLICA_ENV: f"{self.label}-{replica}"}
        port = self.flow.stage(stage).metrics_port
        if port:
            env[PORT_ENV] = str(port + replica)  # replicas share a host here, so each needs its own port
        # The caller's working directory, absolute paths, and -P: a module in that directory (an
        # http.py, say) must not shadow the standard library or ours in the stage process.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))
        command = [sys.executable, "-P", "-m", "streams.cli", "run", str(self.flow_path.resolve()), "--stage", stage,
                   "--state-dir", str(Path(self.flow.state_dir).resolve())]
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        return StageProcess(stage, replica, process, log, restarts)

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            for i, proc in enumerate(self.processes):
                code = proc.process.poll()
                if code is not None and not self._stop.is_set():
                    logger.warning("stage died, restarting",
                                   extra={"stage": proc.stage, "replica": proc.replica, "exit_code": code})
                    proc.log.close()
                    self.processes[i] = self._spawn(proc.stage, proc.replica, proc.restarts + 1)

    def find(self, stage: str, replica: int = 0) -> StageProcess:
        return next(p for p in self.processes if p.stage == stage and p.replica == replica)

    def pause(self, stage: str, replica: int = 0) -> None:
        proc = self.find(stage, replica)
        proc.process.send_signal(signal.SIGSTOP)
        proc.paused = True

    def resume(self, stage: str, replica: int = 0) -> None:
        proc = self.find(stage, replica)
        proc.process.send_signal(signal.SIGCONT)
        proc.paused = False

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM every stage (they commit and leave their groups), SIGKILL what lingers."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
        for proc in self.processes:
            if proc.paused:
                proc.process.send_signal(signal.SIGCONT)
            if proc.process.poll() is None:
                proc.process.terminate()
        deadline = time.monotonic() + timeout
        for proc in self.processes:
            try:
                proc.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.process.kill()
                proc.process.wait()
            proc.log.close()

    def __enter__(self) -> "LocalFlow":
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
