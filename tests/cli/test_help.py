"""Every command's --help explains it: a description, and every argument and option named."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from streamrec.cli import app

ROOT = typer.main.get_command(app)


def commands(group: object = ROOT, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and sub-command, as the words that call it (groups included)."""
    found = []
    for name, command in group.commands.items():
        found.append((*path, name))
        if hasattr(command, "commands"):  # a group (typer vendors its own click)
            found += commands(command, (*path, name))
    return found


def command_at(path: tuple[str, ...]) -> object:
    command = ROOT
    for name in path:
        command = command.commands[name]
    return command


def test_the_top_level_help_lists_every_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "streamrec", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    for name in ROOT.commands:
        assert name in result.stdout


@pytest.mark.parametrize("path", commands(), ids=" ".join)
def test_help_names_every_argument_and_option(path: tuple[str, ...]) -> None:
    command = command_at(path)
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert command.help, f"{' '.join(path)} has no description"
    assert " ".join(command.help.split("\n")[0].split()) in text
    for param in command.params:
        if getattr(param, "hidden", False):  # a deprecated spelling, kept working, not shown
            continue
        name = param.opts[0] if param.param_type_name == "option" else param.name
        assert getattr(param, "help", None), f"{' '.join(path)} {name}: no help text"
        assert name in text, f"{' '.join(path)}: {name} missing from its --help"
        assert " ".join(param.help.split()[:4]) in text, f"{name}'s help text is not shown"
