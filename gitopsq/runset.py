"""The run files of one tree: parse each and flag names claimed twice.

Used for a checkout on disk (`gitopsq validate`) and for a commit (the controller), so the
two can never disagree about what is valid.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Mapping

from gitopsq.config import RepoConfig
from gitopsq.spec import RunSpec, parse_run
from gitopsq.yamlload import Problem, SpecError


@dataclass
class RunSet:
    specs: dict[str, RunSpec] = field(default_factory=dict)  # path -> spec, valid files only
    problems: dict[str, list[Problem]] = field(default_factory=dict)  # path -> its problems

    def all_problems(self) -> list[Problem]:
        return [p for path in sorted(self.problems) for p in self.problems[path]]


Parser = Callable[[str, bytes], RunSpec]


def build_runset(files: Mapping[str, bytes], config: RepoConfig | None, parse: Parser | None = None) -> RunSet:
    """Parse every file (already selected by config.paths) and reject duplicate names on each file."""
    parse = parse or (lambda path, raw: parse_run(raw, path, config.defaults if config else None))
    result = RunSet()
    for path in sorted(files):
        try:
            result.specs[path] = parse(path, files[path])
        except SpecError as exc:
            result.problems[path] = exc.problems
    return flag_duplicates(result)


def flag_duplicates(result: RunSet) -> RunSet:
    """Two files claiming one name: both are invalid, so neither replaces what runs."""
    for path, problem in duplicate_names({path: spec.name for path, spec in result.specs.items()}).items():
        del result.specs[path]
        result.problems.setdefault(path, []).append(problem)
    return result


def duplicate_names(names: Mapping[str, str]) -> dict[str, Problem]:
    """path -> name in; path -> problem out, for every path whose name another path claims too."""
    counts = Counter(names.values())  # counted in C: this runs over every file of the tree per commit
    twice = {name for name, count in counts.items() if count > 1}
    if not twice:
        return {}
    claims: dict[str, list[str]] = {}
    for path, name in names.items():
        if name in twice:
            claims.setdefault(name, []).append(path)
    return {path: duplicate_problem(path, name, tuple(sorted(paths))) for name, paths in claims.items() for path in paths}


def duplicate_problem(path: str, name: str, paths: tuple[str, ...]) -> Problem:
    """The error on one of the files that claim one run name."""
    others = ", ".join(p for p in paths if p != path)
    return Problem(path, 1, "name", f"run name {name!r} is also claimed by {others}; each run needs a name of its own")
