"""Hiding secret values in text on its way out (served logs), as CI systems do: each becomes ***.

Values shorter than MIN_MASKED characters are left alone: masking `a` or `42` would garble
every log while hiding nothing worth hiding (`secret set` warns about them). A value of several
lines is also masked line by line, since a run may print only part of it.
"""

from __future__ import annotations

import codecs
import re
from typing import BinaryIO, Iterable, Iterator

MASK = "***"
MIN_MASKED = 4
CHUNK_BYTES = 64 * 1024


def too_short_to_mask(value: str) -> bool:
    return len(value) < MIN_MASKED


def mask_terms(values: Iterable[str]) -> list[str]:
    """What to look for: each value and each line of it, long enough, longest first."""
    terms = set()
    for value in values:
        terms.add(value)
        terms.update(line.rstrip("\r") for line in value.split("\n"))
    return sorted((t for t in terms if not too_short_to_mask(t)), key=lambda t: (-len(t), t))


def _pattern(terms: list[str]) -> re.Pattern | None:
    # An alternation tries its branches in order: longest first, so a value never leaves the
    # tail of a longer value that starts with it.
    return re.compile("|".join(map(re.escape, terms))) if terms else None


def mask(text: str, values: Iterable[str]) -> str:
    """`text` with every secret value in it replaced by ***."""
    pattern = _pattern(mask_terms(values))
    return pattern.sub(MASK, text) if pattern else text


class StreamMasker:
    """mask() over text that arrives in pieces, where a value may straddle two of them.

    feed() returns what is final: everything but the end of the text that may be the start of a
    value (at most len(longest value) - 1 characters, and none when no value starts that way,
    so a follower sees each line as soon as it is written). The output is exactly mask() of the
    whole text."""

    def __init__(self, values: Iterable[str]):
        terms = mask_terms(values)
        self._terms = terms
        self._pattern = _pattern(terms)
        self._hold = max((len(t) for t in terms), default=1) - 1
        self._pending = ""

    def feed(self, text: str) -> str:
        if self._pattern is None:
            return text
        buffer = self._pending + text
        safe = len(buffer) - self._started(buffer)  # a match starting before this is wholly in the buffer
        out, at = [], 0
        for match in self._pattern.finditer(buffer):
            if match.start() >= safe:
                break
            out += [buffer[at:match.start()], MASK]
            at = match.end()
        cut = max(at, safe)
        out.append(buffer[at:cut])
        self._pending = buffer[cut:]
        return "".join(out)

    def _started(self, buffer: str) -> int:
        """Length of the longest end of `buffer` that is the start of a value, but not all of it.

        Only there can a match (or a longer one than now) still grow with the next piece."""
        for size in range(min(self._hold, len(buffer)), 0, -1):
            end = buffer[-size:]
            if any(len(term) > size and term.startswith(end) for term in self._terms):
                return size
        return 0

    def finish(self) -> str:
        rest, self._pending = self._pending, ""
        return self._pattern.sub(MASK, rest) if self._pattern else rest


def masked_chunks(stream: BinaryIO, values: Iterable[str], chunk_bytes: int = CHUNK_BYTES) -> Iterator[str]:
    """A binary log read in chunks as masked text (undecodable bytes replaced, never split)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    masker = StreamMasker(values)
    while chunk := stream.read(chunk_bytes):
        yield masker.feed(decoder.decode(chunk))
    yield masker.feed(decoder.decode(b"", final=True)) + masker.finish()
