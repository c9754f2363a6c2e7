"""Every command explains itself, and `gitopsq --help` stays fast (heavy imports are lazy)."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from gitopsq.cli import main
from tests.helpers import run_cli


def all_commands(group: click.Group, prefix=()):
    for name, command in group.commands.items():
        yield prefix + (name,), command
        if isinstance(command, click.Group):
            yield from all_commands(command, prefix + (name,))


@pytest.mark.parametrize("path, command", list(all_commands(main)), ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_every_command_has_help(path, command):
    assert command.help and len(command.help.strip()) > 20, f"gitopsq {' '.join(path)} needs a help text"
    result = run_cli(*path, "--help")
    assert result.exit_code == 0
    assert "Usage: " in result.output


def test_help_does_not_import_heavy_modules():
    code = (
        "import sys; from gitopsq.cli import main\n"
        "heavy = [m for m in ('jsonschema', 'git', 'libcloud', 'fastapi', 'uvicorn', 'sqlite_utils', 'rich', 'watchdog') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
