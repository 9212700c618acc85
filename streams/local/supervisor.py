"""Runs a flow's stages as local processes and restarts those that die, as Kubernetes would."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from streams.exceptions import EXIT_CONFIG
from streams.flow.spec import FlowSpec
from streams.local.freezing import freeze, thaw
from streams.runtime.metrics import PORT_ENV
from streams.runtime.paths import REPLICA_ENV

__all__ = ["SUPERVISOR_PID_ENV", "LocalFlow", "StageProcess", "restart_delay", "stage_log_dir", "stage_log_files",
           "stage_logs_shown", "stop_with_supervisor"]

logger = logging.getLogger(__name__)

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]
"""The folder that holds the ``streams`` package, so stage processes import this very copy."""

SUPERVISOR_PID_ENV = "STREAMSEARCH_SUPERVISOR_PID"
"""Set in each stage process the supervisor starts: its parent's pid, which the stage outlives by at most
``SUPERVISOR_CHECK_S``."""
SUPERVISOR_CHECK_S = 0.5

STABLE_AFTER_S = 30.0
"""A stage that exits after running this long is restarted at once, and its backoff starts afresh."""
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0


def stage_log_dir(flow: FlowSpec) -> Path:
    """Where the stage processes run here write their output: ``<state_dir>/logs``, which every
    flow (and version) run with that state dir shares; each file names its flow version."""
    return Path(flow.state_dir) / "logs"


def stage_logs_shown(flow: FlowSpec) -> str:
    """The stage logs of one flow version, as people are told where to look: a glob."""
    return str(stage_log_dir(flow) / f"{flow.topics.prefix}.*.log")


def stage_log_files(flow: FlowSpec) -> list[Path]:
    """The stage logs of one flow version in its state dir (not those of its later versions,
    whose prefix ``<name>.v<N>`` the glob also matches), by name."""
    stages = {stage.name for stage in flow.stages}
    return sorted(path for path in stage_log_dir(flow).glob(f"{flow.topics.prefix}.*.log")
                  if path.name[len(flow.topics.prefix) + 1:].split("-", 1)[0] in stages)


def stop_with_supervisor(stop: Callable[[], object]) -> threading.Thread | None:
    """In a stage process a supervisor started, call ``stop`` once that supervisor is gone (the process then
    has another parent): a supervisor killed with SIGKILL, or by the OOM killer, runs no clean-up, and its
    stages would go on consuming, holding partitions and CPU, with nobody to stop them. A stage started by
    hand (no ``SUPERVISOR_PID_ENV``) is left alone: it may outlive the shell that started it, by design.

    :returns: the watching thread (a daemon), or None when this process has no supervisor.
    """
    supervisor = os.environ.get(SUPERVISOR_PID_ENV)
    if not supervisor or not supervisor.isdigit():
        return None

    def watch() -> None:
        while os.getppid() == int(supervisor):
            time.sleep(SUPERVISOR_CHECK_S)
        logger.warning("the supervisor that started this stage is gone: stopping",
                       extra={"supervisor_pid": int(supervisor)})
        stop()

    watcher = threading.Thread(target=watch, name="supervisor-watch", daemon=True)
    watcher.start()
    return watcher


def restart_delay(exit_code: int, uptime_s: float, quick_exits: int) -> float | None:
    """How long to wait before restarting a stage process that ended; None: do not restart it.

    :param exit_code: its status: ``EXIT_CONFIG`` (stored state built with other settings) is
        never restarted, and a signal (negative: killed, or a native crash, which the stage's
        crash-loop breaker counts on a rerun to handle) is restarted at once.
    :param uptime_s: how long it ran.
    :param quick_exits: how many exits in a row before this one came under ``STABLE_AFTER_S``.
    :returns: 0, or a delay doubling with each quick exit in a row, up to ``MAX_BACKOFF_S``.
    """
    if exit_code == EXIT_CONFIG:
        return None
    if exit_code < 0 or uptime_s >= STABLE_AFTER_S:
        return 0.0
    return min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** quick_exits)


@dataclass(slots=True)
class StageProcess:
    """One replica of one stage."""

    stage: str
    replica: int
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    restarts: int = 0
    paused: bool = False
    started: float = field(default_factory=time.monotonic)
    quick_exits: int = 0
    """Exits in a row that came under ``STABLE_AFTER_S`` after a start (the backoff's exponent)."""
    restart_at: float | None = None
    """When the supervisor starts the next process of this replica (it has ended)."""
    stopped: str | None = None
    """Why it ended and is not restarted: the last line of its log."""


class LocalFlow:
    """Starts every replica of every stage (or only some stages) and keeps them alive.

    Stage output goes to ``<log_dir>/<flow prefix>.<stage>-<replica>.log`` (``hello.index-0.log``;
    ``hello.v2.index-v2-0.log`` with the ``label`` ``v2``), so the caller's terminal stays readable
    and two flows, or two versions, run in one state dir keep their own logs. ``pause``/``resume``
    stop a process without killing it (SIGSTOP), as a hung shard would be.
    """

    def __init__(
        self,
        flow: FlowSpec,
        *,
        flow_path: Path,
        bootstrap_servers: str,
        log_dir: Path | None = None,
        stages: list[str] | None = None,
        replicas: dict[str, int] | None = None,
        restart: bool = True,
        label: str = "main",
    ) -> None:
        self.flow = flow
        self.flow_path = Path(flow_path)
        self.bootstrap_servers = bootstrap_servers
        self.log_dir = Path(log_dir) if log_dir is not None else stage_log_dir(flow)
        self.stages = stages or [s.name for s in flow.stages]
        self.replicas = {s.name: s.replicas for s in flow.stages} | (replicas or {})
        self.restart = restart
        self.label = label
        self.instance = f"{socket.gethostname()}.{uuid.uuid4().hex[:8]}"
        """This supervisor, among every one running the flow's stages on any host: part of each replica's
        name (``REPLICA_ENV``), so two runs of one flow never share a transactional id."""
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

    def log_path(self, stage: str, replica: int = 0) -> Path:
        """The file one replica of a stage writes to (appended to across restarts and runs)."""
        name = f"{stage}-{replica}" if self.label == "main" else f"{stage}-{self.label}-{replica}"
        return self.log_dir / f"{self.flow.topics.prefix}.{name}.log"

    def _spawn(self, stage: str, replica: int, restarts: int = 0, quick_exits: int = 0) -> StageProcess:
        log = open(self.log_path(stage, replica), "ab")
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers, "PYTHONUNBUFFERED": "1",
               REPLICA_ENV: f"{self.label}-{replica}.{self.instance}", SUPERVISOR_PID_ENV: str(os.getpid())}
        port = self.flow.stage(stage).metrics_port
        if port:
            env[PORT_ENV] = str(port + replica)  # replicas share a host here, so each needs its own port
        # The caller's working directory, absolute paths, and -P: a module in that directory (an
        # http.py, say) must not shadow the standard library or ours in the stage process.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))
        command = [sys.executable, "-P", "-m", "streams.cli", "run", str(self.flow_path.resolve()), "--stage", stage,
                   "--state-dir", str(Path(self.flow.state_dir).resolve())]
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        return StageProcess(stage, replica, process, log, restarts, quick_exits=quick_exits)

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            for i, proc in enumerate(self.processes):
                if self._stop.is_set():
                    return
                if proc.stopped is None and proc.restart_at is None and proc.process.poll() is not None:
                    self._ended(proc)
                if proc.restart_at is not None and time.monotonic() >= proc.restart_at:
                    self.processes[i] = self._spawn(proc.stage, proc.replica, proc.restarts + 1, proc.quick_exits)

    def _ended(self, proc: StageProcess) -> None:
        """Schedule the restart of a process that ended (at once, or backed off), or give it up."""
        proc.log.close()
        code = proc.process.returncode
        uptime = time.monotonic() - proc.started
        where = {"stage": proc.stage, "replica": proc.replica, "exit_code": code}
        delay = restart_delay(code, uptime, proc.quick_exits)
        if delay is None:
            proc.stopped = _last_line(self.log_path(proc.stage, proc.replica)) or f"exit code {code}"
            logger.error(f"stage {proc.stage} (replica {proc.replica}) stopped with a configuration error and is "
                         f"not restarted: {proc.stopped}", extra=where)
            return
        proc.quick_exits = 0 if uptime >= STABLE_AFTER_S else proc.quick_exits + 1
        proc.restart_at = time.monotonic() + delay
        logger.warning(f"stage died, restarting{f' in {delay:.0f} s' if delay else ''}", extra=where)

    @property
    def stopped(self) -> dict[str, str]:
        """The replicas that ended for good (``EXIT_CONFIG``), by ``stage-replica``, and why."""
        return {f"{p.stage}-{p.replica}": p.stopped for p in self.processes if p.stopped is not None}

    def find(self, stage: str, replica: int = 0) -> StageProcess:
        return next(p for p in self.processes if p.stage == stage and p.replica == replica)

    def pause(self, stage: str, replica: int = 0) -> None:
        proc = self.find(stage, replica)
        proc.paused = True  # first: a stop() after a freeze that raised still sends SIGCONT
        freeze(proc.process)

    def resume(self, stage: str, replica: int = 0) -> None:
        proc = self.find(stage, replica)
        thaw(proc.process)
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


def _last_line(log: Path) -> str | None:
    """A stage's last error line (``streamsearch: error: ...``, prefix dropped), else its last line."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
            lines = [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return None
    errors = [line for line in lines if line.startswith("streamsearch: error: ")]
    return errors[-1].removeprefix("streamsearch: error: ") if errors else (lines[-1] if lines else None)
