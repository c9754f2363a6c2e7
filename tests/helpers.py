"""Small helpers shared by the tests."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from gitopsq.cli import main

ROOT = Path(__file__).resolve().parent.parent
COMPAT = ROOT.parent / "shared" / "compat" / "dstack"


def run_cli(*args: str, input: str | None = None, env: dict | None = None):
    """Run the gitopsq CLI in-process; returns click's Result (exit_code, output)."""
    return CliRunner().invoke(main, list(args), input=input, env=env, catch_exceptions=False)


def cli_json(*args: str):
    result = run_cli(*args)
    return result.exit_code, json.loads(result.output)
