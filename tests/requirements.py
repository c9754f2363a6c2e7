"""Tests that need a program this machine may lack: skipped with the reason where it is missing,
failed instead where GITOPSQ_REQUIRE (a comma list, set by `.ci/run`) names it, so CI can never
pass by skipping them."""

from __future__ import annotations

import os
import shutil

import pytest


def required(name: str) -> bool:
    """True when GITOPSQ_REQUIRE says this run must have `name`."""
    return name in {t.strip() for t in os.environ.get("GITOPSQ_REQUIRE", "").split(",")}


def unavailable(name: str, message: str) -> None:
    """Skip the test saying why, or fail it where GITOPSQ_REQUIRE names `name`."""
    if required(name):
        pytest.fail(f"{message}; GITOPSQ_REQUIRE says this run must have it")
    pytest.skip(message)


def require(tool: str, why: str, install: str) -> str:
    """The path of `tool`; skips the test when it is missing, or fails it where GITOPSQ_REQUIRE lists it."""
    path = shutil.which(tool)
    if path is None:
        unavailable(tool, f"{tool} is not installed: {why} (install it with {install})")
    return path
