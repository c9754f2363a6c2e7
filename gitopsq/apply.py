"""`gitopsq apply`: put one run file into the config repo and commit it.

The file is validated with the repo's defaults first; `-Q` (queue until it fits) overrides
`retry` whatever the file says. It goes to the file that already defines that run name, else
to runs/<name>.yml. No commit when the content is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from gitopsq.config import CONFIG_FILE, parse_config
from gitopsq.localfiles import collect
from gitopsq.plan import field_changes
from gitopsq.spec import RunSpec, parse_run
from gitopsq.yamlload import Problem, SpecError

QUEUE_RETRY = {"on_events": ["no-capacity"], "duration": "off"}


@dataclass
class Applied:
    path: str  # relative to the repo
    spec: RunSpec
    content: bytes
    changes: dict
    commit: str | None  # None when nothing changed


def _target(repo_dir: Path, name: str) -> tuple[str, RunSpec | None]:
    """The file that defines `name` in the working tree, else runs/<name>.yml."""
    found = collect([str(repo_dir)])
    for display, raw in found.files.items():
        relative = found.repo_paths[display]
        try:
            spec = parse_run(raw, display, found.configs[display].defaults, repo_path=relative)
        except SpecError:
            continue
        if spec.name == name:
            return relative, spec
    return f"runs/{name}.yml", None


def apply_file(file: Path, repo_dir: Path, queue: bool, push: bool) -> Applied:
    import git  # lazily: GitPython is slow to import

    raw = file.read_bytes()
    config_path = repo_dir / CONFIG_FILE
    config = parse_config(config_path.read_bytes() if config_path.exists() else None)
    spec = parse_run(raw, str(file), config.defaults)  # raises SpecError, naming the file
    if queue:
        data = yaml.load(raw, Loader=yaml.CSafeLoader)
        data["retry"] = dict(QUEUE_RETRY)
        data.setdefault("name", spec.name)
        raw = yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode()
        spec = parse_run(raw, str(file), config.defaults)
    try:
        repo = git.Repo(repo_dir)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise SpecError([Problem(str(repo_dir), None, "", "is not a git repository (create one with gitopsq init)")]) from None
    relative, old = _target(repo_dir, spec.name)
    target = repo_dir / relative
    if not config.is_run_path(relative):
        raise SpecError([Problem(relative, None, "", f"is outside the run paths of {CONFIG_FILE} ({', '.join(config.paths)})")])
    changes = field_changes(old.to_dict() if old else None, spec.to_dict())
    if target.exists() and target.read_bytes() == raw:
        return Applied(relative, spec, raw, {}, None)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(raw)
    repo.git.add("--", relative)
    if not repo.git.diff("--cached", "--name-only", "--", relative):
        return Applied(relative, spec, raw, {}, None)
    what = "new run" if old is None else (", ".join(sorted(changes)) + " changed" if changes else "file rewritten")
    repo.git.commit("-m", f"gitopsq apply {spec.name}: {what}", "--", relative)
    sha = repo.head.commit.hexsha
    if push:
        repo.git.push()
    return Applied(relative, spec, raw, changes, sha)
