"""The 140 real dstack configurations: each validates, or is rejected naming the field.

Each is read where it lived: examples/ files at their path in dstack's repository (the folder
names are written as `__`), the docs' snippets each in a folder of their own, so `repos: [..]`
and `files` resolve as they do for a dstack user.
"""

from __future__ import annotations

import pytest

from gitopsq.spec import SpecError, allowed_fields, load_schema, parse_run
from tests.helpers import COMPAT

FILES = sorted(COMPAT.glob("**/*.y*ml")) if COMPAT.is_dir() else []
pytestmark = pytest.mark.skipif(not FILES, reason=f"the dstack compatibility corpus is not at {COMPAT}")

# Fields gitopsq knows: everything in the schema, supported or marked unsupported.
KNOWN = set(load_schema()["properties"]) | {f for t in ("task", "service", "dev-environment") for f in allowed_fields(t)}


def repo_path(path) -> str:
    if path.parent.name == "examples":
        return "examples/" + path.name.replace("__", "/")
    return f"{path.name.split('.')[0]}/{path.name}"


def check(path):
    try:
        parse_run(path.read_bytes(), path.name, repo_path=repo_path(path))
        return None
    except SpecError as exc:
        return exc.problems


def test_every_file_validates_or_names_the_field():
    valid = 0
    for path in FILES:
        problems = check(path)
        if problems is None:
            valid += 1
            continue
        for problem in problems:
            assert problem.field, f"{path.name}: a problem without a field: {problem}"
            assert problem.line, f"{path.name}: a problem without a line: {problem}"
            assert "internal error" not in problem.message, f"{path.name}: {problem}"
            assert "is not valid under any of the given schemas" not in problem.message, f"{path.name}: vague: {problem}"
            top = problem.field.split(".")[0].split("[")[0]
            # Resources follow dstack's grammar: no dstack resource spec may fail.
            assert not problem.field.startswith("resources."), f"{path.name}: resource spec rejected: {problem}"
            assert top in KNOWN or "unknown field" in problem.message, f"{path.name}: {problem}"
    share = valid / len(FILES)
    print(f"\ndstack compatibility: {valid} of {len(FILES)} configurations validate ({share:.0%}); the rest name an unsupported field")
    assert len(FILES) >= 139  # the README counts 139; the folder holds 140 today
    assert valid >= 70  # 63 before nodes and schedule were accepted
