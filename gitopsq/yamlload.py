"""Parse one YAML document safely, keeping the line of every value.

Run files come from anyone who can push, so parsing is defensive: CSafeLoader only,
a size cap, strict UTF-8, no duplicate keys, bounded alias expansion and nesting.
Errors are `Problem`s that name the file and line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

MAX_FILE_BYTES = 256 * 1024
MAX_NODES = 10_000  # values after alias expansion; real run files have a few hundred
MAX_DEPTH = 64

Path = tuple  # a field path: ("retry", "duration") or ("commands", 0)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file, as a person needs to read it."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"

    def as_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "field": self.field, "message": self.message}


def too_large(file: str, size: int) -> Problem:
    """The problem of a file over MAX_FILE_BYTES (told from its size alone: it need not be read)."""
    return Problem(file, None, "", f"file is {size // 1024} KiB; run files are limited to {MAX_FILE_BYTES // 1024} KiB")


class SpecError(Exception):
    """A run file (or a set of them) is not valid; carries every problem found."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def field_name(path: Path) -> str:
    """("retry", "duration") -> "retry.duration"; ("commands", 0) -> "commands[0]"."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass(frozen=True)
class Loaded:
    data: Any
    lines: dict[Path, int]  # field path -> 1-based line of its key (or of the value for list items)

    def line_of(self, path: Path) -> int | None:
        """The line of a field, or of its nearest parent that has one."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)


def load_yaml(raw: bytes, file: str, allow_empty: bool = False) -> Loaded:
    """Parse raw bytes into data plus a line map, or raise SpecError.

    allow_empty: a document with no content (empty, or only comments) is data None, not an error.
    """
    if len(raw) > MAX_FILE_BYTES:
        raise SpecError([too_large(file, len(raw))])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecError([Problem(file, line, "", f"not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as UTF-8")]) from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise SpecError([Problem(file, line, "", "binary content (NUL byte); a run file is YAML text")])

    loader = yaml.CSafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else None
            what = exc.problem or exc.context or "invalid YAML"
            raise SpecError([Problem(file, line, "", f"YAML syntax error: {what}")]) from None
        except yaml.YAMLError as exc:
            raise SpecError([Problem(file, None, "", f"YAML syntax error: {exc}")]) from None
        if node is None:
            if allow_empty:
                return Loaded(None, {(): 1})
            raise SpecError([Problem(file, 1, "", "the file is empty; a run file is a mapping with at least `type`")])
        lines: dict[Path, int] = {(): node.start_mark.line + 1}
        walk = _Walk(loader)
        data = _walk(node, (), lines, file, walk)
        try:
            if not walk.plain:  # anchors, merge keys, tags: PyYAML's constructor, with its errors
                data = loader.construct_document(node)
        except RecursionError:
            raise SpecError([Problem(file, None, "", f"nested deeper than {MAX_DEPTH} levels")]) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise SpecError([Problem(file, mark.line + 1 if mark else None, "", f"YAML error: {getattr(exc, 'problem', exc)}")]) from None
    finally:
        loader.dispose()
    return Loaded(data, lines)


_STR, _MAP, _SEQ, _MERGE = (f"tag:yaml.org,2002:{t}" for t in ("str", "map", "seq", "merge"))
_PLAIN_SCALARS = {f"tag:yaml.org,2002:{t}" for t in ("int", "float", "bool", "null")}


class _Walk:
    """What one walk of a document carries: the values seen, and whether the document is plain
    (mappings, lists and str/int/float/bool/null scalars, no anchor used twice), so that the walk's
    own values are the data. PyYAML builds the same values through a constructor at 4x the cost."""

    def __init__(self, loader: yaml.CSafeLoader) -> None:
        self.loader = loader
        self.count = 0
        self.plain = True
        self.collections: set[int] = set()

    def scalar(self, node: yaml.ScalarNode) -> Any:
        if node.tag == _STR:
            return node.value
        if node.tag in _PLAIN_SCALARS:
            try:
                return self.loader.yaml_constructors[node.tag](self.loader, node)
            except Exception:  # the constructor says what is wrong, from construct_document
                pass
        self.plain = False
        return None

    def collection(self, node: yaml.Node, tag: str) -> None:
        if node.tag != tag or id(node) in self.collections:  # a tag, or an alias of a mapping or list
            self.plain = False
        self.collections.add(id(node))


def _walk(node: yaml.Node, path: Path, lines: dict[Path, int], file: str, walk: _Walk) -> Any:
    """Record lines, reject duplicate and non-string keys, bound alias expansion and depth; the
    value of the node (meaningful while walk.plain)."""
    walk.count += 1
    if walk.count > MAX_NODES:
        raise SpecError([Problem(file, node.start_mark.line + 1, "", f"more than {MAX_NODES:,} values after expanding anchors and aliases (an alias bomb?)")])
    if len(path) > MAX_DEPTH:
        raise SpecError([Problem(file, node.start_mark.line + 1, "", f"nested deeper than {MAX_DEPTH} levels")])
    if isinstance(node, yaml.ScalarNode) and "\x00" in node.value:
        # A "\0" escape in a quoted string: no process can be given it (argv and environ are C strings).
        raise SpecError([Problem(file, node.start_mark.line + 1, field_name(path),
                                 "contains a NUL byte (\\0), which cannot be passed to a process")])
    if isinstance(node, yaml.MappingNode):
        walk.collection(node, _MAP)
        seen: dict[str, int] = {}
        mapping = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE:
                walk.plain = False
                _walk(value_node, path, lines, file, walk)
                continue
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
                shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else "a " + key_node.id
                hint = " (YAML reads on/off/yes/no as booleans: quote it)" if isinstance(key_node, yaml.ScalarNode) else ""
                raise SpecError([Problem(file, line, field_name(path), f"key {shown!r} is not a string{hint}")])
            key = key_node.value
            child = path + (key,)
            if key in seen:
                raise SpecError([Problem(file, line, field_name(child), f"duplicate key {key!r} (first at line {seen[key]})")])
            seen[key] = line
            lines.setdefault(child, line)
            mapping[key] = _walk(value_node, child, lines, file, walk)
        return mapping
    if isinstance(node, yaml.SequenceNode):
        walk.collection(node, _SEQ)
        items = []
        for index, item in enumerate(node.value):
            child = path + (index,)
            lines.setdefault(child, item.start_mark.line + 1)
            items.append(_walk(item, child, lines, file, walk))
        return items
    return walk.scalar(node)
