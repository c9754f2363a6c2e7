"""`gitopsq validate`: exit codes, formats, and errors that name the file, line and field."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.helpers import ROOT, cli_json, run_cli

INVALID = sorted((ROOT / "tests" / "invalid").glob("*.yml"))
EXPECT = re.compile(rb"^# expect: (\S+) (\S+): (.+)$")


def test_examples_repo_validates():
    result = run_cli("validate", str(ROOT / "examples-repo"))
    assert result.exit_code == 0, result.output
    assert "5 run file(s) checked: 5 valid, 0 invalid" in result.output


def test_examples_validate_against_the_schema_alone():
    # The schema must stand on its own for editors: a plain jsonschema call, no gitopsq code.
    schema = json.loads((ROOT / "schemas" / "run.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    runs = sorted((ROOT / "examples-repo" / "runs").glob("**/*.yml"))
    assert len(runs) >= 5
    for path in runs:
        errors = list(validator.iter_errors(yaml.safe_load(path.read_text())))
        assert errors == [], f"{path}: {[e.message for e in errors]}"


def test_repos_and_files_resolve_from_the_config_repo_wherever_validate_runs(tmp_path: Path, monkeypatch):
    """Observed: `gitopsq validate` of a repo named from another folder resolved `repos: [.]` from
    the current folder, and called the run file's own folder outside the config repository."""
    import os

    repo = tmp_path / "repo"
    (repo / "runs" / "train").mkdir(parents=True)
    (repo / ".gitopsq.yml").write_text('paths: ["runs/**/*.yml"]\n')
    (repo / "runs" / "train" / "train.yml").write_text(
        "type: task\nrepos: [.]\nfiles: ['../../data/points.csv:points.csv']\ncommands: [python train.py]\n")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    for given in (str(repo), os.path.relpath(repo), str(repo / "runs" / "train" / "train.yml")):
        result = run_cli("validate", given)
        assert result.exit_code == 0, result.output
    monkeypatch.chdir(repo / "runs")
    assert run_cli("validate", "train/train.yml").exit_code == 0
    (repo / "runs" / "train" / "train.yml").write_text("type: task\nfiles: ['../../../x.csv']\ncommands: [echo]\n")
    result = run_cli("validate", "train/train.yml")
    assert result.exit_code == 1 and "train/train.yml:2: files[0]: '../../../x.csv' leaves the config repository" in result.output


def test_invalid_corpus_is_large_enough():
    assert len(INVALID) >= 30


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_file_names_line_and_field(path: Path):
    line, field, message = EXPECT.match(path.read_bytes().split(b"\n", 1)[0]).groups()
    code, out = cli_json("validate", "--format", "json", str(path))
    assert code == 1
    errors = out["errors"]
    assert errors, "an invalid file must report at least one error"
    expected_field = "" if field == b"-" else field.decode()
    matching = [
        e for e in errors
        if e["field"] == expected_field
        and (line == b"-" or e["line"] == int(line))
        and message.decode() in e["message"]
        and e["file"].endswith(path.name)
    ]
    assert matching, f"expected {line.decode()} {expected_field}: {message.decode()!r}, got {errors}"


def test_too_large_file(tmp_path: Path):
    big = tmp_path / "big.yml"
    big.write_text("type: task\ncommands:\n" + "  - echo xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n" * 6000)
    code, out = cli_json("validate", "--format", "json", str(big))
    assert code == 1
    assert "limited to 256 KiB" in out["errors"][0]["message"]


def test_a_huge_file_is_refused_with_its_real_size(tmp_path: Path):
    with open(tmp_path / "huge.yml", "wb") as handle:
        handle.truncate(300 * 1024 * 1024)  # sparse: costs no disk
    code, out = cli_json("validate", "--format", "json", str(tmp_path / "huge.yml"))
    assert code == 1
    assert out["errors"][0]["message"] == "file is 307200 KiB; run files are limited to 256 KiB"


def test_text_format_is_file_line_field_message(tmp_path: Path):
    (tmp_path / "a.yml").write_text("type: task\ncommands: [echo]\nretry:\n  duration: forever\n")
    result = run_cli("validate", str(tmp_path / "a.yml"))
    assert result.exit_code == 1
    assert f"{tmp_path / 'a.yml'}:4: retry.duration: 'forever' is not a duration (use 30m, 1h, 2d or off)" in result.output


