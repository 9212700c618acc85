"""The local supervisor's restart policy: at once after a kill, backed off after quick exits,
never after a configuration error (EXIT_CONFIG)."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from streams.exceptions import EXIT_CONFIG, StateConfigError
from streams.flow.parse import load_flow
from streams.local.runtime import LocalRuntime
from streams.local.supervisor import (MAX_BACKOFF_S, STABLE_AFTER_S, SUPERVISOR_PID_ENV, LocalFlow, StageProcess,
                                      restart_delay, stage_log_files, stage_logs_shown, stop_with_supervisor)
from streams.resources import EXAMPLE_FLOWS

HELLO = EXAMPLE_FLOWS / "hello.yml"
ERROR_LINE = "shard index at /s/f/index/0 was built with metric 'inner_product', now 'l2': rebuild it by replay"


class ScriptedFlow(LocalFlow):
    """Each process it starts prints a line and exits with the next of ``codes`` (a negative
    code: killed by that signal); with none left, it stays up."""

    def __init__(self, log_dir: Path, codes: list[int]) -> None:
        super().__init__(load_flow(HELLO), flow_path=HELLO, bootstrap_servers="unused:9092", log_dir=log_dir,
                         stages=["index"], replicas={"index": 1})
        self.codes = list(codes)
        self.spawned: list[float] = []
        self.delays: list[float] = []
        """The delay of each restart the supervisor scheduled, seconds, as it scheduled it."""

    def _ended(self, proc: StageProcess) -> None:
        super()._ended(proc)
        if proc.restart_at is not None:
            self.delays.append(proc.restart_at - time.monotonic())

    def _spawn(self, stage: str, replica: int, restarts: int = 0, quick_exits: int = 0) -> StageProcess:
        self.spawned.append(time.monotonic())
        code = self.codes.pop(0) if self.codes else None
        if code is None:
            script = "import time; time.sleep(60)"
        elif code < 0:
            script = f"import os; os.kill(os.getpid(), {-code})"
        else:
            script = f"import sys; print('traceback noise'); print({'streamsearch: error: ' + ERROR_LINE!r}); sys.exit({code})"
        log = open(self.log_path(stage, replica), "ab")
        process = subprocess.Popen([sys.executable, "-c", script], stdout=log, stderr=subprocess.STDOUT)
        return StageProcess(stage, replica, process, log, restarts, quick_exits=quick_exits)


def wait_for(condition: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


class TestRestartDelay:
    def test_a_configuration_error_is_never_restarted(self) -> None:
        assert restart_delay(EXIT_CONFIG, 0.1, 0) is None
        assert restart_delay(EXIT_CONFIG, 3600, 0) is None

    def test_a_kill_or_a_crash_is_restarted_at_once(self) -> None:
        assert restart_delay(-9, 0.1, 5) == 0 and restart_delay(-11, 0.1, 5) == 0

    def test_quick_exits_back_off_exponentially_and_a_stable_run_resets(self) -> None:
        assert [restart_delay(1, 0.5, n) for n in range(7)] == [1, 2, 4, 8, 16, MAX_BACKOFF_S, MAX_BACKOFF_S]
        assert restart_delay(1, STABLE_AFTER_S, 6) == 0


class TestSupervisor:
    def test_a_stage_exiting_with_a_configuration_error_is_not_restarted_and_says_why(self, tmp_path: Path) -> None:
        flow = ScriptedFlow(tmp_path, [EXIT_CONFIG]).start()
        try:
            wait_for(lambda: flow.stopped)
            time.sleep(1.5)  # three more rounds of the watcher
            assert flow.stopped == {"index-0": ERROR_LINE}
            assert len(flow.spawned) == 1 and flow.find("index").restarts == 0
        finally:
            flow.stop()

    def test_quick_exits_are_restarted_with_growing_delays_and_kills_at_once(self, tmp_path: Path) -> None:
        flow = ScriptedFlow(tmp_path, [1, 1, 1, -9]).start()
        try:
            wait_for(lambda: len(flow.spawned) == 5)
            gaps = [later - earlier for earlier, later in zip(flow.spawned, flow.spawned[1:])]
            # Lower bounds only: load can stretch a gap (a process's start, the watcher's 0.5 s ticks), never
            # shorten it. The SIGKILL's restart is judged by the delay scheduled, not by a gap that load stretches.
            assert gaps[0] >= 1.0 and gaps[1] >= 2.0 and gaps[2] >= 4.0, gaps
            assert [round(delay) for delay in flow.delays] == [1, 2, 4, 0], flow.delays  # a fourth quick exit: 8
            assert flow.find("index").restarts == 4 and not flow.stopped
        finally:
            flow.stop()

    def test_a_local_run_stops_waiting_and_names_the_stopped_stage(self, tmp_path: Path) -> None:
        runtime = LocalRuntime(load_flow(HELLO), flow_path=HELLO)
        runtime.local_flow = ScriptedFlow(tmp_path, [EXIT_CONFIG]).start()
        try:
            wait_for(lambda: runtime.local_flow.stopped)  # type: ignore[union-attr]
            with pytest.raises(StateConfigError, match=f"stage index-0 stopped: shard index at .* now 'l2'"):
                runtime.wait_ready(client=None, timeout=math.inf)  # type: ignore[arg-type]
        finally:
            runtime.local_flow.stop()


class TestStageLogs:
    """Issue 21: two flows run in one directory (one state dir) both wrote ``logs/segment-0.log``."""

    def test_flows_and_versions_sharing_a_state_dir_each_write_their_own_files(self, tmp_path: Path) -> None:
        text = HELLO.read_text()
        specs = {}
        for key, yaml in (("hello", text), ("other", text.replace("name: hello", "name: other")),
                          ("hello v2", text + "version: 2\n")):
            (tmp_path / f"{len(specs)}.yml").write_text(yaml + f"state_dir: {tmp_path / 'state'}\n")
            specs[key] = load_flow(tmp_path / f"{len(specs)}.yml")
        flows = {key: LocalFlow(spec, flow_path=HELLO, bootstrap_servers="unused:9092") for key, spec in specs.items()}
        added = LocalFlow(specs["hello"], flow_path=HELLO, bootstrap_servers="unused:9092", label="added-7")
        logs = tmp_path / "state" / "logs"
        assert {key: flow.log_path("segment") for key, flow in flows.items()} == {
            "hello": logs / "hello.segment-0.log", "other": logs / "other.segment-0.log",
            "hello v2": logs / "hello.v2.segment-0.log"}
        assert added.log_path("index", 1) == logs / "hello.index-added-7-1.log"
        for flow in [*flows.values(), added]:
            flow.log_dir.mkdir(parents=True, exist_ok=True)
            for stage in flow.stages:
                flow.log_path(stage).touch()
        assert stage_log_files(specs["hello"]) == sorted(
            [flows["hello"].log_path(s) for s in flows["hello"].stages] + [added.log_path(s) for s in added.stages])
        assert stage_log_files(specs["hello v2"]) == sorted(flows["hello v2"].log_path(s) for s in flows["hello v2"].stages)
        assert stage_logs_shown(specs["other"]) == str(logs / "other.*.log")


class TestOrphanedStages:
    """A stage process whose supervisor was killed (SIGKILL, the OOM killer: no clean-up ran) stops by itself;
    one started by hand is left alone."""

    STAGE = ("import sys, threading\n"
             "from streams.local.supervisor import stop_with_supervisor\n"
             "stopped = threading.Event()\n"
             "assert stop_with_supervisor(stopped.set) is not None\n"
             "print('watching', flush=True)\n"
             "stopped.wait(60)\n"
             "open(sys.argv[1], 'w').write('stopped' if stopped.is_set() else 'timed out')\n")
    SUPERVISOR = ("import os, subprocess, sys, time\n"
                  f"env = {{**os.environ, {SUPERVISOR_PID_ENV!r}: str(os.getpid())}}\n"
                  "log = open(sys.argv[2], 'w')\n"
                  "subprocess.Popen([sys.executable, '-c', sys.argv[3], sys.argv[1]], env=env, stdout=log)\n"
                  "time.sleep(60)\n")

    def test_a_stage_stops_when_its_supervisor_is_killed(self, tmp_path: Path) -> None:
        flag, log = tmp_path / "flag", tmp_path / "stage.log"
        supervisor = subprocess.Popen([sys.executable, "-c", self.SUPERVISOR, str(flag), str(log), self.STAGE],
                                      cwd=Path(__file__).resolve().parents[3])
        try:
            wait_for(lambda: log.exists() and "watching" in log.read_text())
            assert not flag.exists()  # the supervisor is alive: the stage runs on
            supervisor.kill()
            wait_for(lambda: flag.exists() and flag.read_text())
            assert flag.read_text() == "stopped"
        finally:
            supervisor.kill()
            supervisor.wait()

    def test_a_stage_started_by_hand_has_no_watcher(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv(SUPERVISOR_PID_ENV, raising=False)
        assert stop_with_supervisor(lambda: None) is None
