"""The desired state at one commit: every run file's spec or problems, parsed at most once per blob.

A cache of the previous tree (path -> blob, config, result) lets an unchanged blob skip parsing;
with a base commit the changed paths come from one `git diff-tree`, else from the full tree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Mapping

from gitopsq.config import CONFIG_FILE, RepoConfig, bad_name_problem, parse_config
from gitopsq.plan import Desired
from gitopsq.runset import duplicate_problem
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
    valid: dict[str, str] = field(default_factory=dict)  # run name -> path, for valid files claiming a name alone
    problems: dict[str, list[Problem]] = field(default_factory=dict)  # path -> problems (incl. duplicates, config)
    parsed: int = 0  # blobs parsed for this tree: what the cache saved is files - parsed
    touched: set[str] = field(default_factory=set)  # paths added, changed or removed since the cache's tree
    claims: dict[str, tuple[str, ...]] = field(default_factory=dict)  # run name -> the valid files naming it

    @property
    def invalid_files(self) -> set[str]:
        return set(self.problems)

    def desired_of(self, names) -> dict[str, Desired]:
        """The desired runs among `names`, specs decoded only for them (a commit touches a few of 10,000)."""
        out = {}
        for name in names:
            path = self.valid.get(name)
            if path is not None:
                row = self.files[path]
                out[name] = Desired(name, path, row.blob, json.loads(row.spec))
        return out

    @property
    def desired(self) -> dict[str, Desired]:
        return self.desired_of(self.valid)

    def touched_names(self, cache: Mapping[str, FileRow]) -> set[str]:
        """Run names a touched path claimed before or claims now."""
        names = set()
        for path in self.touched:
            for row in (cache.get(path), self.files.get(path)):
                if row is not None and row.name:
                    names.add(row.name)
        return names

    def all_problems(self) -> list[Problem]:
        return [p for path in sorted(self.problems) for p in self.problems[path]]


def _row_from_result(path: str, blob: str, config_key: str, result: RunSpec | list[Problem]) -> FileRow:
    if isinstance(result, RunSpec):
        return FileRow(path, blob, config_key, result.name, json.dumps(result.to_dict(), sort_keys=True), None)
    return FileRow(path, blob, config_key, None, None, json.dumps([p.as_dict() for p in result]))


def read_tree(repo: ConfigRepo, commit: str, cache: Mapping[str, FileRow] | None = None, base: str | None = None,
              previous: TreeState | None = None) -> TreeState:
    """Parse what changed since the cache's tree and return the whole desired state at commit.

    base: the commit the cache describes. Then one `git diff-tree` says which paths changed and
    the rest of the tree is the cache (unless .gitopsq.yml changed: its paths and defaults apply
    to every file, so the whole tree is listed and compared). previous: the state the cache came
    from, if at hand: its name index is then patched for the changed paths instead of rebuilt.
    """
    if previous is not None:
        cache = previous.files
    cache = cache or {}
    config_key = next(iter(cache.values())).config if cache else None  # one config for the whole tree
    changes = repo.changed(base, commit) if base and cache else None
    if changes is not None and not any(c.path == CONFIG_FILE for c in changes):
        config, config_problems = _config_or_problems(repo, config_key)
        rows = dict(cache)
        entries: dict[str, Entry] = {}
        removed = set()
        for change in changes:
            if not config.is_run_path(change.path):
                continue
            if change.new_blob is None:
                if rows.pop(change.path, None) is not None:
                    removed.add(change.path)
            else:
                entries[change.path] = Entry(change.path, change.new_blob, change.new_mode or "100644", change.utf8_name)
        return _build(repo, commit, config, config_key, rows, entries, cache, config_problems, removed, previous)
    listing = repo.list_files(commit)
    config_entry = listing.get(CONFIG_FILE)
    config_key = config_entry.blob if config_entry else ""
    config, config_problems = _config_or_problems(repo, config_key)
    entries = {p: e for p, e in listing.items() if config.is_run_path(p)}
    removed = {p for p in cache if p not in entries}
    return _build(repo, commit, config, config_key, {}, entries, cache, config_problems, removed, None)


_configs: dict[str, RepoConfig] = {}  # .gitopsq.yml by blob id: the same blob always reads the same


def _config(repo: ConfigRepo, blob: str | None) -> RepoConfig:
    """The config repo's settings from the blob of .gitopsq.yml ("" or None: absent). Raises SpecError."""
    if not blob:
        return RepoConfig()
    if blob not in _configs:
        if len(_configs) > 16:
            _configs.clear()
        _configs[blob] = parse_config(repo.read_blobs([blob])[blob])
    return _configs[blob]


