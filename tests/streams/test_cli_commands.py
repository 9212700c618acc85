"""The command group itself (no broker): what every ``streamsearch`` command gets without declaring it."""

from __future__ import annotations

import click
from click.testing import CliRunner

from streams.cli import Commands
from streams.exceptions import EXIT_CONFIG, BrokerError, StateConfigError


def test_a_command_added_to_the_group_reports_expected_failures_in_one_line() -> None:
    """A new command declares only its options: the group turns its expected failures into one line."""

    @click.group(cls=Commands)
    def group() -> None:
        pass

    @group.command("fails")
    @click.option("--state", is_flag=True)
    def fails(state: bool) -> None:
        raise StateConfigError("the state dir is another flow's") if state else BrokerError("cannot reach 127.0.0.1:1")

    result = CliRunner().invoke(group, ["fails"])
    assert result.exit_code == 1
    assert result.output.strip() == "streamsearch: error: cannot reach 127.0.0.1:1"
    assert result.exception is None or isinstance(result.exception, SystemExit)
    state = CliRunner().invoke(group, ["fails", "--state"])
    assert state.exit_code == EXIT_CONFIG  # a supervisor does not restart a command that cannot start
    assert "Traceback" not in state.output


def test_every_streamsearch_command_is_wrapped() -> None:
    from streams.cli import main

    for name, command in main.commands.items():
        assert command.callback is not None and getattr(command.callback, "__wrapped__", None) is not None, name