def test_github_format_annotations(tmp_path: Path):
    (tmp_path / "a.yml").write_text("type: task\ncommands: [echo]\npriority: 101\n")
    result = run_cli("validate", "--format", "github", str(tmp_path / "a.yml"))
    assert result.exit_code == 1
    line = result.output.strip().splitlines()[0]
    assert line.startswith("::error file=")
    assert ",line=3," in line
    assert line.endswith("::priority: 101 is not a priority (use an integer from 0 to 100)")


def test_duplicate_names_are_an_error_on_each_file(tmp_path: Path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "a.yml").write_text("type: task\nname: same\ncommands: [echo a]\n")
    (tmp_path / "runs" / "b.yml").write_text("type: task\nname: same\ncommands: [echo b]\n")
    (tmp_path / "runs" / "c.yml").write_text("type: task\ncommands: [echo c]\n")
    code, out = cli_json("validate", "--format", "json", str(tmp_path))
    assert code == 1
    files = sorted(Path(e["file"]).name for e in out["errors"])
    assert files == ["a.yml", "b.yml"]
    assert all(e["field"] == "name" and "'same'" in e["message"] for e in out["errors"])
    assert [Path(v["file"]).name for v in out["valid"]] == ["c.yml"]


def test_folder_uses_paths_and_defaults_of_gitopsq_yml(tmp_path: Path):
    (tmp_path / ".gitopsq.yml").write_text("paths: ['runs/*.yml']\ndefaults:\n  priority: 7\n")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "a.yml").write_text("type: task\ncommands: [echo a]\n")
    (tmp_path / "notes.yml").write_text("this: is not a run file\n")
    (tmp_path / ".github").mkdir()
    (tmp_path / ".github" / "ci.yml").write_text("on: push\n")
    code, out = cli_json("validate", "--format", "json", str(tmp_path))
    assert code == 0, out
    assert [Path(v["file"]).name for v in out["valid"]] == ["a.yml"]


def test_bad_default_is_reported_on_gitopsq_yml(tmp_path: Path):
    (tmp_path / ".gitopsq.yml").write_text("defaults:\n  retry:\n    duration: someday\n")
    (tmp_path / "a.yml").write_text("type: task\ncommands: [echo a]\n")
    code, out = cli_json("validate", "--format", "json", str(tmp_path))
    assert code == 1
    assert out["errors"][0]["file"] == ".gitopsq.yml"
    assert out["errors"][0]["field"] == "retry.duration"


def test_missing_path(tmp_path: Path):
    result = run_cli("validate", str(tmp_path / "nope.yml"))
    assert result.exit_code == 1
    assert "no such file or folder" in result.output


def test_installed_command_finds_its_schema(tmp_path: Path):
    # The console script of this environment, run from elsewhere: it must find the schema
    # shipped inside the installed package, not the source tree.
    import subprocess
    import sys

    script = Path(sys.executable).parent / "gitopsq"
    result = subprocess.run([str(script), "validate", str(ROOT / "examples-repo")], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 valid, 0 invalid" in result.stderr


def test_a_file_name_that_is_not_utf8_is_reported_escaped(tmp_path: Path, monkeypatch):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "ok.yml").write_text("type: task\ncommands: [echo]\n")
    with open(bytes(runs) + b"/caf\xe9.yml", "wb") as handle:
        handle.write(b"type: task\ncommands: [echo]\n")
    monkeypatch.chdir(tmp_path)
    for fmt in ("text", "github"):
        result = run_cli("validate", "--format", fmt, ".")
        assert result.exit_code == 1
        assert "runs/caf\\351.yml" in result.output and "not UTF-8" in result.output
    code, out = cli_json("validate", "--format", "json", ".")
    assert code == 1
    assert [(e["file"], e["line"], e["field"]) for e in out["errors"]] == [("runs/caf\\351.yml", None, "")]
    assert [v["file"] for v in out["valid"]] == ["runs/ok.yml"]
    # named on the command line: the same problem, the file is not read
    code, out = cli_json("validate", "--format", "json", "runs/caf\udce9.yml")
    assert [(e["file"], e["field"]) for e in out["errors"]] == [("runs/caf\\351.yml", "")]
    # a folder or a missing file whose name is not UTF-8: reported escaped, never printed raw
    result = run_cli("validate", "runs/gon\udce9.yml")
    assert result.exit_code == 1 and "runs/gon\\351.yml: no such file or folder" in result.output