def _config_or_problems(repo: ConfigRepo, blob: str | None) -> tuple[RepoConfig, list[Problem]]:
    """A broken .gitopsq.yml is reported, and the defaults apply meanwhile."""
    try:
        return _config(repo, blob), []
    except SpecError as exc:
        return RepoConfig(), exc.problems


def _build(repo: ConfigRepo, commit: str, config: RepoConfig, config_key: str, rows: dict[str, FileRow],
           entries: Mapping[str, Entry], cache: Mapping[str, FileRow], config_problems: list[Problem],
           removed: set[str], previous: TreeState | None) -> TreeState:
    """rows: the files known unchanged; entries: the files to take from git (reused from the cache
    when their blob and config are the same, else parsed)."""
    to_parse: dict[str, Entry] = {}
    for path, entry in entries.items():
        refused = _refused(entry)
        if refused is not None:  # told without reading the blob
            rows[path] = _row_from_result(path, entry.blob, config_key, [refused])
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

    touched = {p for p in entries if cache.get(p) is not rows.get(p)} | removed
    state = TreeState(commit, config, rows, parsed=len(to_parse), touched=touched)
    if previous is None:
        _index_all(state)
    else:
        _index_changes(state, previous, cache)
    state.problems.pop(CONFIG_FILE, None)
    if config_problems:
        state.problems[CONFIG_FILE] = config_problems
    return state


def _refused(entry: Entry) -> Problem | None:
    """Why a file in `paths` cannot be a run file whatever it holds, or None."""
    if not entry.utf8_name:
        return bad_name_problem(entry.path)
    if entry.mode == SYMLINK_MODE:
        return Problem(entry.path, None, "", "is a symlink; run files must be regular files")
    return None


def _row_problems(row: FileRow) -> list[Problem]:
    return [Problem(**p) for p in json.loads(row.problems)]


def _index_all(state: TreeState) -> None:
    """Which files name which runs, which are valid, what is wrong: over the whole tree."""
    claims: dict[str, list[str]] = {}
    for path, row in state.files.items():
        if row.name:
            claims.setdefault(row.name, []).append(path)
        elif row.problems is not None:
            state.problems[path] = _row_problems(row)
    for name in claims:
        _settle(state, name, tuple(sorted(claims[name])))


def _index_changes(state: TreeState, previous: TreeState, cache: Mapping[str, FileRow]) -> None:
    """The previous tree's index, patched for the touched paths: a commit costs what it touched."""
    state.claims, state.valid, state.problems = dict(previous.claims), dict(previous.valid), dict(previous.problems)
    names = set()
    for path in state.touched:
        old, new = cache.get(path), state.files.get(path)
        state.problems.pop(path, None)
        if old is not None and old.name:
            names.add(old.name)
            state.claims[old.name] = tuple(p for p in state.claims.get(old.name, ()) if p != path)
        if new is not None and new.name:
            names.add(new.name)
            state.claims[new.name] = tuple(sorted({*state.claims.get(new.name, ()), path}))
        elif new is not None and new.problems is not None:
            state.problems[path] = _row_problems(new)
    for name in names:
        _settle(state, name, state.claims.get(name, ()))


def _settle(state: TreeState, name: str, paths: tuple[str, ...]) -> None:
    """A name claimed by one valid file is a desired run; by two or more, an error on each."""
    if paths:
        state.claims[name] = paths
    else:
        state.claims.pop(name, None)
    if len(paths) == 1:
        state.valid[name] = paths[0]
        state.problems.pop(paths[0], None)
    else:
        state.valid.pop(name, None)
        for path in paths:
            state.problems[path] = [duplicate_problem(path, name, paths)]


def plan_refs(repo: ConfigRepo, base_ref: str, head_ref: str):
    """What replacing base with head would do, taking every valid run at base as running.

    Returns (base sha, head sha, actions, problems at head).
    """
    from gitopsq.plan import Known, held, plan
    from gitopsq.source import SourceError

    base, head = repo.resolve(base_ref), repo.resolve(head_ref)
    for ref, sha in ((base_ref, base), (head_ref, head)):
        if sha is None:
            raise SourceError(f"{ref!r} is not a commit of {repo.location}")
    before = read_tree(repo, base)
    after = read_tree(repo, head, before.files, base=base)
    known = {name: Known(name, d.file, d.spec, True, "running") for name, d in before.desired.items()}
    desired = after.desired
    stuck = held(desired, after.invalid_files, known)
    problems = after.all_problems() + [Problem(desired[n].file, 1, "name", why) for n, why in sorted(stuck.items())]
    return base, head, plan(desired, after.invalid_files, known), problems
