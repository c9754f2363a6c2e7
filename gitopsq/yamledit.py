"""Editing a user's YAML file in place: change the keys gitopsq sets, keep everything else as written.

`gitopsq apply` writes into files people wrote and review. Loading them with PyYAML and dumping
them again would drop every comment, turn `|` blocks into escaped strings and re-order or
re-quote keys, so the diff would show lines nobody changed. ruamel.yaml's round trip keeps
comments, quoting, flow or block style and key order; it still re-folds a few things (a plain
scalar written over several lines, trailing spaces, a `---` line), so its output is used only
for the lines that really change: those lines are spliced into the author's text, and the rest
of the file stays byte for byte as it was.
"""

from __future__ import annotations

import difflib
import io
from typing import Any, Callable

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

Edit = Callable[[CommentedMap], None]


class EditError(Exception):
    """The file cannot be edited in place (not a mapping, or not YAML that ruamel.yaml reads)."""


def edit_mapping(text: str, *edits: Edit) -> str:
    """`text` with `edits` applied to its top-level mapping; lines they do not touch stay as they are."""
    if not text.endswith("\n"):
        text += "\n"  # a last line without its newline would not match ruamel.yaml's output
    best: tuple[int, str, str] | None = None
    for layout in _layouts(text):
        before, after = _round_trip(text, layout, edits)
        if before == text:
            return after
        matched = _matched_lines(text.splitlines(True), before.splitlines(True))
        if best is None or len(matched) > best[0]:
            best = (len(matched), before, after)
    _, before, after = best
    spliced = splice(text, before, after)
    if spliced is not None and _load(spliced) == _load(after):
        return spliced
    return after  # the change touches lines ruamel.yaml re-formats: its whole output, comments kept


def _layouts(text: str) -> list[tuple[int, int, int]]:
    """(mapping indent, sequence indent, dash offset) to try: the guessed one, then common ones."""
    from ruamel.yaml.util import load_yaml_guess_indent

    try:
        _, indent, dash = load_yaml_guess_indent(text)
    except YAMLError as exc:
        raise EditError(f"cannot be edited in place: {exc}") from None
    guessed = (2, indent or 2, dash or 0)
    return list(dict.fromkeys([guessed, (2, 2, 0), (2, 4, 2), (indent or 2, indent or 2, dash or 0)]))


def _yaml(layout: tuple[int, int, int]) -> YAML:
    yaml = YAML()  # round-trip mode
    yaml.preserve_quotes = True
    yaml.width = 1 << 16  # never re-wrap a long line
    mapping, sequence, offset = layout
    yaml.indent(mapping=mapping, sequence=sequence, offset=offset)
    return yaml


def _round_trip(text: str, layout, edits) -> tuple[str, str]:
    """(the file dumped unchanged, the file dumped after the edits), in one layout."""
    yaml = _yaml(layout)
    try:
        data = yaml.load(text)
    except YAMLError as exc:
        raise EditError(f"cannot be edited in place: {exc}") from None
    if not isinstance(data, CommentedMap):
        raise EditError("cannot be edited in place: the file is not a mapping")
    before = _dump(yaml, data)
    for edit in edits:
        edit(data)
    return before, _dump(yaml, data)


def _dump(yaml: YAML, data) -> str:
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def _load(text: str):
    return YAML(typ="safe", pure=True).load(text)


def _matched_lines(original: list[str], dumped: list[str]) -> dict[int, int]:
    """Line of `dumped` -> the same line of `original`, for the lines ruamel.yaml reproduced."""
    found = {}
    for block in difflib.SequenceMatcher(None, original, dumped, autojunk=False).get_matching_blocks():
        for k in range(block.size):
            found[block.b + k] = block.a + k
    return found


def splice(original: str, before: str, after: str) -> str | None:
    """Apply the change from `before` to `after` (two dumps of one document) to `original`.

    A changed stretch of `before` is found in `original` through its own lines or the lines
    around it that `before` reproduced; the original lines in that place are replaced (so a
    line ruamel.yaml re-formatted next to the change stays as written). None when a stretch
    cannot be placed: the caller then keeps `after` whole."""
    lines, old, new = original.splitlines(True), before.splitlines(True), after.splitlines(True)
    where = _matched_lines(lines, old)
    out, at = [], 0
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        start, end = _place(where, i1, i2, len(old), len(lines))
        if start is None or end is None or start < at or end < start:
            return None
        out += lines[at:start] + new[j1:j2]
        at = end
    return "".join(out + lines[at:])


def _place(where: dict[int, int], i1: int, i2: int, old_count: int, count: int) -> tuple[int | None, int | None]:
    """Where lines [i1, i2) of the dump sit in the original: [start, end) of its lines (None: unknown)."""
    if i2 == i1:  # an insertion: after the line before it, else before the line after it
        if i1 == 0:
            at = 0
        elif i1 - 1 in where:
            at = where[i1 - 1] + 1
        else:
            at = count if i1 == old_count else where.get(i1)
        return at, at
    if i1 in where:
        start = where[i1]
    else:
        start = 0 if i1 == 0 else (where[i1 - 1] + 1 if i1 - 1 in where else None)
    if i2 - 1 in where:
        end = where[i2 - 1] + 1
    else:
        end = count if i2 == old_count else where.get(i2)
    return start, end


def flow_list(items: list, like: Any = None) -> CommentedSeq:
    """A list written `[a, b]`, or in the style of `like` when that is a list already."""
    seq = CommentedSeq(items)
    if isinstance(like, CommentedSeq):
        seq.fa.set_flow_style() if like.fa.flow_style() else seq.fa.set_block_style()
    else:
        seq.fa.set_flow_style()
    return seq


def set_key(key: str, value: Any, after: str | None = None) -> Edit:
    """An edit that sets `key` where it is, else inserts it after `after` (else at the top)."""

    def edit(data: CommentedMap) -> None:
        if key in data:
            data[key] = value
        else:
            keys = list(data)
            data.insert(keys.index(after) + 1 if after in keys else 0, key, value)

    return edit


def text_diff(old: str, new: str, path: str) -> str:
    """A unified diff of a file's text, as git shows it (a/path, b/path; /dev/null for a new file)."""
    diff = difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                "/dev/null" if not old else f"a/{path}", f"b/{path}")
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in diff)