MANIFEST = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 2\n"
OWN_ERROR = "type: task\ncommands: [echo]\nretry:\n  duration: forever\n"


def test_a_file_that_is_not_a_run_is_blamed_on_itself_inside_and_outside_a_config_repo(tmp_path: Path, monkeypatch):
    from gitopsq.controller import Controller
    from gitopsq.source import ConfigRepo
    from gitopsq.store import Store
    from tests.fakes import Clock, FakeProvider
    from tests.helpers import GitRepo

    repo = GitRepo(tmp_path / "repo")
    repo.write(".gitopsq.yml", (ROOT / "examples-repo" / ".gitopsq.yml").read_text())  # it has defaults
    repo.write("runs/deploy.yml", MANIFEST)
    repo.write("runs/own.yml", OWN_ERROR)
    repo.commit()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "deploy.yml").write_text(MANIFEST)
    (outside / "own.yml").write_text(OWN_ERROR)

    def found(errors):
        return sorted((Path(e["file"]).name, e["line"], e["field"], e["message"]) for e in errors)

    monkeypatch.chdir(outside)
    _, alone = cli_json("validate", "--format", "json", "deploy.yml", "own.yml")
    monkeypatch.chdir(repo.path)
    _, inside = cli_json("validate", "--format", "json", ".")
    _, named = cli_json("validate", "--format", "json", "runs/deploy.yml", "runs/own.yml")
    assert found(inside["errors"]) == found(named["errors"]) == found(alone["errors"]) == [
        ("deploy.yml", 1, "type", "required field is missing"),
        ("own.yml", 4, "retry.duration", "'forever' is not a duration (use 30m, 1h, 2d or off)"),
    ]
    store = Store(tmp_path / "state.db")
    with ConfigRepo(str(repo.path)) as source:
        Controller(store, FakeProvider(), source, clock=Clock()).sync_git()
    assert sorted((p["file"], p["line"], p["field"], p["message"]) for p in store.file_problems()) == sorted(
        (e["file"], e["line"], e["field"], e["message"]) for e in inside["errors"])
    store.close()


def test_a_fifo_is_reported_not_read(tmp_path: Path):
    import os

    os.mkfifo(tmp_path / "x.yml")  # opening it to read would wait for a writer forever
    code, out = cli_json("validate", "--format", "json", str(tmp_path))
    assert code == 1 and out["errors"][0]["message"] == "is not a regular file"


@pytest.mark.parametrize("target", ["/dev/zero", "../real.yml"])
def test_a_linked_config_is_refused_not_followed(tmp_path: Path, monkeypatch, target):
    # The controller refuses a .gitopsq.yml that git holds as a symlink; validate says the same,
    # and never reads what it points to (/dev/zero would never end).
    (tmp_path / "real.yml").write_text("paths: ['runs/*.yml']\n")
    repo = tmp_path / "repo"
    (repo / "runs").mkdir(parents=True)
    (repo / ".gitopsq.yml").symlink_to(target)
    (repo / "runs" / "a.yml").write_text("type: task\ncommands: [x]\n")
    monkeypatch.chdir(repo)
    code, out = cli_json("validate", "--format", "json", ".")
    assert code == 1
    assert out["errors"] == [{"file": ".gitopsq.yml", "line": None, "field": "",
                              "message": "is a symlink; .gitopsq.yml must be a regular file"}]


def test_a_config_that_is_not_a_regular_file_is_refused(tmp_path: Path, monkeypatch):
    import os

    os.mkfifo(tmp_path / ".gitopsq.yml")
    monkeypatch.chdir(tmp_path)
    code, out = cli_json("validate", "--format", "json", ".")
    assert code == 1
    assert [e["message"] for e in out["errors"]] == ["is not a regular file; .gitopsq.yml must be a regular file"]
