"""Every command registered on the CLI, now and later, is documented with an example.

The commands are discovered from the Click tree, so a command added by any module is covered
without touching this file: each command's --help must show an `Example` block whose lines are
real `newsletter ...` invocations kept on their own lines (the `\\b` marker), each group must
say in one line what it is for, and every list/show command must take --json.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from pipeline import cli as cli_module
from pipeline.cli import cli
from pipeline.config import PROJECT_ROOT


def walk(
    command: click.Command, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None, f"`newsletter {' '.join((*path, name))}` is listed but cannot be loaded"
            yield from walk(sub, (*path, name))


ALL = list(walk(cli))
COMMANDS = [(p, c) for p, c in ALL if not isinstance(c, click.Group)]
GROUPS = [(p, c) for p, c in ALL if isinstance(c, click.Group) and p]


def ids(items: list[tuple[tuple[str, ...], click.Command]]) -> list[str]:
    return [" ".join(p) for p, _ in items]


def help_text(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(cli, [*path, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=ids(COMMANDS))
def test_every_command_has_an_example(path: tuple[str, ...], command: click.Command) -> None:
    assert (
        command.help and "Example" in command.help
    ), f"`newsletter {' '.join(path)}` has no Example block"
    output = help_text(path)
    after = output.split("Example", 1)[1]
    examples = [
        line.strip() for line in after.splitlines() if line.strip().startswith("newsletter ")
    ]
    assert examples, f"no `newsletter ...` line under Example in:\n{output}"
    assert any(
        " ".join(path) in line for line in examples
    ), f"the example does not run {' '.join(path)}"


@pytest.mark.parametrize(("path", "command"), GROUPS, ids=ids(GROUPS))
def test_every_group_says_what_it_is_for(path: tuple[str, ...], command: click.Command) -> None:
    assert command.get_short_help_str(limit=200).strip(), f"group {' '.join(path)} has no help"


def test_root_help_lists_every_command_with_a_description() -> None:
    output = help_text(())
    commands_part = output.split("Commands:", 1)[1]
    for name in cli.list_commands(click.Context(cli)):
        line = next((row for row in commands_part.splitlines() if row.split()[:1] == [name]), "")
        assert line, f"{name} is missing from `newsletter --help`"
        assert len(line.split()) > 1, f"{name} is listed without a description"


def test_the_root_help_table_says_what_each_command_says_of_itself() -> None:
    # `newsletter --help` prints COMMANDS without importing the commands: it must not drift.
    ctx = click.Context(cli)
    for name, (module, short_help) in cli_module.COMMANDS.items():
        command = cli.get_command(ctx, name)
        assert command is not None, f"{name} is not in pipeline/commands/{module}.py"
        assert command.get_short_help_str(limit=1000) == short_help, name
    loaded = {name for name in cli.commands}
    table = set(cli_module.COMMANDS)
    assert loaded == table, f"commands missing from the COMMANDS table: {loaded - table}"


def test_root_help_imports_no_command_module() -> None:
    code = ("import sys; from click.testing import CliRunner; from pipeline.cli import cli; "
            "CliRunner().invoke(cli, ['--help']); "
            "print(sorted(m for m in sys.modules if m.startswith(('pipeline.commands.', 'sqlalchemy', 'flask', 'jinja2'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


LISTING = [
    (p, c) for p, c in COMMANDS if p[-1] in ("list", "show") or p[-1].startswith(("list-", "show-"))
]


@pytest.mark.parametrize(("path", "command"), LISTING, ids=ids(LISTING))
def test_list_and_show_commands_take_json(path: tuple[str, ...], command: click.Command) -> None:
    assert any(
        "--json" in param.opts for param in command.params if isinstance(param, click.Option)
    )


def _asks(command: click.Command) -> bool:
    source = inspect.getsource(inspect.unwrap(command.callback)) if command.callback else ""
    return "click.confirm(" in source or "click.prompt(" in source or "_ask(" in source


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=ids(COMMANDS))
def test_every_command_that_asks_takes_y_and_yes(path: tuple[str, ...], command: click.Command) -> None:
    yes = [p for p in command.params if "--yes" in p.opts]
    if _asks(command):
        assert yes, f"`newsletter {' '.join(path)}` asks a question but has no --yes"
    if yes:
        assert "-y" in yes[0].opts, f"`newsletter {' '.join(path)}` takes --yes but not -y"


def test_a_mistyped_command_is_told_what_it_may_have_meant() -> None:
    """Commands load only when they run, so Click had none to suggest from at the top level. In a
    process of its own, as a user runs it: in this one the other tests have loaded them all."""
    for typed, meant in (("sned", "'send'"), ("essay", "'essays'"), ("subscriber", "'subscribers'")):
        result = subprocess.run([sys.executable, "-c", "from pipeline.cli import main; main()", typed],
                                capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=60)
        assert result.returncode == 2 and f"Did you mean {meant}" in result.stderr.replace("one of: ", ""), \
            result.stderr
