"""The desired state at one commit: every run file's spec or problems, parsed at most once per blob.

A cache of the previous tree (path -> blob, config, result) lets an unchanged blob skip parsing;
with a base commit the changed paths come from one `git diff-tree`, else from the full tree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Mapping

from gitopsq.config import CONFIG_FILE, RepoConfig, parse_config
from gitopsq.plan import Desired
from gitopsq.runset import duplicate_names
from gitopsq.source import ConfigRepo, Entry
from gitopsq.spec import RunSpec, parse_run
from gitopsq.yamlload import Problem, SpecError

SYMLINK_MODE = "120000"


@dataclass(frozen=True)
class FileRow:
    """One run file of a tree and what parsing it gave (JSON text, as stored)."""

    path: str
    blob: str
    config: str  # blob id of .gitopsq.yml the result was computed with ("" when absent)
    name: str | None
    spec: str | None
    problems: str | None

    def as_dict(self) -> dict:
        return self.__dict__.copy()


@dataclass
class TreeState:
    commit: str
    config: RepoConfig
    files: dict[str, FileRow]  # every run file of the tree (valid or not)
    desired: dict[str, Desired] = field(default_factory=dict)
    problems: dict[str, list[Problem]] = field(default_factory=dict)  # path -> problems (incl. duplicates, config)
    parsed: int = 0  # blobs parsed for this tree: what the cache saved is files - parsed

    @property
    def invalid_files(self) -> set[str]:
        return set(self.problems)

    def all_problems(self) -> list[Problem]:
        return [p for path in sorted(self.problems) for p in self.problems[path]]


def _row_from_result(path: str, blob: str, config_key: str, result: RunSpec | list[Problem]) -> FileRow:
    if isinstance(result, RunSpec):
        return FileRow(path, blob, config_key, result.name, json.dumps(result.to_dict(), sort_keys=True), None)
    return FileRow(path, blob, config_key, None, None, json.dumps([p.as_dict() for p in result]))


def _entries_changed(repo: ConfigRepo, base: str | None, commit: str, cache: Mapping[str, FileRow]) -> dict[str, Entry] | None:
    """The tree at commit, rebuilt from the cache plus one diff; None when a full listing is needed."""
    if not base or not cache:
        return None
    changes = repo.changed(base, commit)
    if changes is None or any(c.path == CONFIG_FILE for c in changes):
        return None
    entries = {path: Entry(path, row.blob, "100644") for path, row in cache.items()}
    for change in changes:
        if change.new_blob is None:
            entries.pop(change.path, None)
        else:
            entries[change.path] = Entry(change.path, change.new_blob, change.new_mode or "100644")
    return entries


def read_tree(repo: ConfigRepo, commit: str, cache: Mapping[str, FileRow] | None = None, base: str | None = None,
              config_blob_hint: str | None = None) -> TreeState:
    """Parse what changed since the cache's tree and return the whole desired state at commit.

    base: the commit the cache describes (enables the one-diff fast path). The cache holds only
    run files, so the fast path keeps the previous config (it only runs when .gitopsq.yml did not change).
    """
    cache = dict(cache or {})
    config_key = next(iter({row.config for row in cache.values()}), None) if cache else None
    entries = _entries_changed(repo, base, commit, cache)
    config_problems: list[Problem] = []
    if entries is None:
        listing = repo.list_files(commit)
        config_entry = listing.get(CONFIG_FILE)
        config_key = config_entry.blob if config_entry else ""
        raw_config = repo.read_blobs([config_entry.blob])[config_entry.blob] if config_entry else None
        try:
            config = parse_config(raw_config)
        except SpecError as exc:
            config, config_problems = RepoConfig(), exc.problems
        entries = {p: e for p, e in listing.items() if config.is_run_path(p)}
    else:
        config = _config_from_cache(repo, commit, config_key)
    return _build(repo, commit, config, config_key or "", entries, cache, config_problems)


def _config_from_cache(repo: ConfigRepo, commit: str, config_key: str | None) -> RepoConfig:
    if not config_key:
        return RepoConfig()
    try:
        return parse_config(repo.read_blobs([config_key])[config_key])
    except SpecError:
        return RepoConfig()


def _build(repo: ConfigRepo, commit: str, config: RepoConfig, config_key: str, entries: Mapping[str, Entry],
           cache: Mapping[str, FileRow], config_problems: list[Problem]) -> TreeState:
    rows: dict[str, FileRow] = {}
    to_parse: dict[str, Entry] = {}
    for path, entry in entries.items():
        if entry.mode == SYMLINK_MODE:
            problem = Problem(path, None, "", "is a symlink; run files must be regular files")
            rows[path] = _row_from_result(path, entry.blob, config_key, [problem])
            continue
        cached = cache.get(path)
        if cached and cached.blob == entry.blob and cached.config == config_key:
            rows[path] = cached
        else:
            to_parse[path] = entry
    blobs = repo.read_blobs({e.blob for e in to_parse.values()}) if to_parse else {}
    for path, entry in to_parse.items():
        try:
            result: RunSpec | list[Problem] = parse_run(blobs[entry.blob], path, config.defaults)
        except SpecError as exc:
            result = exc.problems
        rows[path] = _row_from_result(path, entry.blob, config_key, result)

    state = TreeState(commit, config, rows, parsed=len(to_parse))
    for path, row in rows.items():
        if row.problems is not None:
            state.problems[path] = [Problem(**p) for p in json.loads(row.problems)]
    duplicates = duplicate_names({path: row.name for path, row in rows.items() if row.name})
    for path, problem in duplicates.items():
        state.problems.setdefault(path, []).append(problem)
    for path, row in rows.items():
        if row.name and path not in duplicates:
            state.desired[row.name] = Desired(row.name, path, row.blob, json.loads(row.spec))
    if config_problems:
        state.problems[CONFIG_FILE] = config_problems
    return state


def plan_refs(repo: ConfigRepo, base_ref: str, head_ref: str):
    """What replacing base with head would do, taking every valid run at base as running.

    Returns (base sha, head sha, actions, problems at head).
    """
    from gitopsq.plan import Known, plan
    from gitopsq.source import SourceError

    base, head = repo.resolve(base_ref), repo.resolve(head_ref)
    for ref, sha in ((base_ref, base), (head_ref, head)):
        if sha is None:
            raise SourceError(f"{ref!r} is not a commit of {repo.location}")
    before = read_tree(repo, base)
    after = read_tree(repo, head, before.files, base=base)
    known = {name: Known(name, d.file, d.spec, True, "running") for name, d in before.desired.items()}
    return base, head, plan(after.desired, after.invalid_files, known), after.all_problems()
