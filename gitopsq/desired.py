"""The desired state at one commit: every run file's spec or problems, parsed at most once per blob.

A cache of the previous tree (path -> blob, config, result) lets an unchanged blob skip parsing;
with a base commit the changed paths come from one `git diff-tree`, else from the full tree.

A broken .gitopsq.yml changes no run: the last valid one stays in force (run files changed meanwhile
are read with it) and the broken one's problems are shown. With no valid one ever, the tree is
`blocked`: nothing is reconciled until it is fixed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

from gitopsq.config import (CONFIG_FILE, RepoConfig, bad_name_problem, config_not_a_file_problem, not_a_file_problem,
                            parse_config)
from gitopsq.plan import Desired
from gitopsq.runset import duplicate_problem
from gitopsq.source import SUBMODULE_MODE, ConfigRepo, Entry
from gitopsq.spec import RunSpec, parse_run
from gitopsq.yamlload import MAX_FILE_BYTES, Problem, SpecError, too_large

SYMLINK_MODE = "120000"


@dataclass(frozen=True, slots=True)
class FileRow:
    """One run file of a tree and what parsing it gave (JSON text, as stored)."""

    path: str
    blob: str
    config: str  # blob id of .gitopsq.yml the result was computed with ("" when absent)
    name: str | None
    spec: str | None  # None for a valid file (name set) too, once its text is in the store: TreeState.stored_specs
    problems: str | None

    def as_dict(self) -> dict:
        return {"path": self.path, "blob": self.blob, "config": self.config, "name": self.name, "spec": self.spec,
                "problems": self.problems}


@dataclass(frozen=True)
class AppliedConfig:
    """A valid .gitopsq.yml: its blob id ("" when the repo has none), its text, and what it says."""

    key: str
    text: str
    config: RepoConfig

    @classmethod
    def from_text(cls, key: str, text: str) -> AppliedConfig | None:
        """Back from the store; None if it no longer parses (a newer gitopsq may be stricter)."""
        try:
            return cls(key, text, parse_config(text.encode() if key else None))
        except SpecError:
            return None


NO_CONFIG = AppliedConfig("", "", RepoConfig())
KEPT = "not applied: the last valid configuration stays in force until this file is fixed"
NEVER_VALID = "no valid configuration has been applied yet: nothing is reconciled until this file is fixed"


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
    applied: AppliedConfig | None = None  # the config the files were read with; None: blocked
    config_entry: Entry | None = None  # .gitopsq.yml as it is at this commit (valid or not)
    # paths -> their spec texts, for the valid rows that no longer hold theirs (see forget_spec_texts)
    stored_specs: Callable[[list[str]], dict[str, str]] | None = None

    @property
    def blocked(self) -> bool:
        """No valid .gitopsq.yml ever: nothing may be reconciled from this tree."""
        return self.applied is None

    @property
    def invalid_files(self) -> set[str]:
        return set(self.problems)

    def desired_of(self, names) -> dict[str, Desired]:
        """The desired runs among `names`, specs decoded only for them (a commit touches a few of 10,000)."""
        paths = {name: self.valid[name] for name in names if name in self.valid}
        elsewhere = [path for path in paths.values() if self.files[path].spec is None]
        texts = self.stored_specs(elsewhere) if elsewhere else {}
        out = {}
        for name, path in paths.items():
            row = self.files[path]
            out[name] = Desired(name, path, row.blob, json.loads(row.spec if row.spec is not None else texts[path]))
        return out

    def forget_spec_texts(self) -> None:
        """The store now holds the spec texts of the rows this tree touched: they drop theirs, and
        desired_of reads the few it needs through stored_specs. A daemon holding 10,000 runs keeps
        their names and blob ids, not 10,000 texts."""
        for path in self.touched:
            row = self.files.get(path)
            if row is not None and row.spec is not None:
                self.files[path] = replace(row, spec=None)

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
              previous: TreeState | None = None, last_good: AppliedConfig | None = None) -> TreeState:
    """Parse what changed since the cache's tree and return the whole desired state at commit.

    base: the commit the cache describes. Then one `git diff-tree` says which paths changed and
    the rest of the tree is the cache (unless the config in force changed: its paths and defaults
    apply to every file, so the whole tree is listed and compared). previous: the state the cache
    came from, if at hand: its name index is then patched for the changed paths instead of rebuilt.
    last_good: the config in force while .gitopsq.yml is broken (default: previous's).
    """
    if previous is not None:
        cache = previous.files
        last_good = last_good or previous.applied
    cache = cache or {}
    cache_key = next(iter(cache.values())).config if cache else None  # one config for the whole tree
    changes = repo.changed(base, commit) if base and cache else None
    if changes is not None and not any(c.path == CONFIG_FILE for c in changes):
        # .gitopsq.yml is as it was at base
        config_entry = previous.config_entry if previous is not None else repo.entry(commit, CONFIG_FILE)
        applied, config_problems = _in_force(repo, config_entry, last_good)
        if applied is not None and applied.key == cache_key:
            rows = dict(cache)
            entries: dict[str, Entry] = {}
            removed = set()
            for change in changes:
                if not applied.config.is_run_path(change.path):
                    continue
                if change.new_blob is None:
                    if rows.pop(change.path, None) is not None:
                        removed.add(change.path)
                else:
                    entries[change.path] = Entry(change.path, change.new_blob, change.new_mode or "100644", change.utf8_name)
            return _build(repo, commit, applied, config_entry, rows, entries, cache, config_problems, removed, previous)
    listing = repo.list_files(commit)
    config_entry = listing.get(CONFIG_FILE)
    applied, config_problems = _in_force(repo, config_entry, last_good)
    if applied is None:
        return TreeState(commit, RepoConfig(), {}, problems={CONFIG_FILE: config_problems}, config_entry=config_entry)
    entries = {p: e for p, e in listing.items() if applied.config.is_run_path(p)}
    removed = {p for p in cache if p not in entries}
    return _build(repo, commit, applied, config_entry, {}, entries, cache, config_problems, removed, None)


_configs: dict[str, AppliedConfig | list[Problem]] = {}  # .gitopsq.yml by blob id: the same blob always reads the same


def read_config(repo: ConfigRepo, entry: Entry | None) -> AppliedConfig | list[Problem]:
    """The config repo's settings from the entry of .gitopsq.yml (None: absent), or its problems."""
    if entry is None:
        return NO_CONFIG
    if entry.mode in (SYMLINK_MODE, SUBMODULE_MODE):
        return [config_not_a_file_problem(CONFIG_FILE, "a symlink" if entry.mode == SYMLINK_MODE else "a submodule entry")]
    if entry.blob not in _configs:
        if len(_configs) > 16:
            _configs.clear()
        _configs[entry.blob] = _parse_config_blob(repo, entry)
    return _configs[entry.blob]


def _parse_config_blob(repo: ConfigRepo, entry: Entry) -> AppliedConfig | list[Problem]:
    size = entry.size if entry.size is not None else repo.blob_sizes([entry.blob])[entry.blob]
    if size > MAX_FILE_BYTES:
        return [too_large(CONFIG_FILE, size)]  # refused unread, like a run file
    raw = repo.read_blobs([entry.blob])[entry.blob]
    try:
        config = parse_config(raw)  # first: it refuses text that is not UTF-8
    except SpecError as exc:
        return exc.problems
    return AppliedConfig(entry.blob, raw.decode("utf-8"), config)


def _in_force(repo: ConfigRepo, entry: Entry | None, last_good: AppliedConfig | None) -> tuple[AppliedConfig | None, list[Problem]]:
    """The config to read run files with, and the problems of .gitopsq.yml.

    A broken one is reported and the last valid one applies meanwhile, so no run changes because
    of it; with none ever valid, None: nothing is reconciled.
    """
    found = read_config(repo, entry)
    if isinstance(found, AppliedConfig):
        return found, []
    return last_good, found + [Problem(CONFIG_FILE, None, "", KEPT if last_good else NEVER_VALID)]


def _build(repo: ConfigRepo, commit: str, applied: AppliedConfig, config_entry: Entry | None, rows: dict[str, FileRow],
           entries: Mapping[str, Entry], cache: Mapping[str, FileRow], config_problems: list[Problem],
           removed: set[str], previous: TreeState | None) -> TreeState:
    """rows: the files known unchanged; entries: the files to take from git (reused from the cache
    when their blob and config are the same, else parsed)."""
    config, config_key = applied.config, applied.key
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
    _refuse_too_large(repo, to_parse, rows, config_key)
    blobs = repo.read_blobs({e.blob for e in to_parse.values()}) if to_parse else {}
    for path, entry in to_parse.items():
        try:
            result: RunSpec | list[Problem] = parse_run(blobs[entry.blob], path, config.defaults)
        except SpecError as exc:
            result = exc.problems
        rows[path] = _row_from_result(path, entry.blob, config_key, result)

    touched = {p for p in entries if cache.get(p) is not rows.get(p)} | removed
    state = TreeState(commit, config, rows, parsed=len(to_parse), touched=touched, applied=applied, config_entry=config_entry)
    if previous is None:
        _index_all(state)
    else:
        _index_changes(state, previous, cache)
    state.problems.pop(CONFIG_FILE, None)
    if config_problems:
        state.problems[CONFIG_FILE] = config_problems
    return state


def _refuse_too_large(repo: ConfigRepo, to_parse: dict[str, Entry], rows: dict[str, FileRow], config_key: str) -> None:
    """Take files over the size limit out of to_parse, as problems: a 300 MB blob is never read.

    A full listing gave every size; a diff gives none, so the few changed blobs are asked for theirs.
    """
    unknown = {e.blob for e in to_parse.values() if e.size is None}
    sizes = repo.blob_sizes(unknown) if unknown else {}
    for path, entry in list(to_parse.items()):
        size = entry.size if entry.size is not None else sizes[entry.blob]
        if size > MAX_FILE_BYTES:
            rows[path] = _row_from_result(path, entry.blob, config_key, [too_large(path, size)])
            del to_parse[path]


def _refused(entry: Entry) -> Problem | None:
    """Why a file in `paths` cannot be a run file whatever it holds, or None."""
    if not entry.utf8_name:
        return bad_name_problem(entry.path)
    if entry.mode == SYMLINK_MODE:
        return not_a_file_problem(entry.path, "a symlink")
    if entry.mode == SUBMODULE_MODE:
        return not_a_file_problem(entry.path, "a submodule entry")
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


def _trees(repo: ConfigRepo, base_ref: str, head_ref: str) -> tuple[str, str, TreeState, TreeState]:
    """(base sha, head sha, the tree at base, the tree at head read as a change of base)."""
    from gitopsq.source import SourceError

    base, head = repo.resolve(base_ref), repo.resolve(head_ref)
    for ref, sha in ((base_ref, base), (head_ref, head)):
        if sha is None:
            raise SourceError(f"{ref!r} is not a commit of {repo.location}")
    before = read_tree(repo, base)
    if before.blocked:
        # No valid config at base: read base with head's, so the plan shows what the run files change.
        head_config = read_config(repo, repo.entry(head, CONFIG_FILE))
        before = read_tree(repo, base, last_good=head_config if isinstance(head_config, AppliedConfig) else None)
    after = read_tree(repo, head, base=base, previous=before) if not before.blocked else read_tree(repo, head)
    return base, head, before, after


def _planned(after: TreeState, desired: dict, known: dict):
    from gitopsq.plan import held, plan

    stuck = held(desired, after.invalid_files, known)
    problems = after.all_problems() + [Problem(desired[n].file, 1, "name", why) for n, why in sorted(stuck.items())]
    return plan(desired, after.invalid_files, known), problems


def plan_refs(repo: ConfigRepo, base_ref: str, head_ref: str):
    """What replacing base with head would do, taking every valid run at base as running.

    Returns (base sha, head sha, actions, problems at head).
    """
    from gitopsq.plan import Known

    base, head, before, after = _trees(repo, base_ref, head_ref)
    if after.blocked:
        return base, head, [], after.all_problems()
    known = {name: Known(name, d.file, d.spec, True, "running") for name, d in before.desired.items()}
    return (base, head, *_planned(after, after.desired, known))


def plan_refs_live(repo: ConfigRepo, base_ref: str, head_ref: str, read_state):
    """What merging head does to the controller's live state. As the controller plans only the runs
    whose files a commit touches, so does this: the runs whose files differ between base and head,
    against what the controller holds of them.

    read_state(names, specs): (plan.LiveState of those runs with their new specs judged, where it
    came from), from the API or the state file (gitopsq.livestate). Returns (base sha, head sha,
    actions, problems at head, the state, where it came from); the state is None when nothing was
    planned (no valid .gitopsq.yml at head).
    """
    base, head, before, after = _trees(repo, base_ref, head_ref)
    if after.blocked:
        return base, head, [], after.all_problems(), None, None
    names = after.touched_names(before.files)
    desired = after.desired_of(names)
    state, source = read_state(names, {name: dict(want.spec) for name, want in desired.items()})
    known = {name: run.known for name, run in state.runs.items() if name in names}
    return (base, head, *_planned(after, desired, known), state, source)
