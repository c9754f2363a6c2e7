"""The config repository's own settings: `.gitopsq.yml` (which paths hold runs, repo-wide defaults)."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from gitopsq.yamlload import Problem, SpecError, load_yaml

CONFIG_FILE = ".gitopsq.yml"
DEFAULT_PATHS = ("**/*.yml", "**/*.yaml")
DSTACK_FILES = (".dstack.yml", ".dstack.yaml")


@functools.cache
def _glob_regex(pattern: str) -> re.Pattern:
    """A path glob as git users write it: `*` stays in one folder, `**/` spans any folders."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def path_text(raw: bytes) -> tuple[str, bool]:
    """A path of the config repo as gitopsq names it (in SQLite, logs, the API), and whether it is UTF-8.

    A UTF-8 name is itself. Any other name cannot be stored or shown as text, so it is named the
    way git prints it: each byte that is not UTF-8 as an octal escape (`caf\\351.yml`) and each
    backslash doubled. The escaped name is the same every time (so the file's later deletion
    matches it), and a UTF-8 name holding a backslash is escaped too, so that no real name can
    equal the escaped name of another file.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and "\\" not in text:
        return text, True
    # surrogateescape turns each byte that is not UTF-8 into one code point U+DC80..U+DCFF
    chars = raw.decode("utf-8", "surrogateescape")
    escaped = "".join(f"\\{ord(c) - 0xDC00:03o}" if "\udc80" <= c <= "\udcff" else "\\\\" if c == "\\" else c for c in chars)
    return escaped, text is not None


def not_a_file_problem(path: str, what: str) -> Problem:
    """A run path that holds no regular file: what = "a symlink", "a submodule entry"..."""
    return Problem(path, None, "", f"is {what}; run files must be regular files")


def config_not_a_file_problem(file: str, what: str) -> Problem:
    """A .gitopsq.yml that is not a regular file: what = "a symlink", "a submodule entry"..."""
    return Problem(file, None, "", f"is {what}; {CONFIG_FILE} must be a regular file")


def bad_name_problem(path: str) -> Problem:
    return Problem(path, None, "", "the file name is not UTF-8 (shown with its bytes escaped); rename the file with a UTF-8 name")


@dataclass(frozen=True)
class RepoConfig:
    paths: tuple[str, ...] = DEFAULT_PATHS
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def is_run_path(self, path: str) -> bool:
        """True for files that hold runs: they match `paths`, and are not in a dot-folder nor
        dot-files, except dstack's .dstack.yml (a run named after its folder)."""
        *folders, base = path.split("/")
        if path == CONFIG_FILE or any(part.startswith(".") for part in folders):
            return False
        if base.startswith(".") and base not in DSTACK_FILES:
            return False
        return any(_glob_regex(p).match(path) for p in self.paths)


def parse_config(raw: bytes | None, file: str = CONFIG_FILE) -> RepoConfig:
    """Read `.gitopsq.yml`; a missing file means the defaults. Raises SpecError."""
    if raw is None:
        return RepoConfig()
    loaded = load_yaml(raw, file, allow_empty=True)
    data = loaded.data
    if data is None:
        return RepoConfig()
    if not isinstance(data, dict):
        raise SpecError([Problem(file, 1, "", "expected a mapping with paths and defaults")])
    problems = []
    for key in data:
        if key not in ("paths", "defaults"):
            problems.append(Problem(file, loaded.line_of((key,)), key, "unknown field (use paths or defaults)"))
    paths = data.get("paths", list(DEFAULT_PATHS))
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
        problems.append(Problem(file, loaded.line_of(("paths",)), "paths", "expected a non-empty list of globs such as runs/**/*.yml"))
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        problems.append(Problem(file, loaded.line_of(("defaults",)), "defaults", "expected a mapping of run fields"))
    elif "name" in defaults or "type" in defaults:
        problems.append(Problem(file, loaded.line_of(("defaults",)), "defaults", "name and type cannot have defaults"))
    if problems:
        raise SpecError(problems)
    return RepoConfig(tuple(paths), defaults)
