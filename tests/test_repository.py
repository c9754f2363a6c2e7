"""The repository itself: no build output or downloads committed, and a lean container build context."""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers import ROOT

ARCHIVES = (".whl", ".tar.gz", ".tgz", ".zip", ".egg", ".tar", ".gz", ".xz", ".bz2")


def _tracked() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout (an unpacked source archive)")
    return [p.decode("utf-8", "replace") for p in out.split(b"\0") if p]


def test_no_wheels_or_archives_are_committed():
    tracked = _tracked()
    assert [p for p in tracked if p.endswith(ARCHIVES)] == []


def test_tracked_files_are_small():
    # Source, docs, schemas and test data: nothing near a megabyte.
    big = [(p, (ROOT / p).stat().st_size) for p in _tracked() if (ROOT / p).is_file() and (ROOT / p).stat().st_size > 512 * 1024]
    assert big == []


def test_dockerignore_keeps_build_output_out_of_the_image():
    lines = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")}
    for needed in (".git", ".venv*", "*.whl", "*.tar.gz", "bench/out*", "**/__pycache__"):
        assert needed in lines, needed
