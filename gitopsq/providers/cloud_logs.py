"""A cloud run's log on the controller: what its node ships, stored where local logs are read.

The node (gitopsq.providers.cloud_node) keeps its whole log on disk and POSTs what the
controller does not have yet, in chunks of at most CHUNK_BYTES, each with the offset in the
node's log where it starts. `NodeLog.append` stores a chunk only at the offset it expects (the
bytes received so far): a chunk sent again after a lost answer has its known part skipped, a
chunk from beyond a gap is refused with the offset to resend from. So replays are idempotent
and nothing is stored twice or out of order.

The file is capped like a local log (gitopsq.providers.node_wrapper): past `limit` it keeps its
tail under a line saying how much was cut. What never arrived is said in the log too: when the
node's attempt ends before its last chunk came (`note_incomplete`).

Crash safety (the daemon may be killed at any point): beside the log, `<log>.state` holds the
bytes received, the log's committed size and its inode, replaced whole (rename). An append
writes past the committed size first, then the state: after a crash in between, the next call
cuts the log back to the committed size and the node resends those bytes. A cut writes the new
log to `<log>.cut`, then the state naming that file's inode, then renames it over the log: the
next call finishes or discards a cut the crash interrupted.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

CHUNK_BYTES = 64 * 1024  # the most a node sends at once (the log route's body cap)


@dataclass
class _State:
    received: int = 0  # bytes of the node's log stored (or cut), from its start
    size: int = 0  # the log file's committed size
    ino: int = 0  # the log file's inode (a cut replaces the file)
    head: int = 0  # length of the cut line at the top
    cut: int = 0  # bytes cut to stay under the limit
    complete: bool = False  # the node sent its last chunk
    noted: bool = False  # what never arrived is said in the log


class Received(NamedTuple):
    offset: int  # bytes of the node's log the controller has: the next chunk starts there
    accepted: bool  # False: the chunk started beyond `offset` (a gap); resend from `offset`
    complete: bool


class NodeLog:
    """One attempt's log file, as its node's chunks make it."""

    def __init__(self, path: str | Path, limit: int):
        self.path = Path(path)
        self.limit = limit
        self._state = self.path.with_name(self.path.name + ".state")
        self._cut = self.path.with_name(self.path.name + ".cut")
        self._lock = self.path.with_name(self.path.name + ".lock")

    def create(self) -> None:
        """An empty log, so that `logs` and the run page show one from the launch on."""
        with self._locked():
            self._load()

    def append(self, offset: int, data: bytes, final: bool = False) -> Received:
        with self._locked():
            state = self._load()
            if offset > state.received:
                return Received(state.received, False, state.complete)
            new = data[state.received - offset:]
            if new:
                self._write(state, new)
                state.received += len(new)
            if final and offset + len(data) == state.received:
                state.complete = True
            self._commit(state)
            return Received(state.received, True, state.complete)

    def note_incomplete(self, why: str) -> bool:
        """Say in the log that the node's output past what arrived is missing, once, unless the node
        sent its last chunk. True when said now."""
        with self._locked():
            state = self._load()
            if state.complete or state.noted:
                return False
            line = f"\n[gitopsq: {why}; the node's output after byte {state.received} did not reach the controller]\n"
            self._write(state, line.encode())
            state.noted = True
            self._commit(state)
            return True

    # --- storage ---------------------------------------------------------------------------

    @contextmanager
    def _locked(self):
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self._lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # the web app's threads, and the controller's note
            yield
        finally:
            os.close(fd)

    def _load(self) -> _State:
        """The committed state, the log made to match it (see the module's note on crashes)."""
        try:
            state = _State(**json.loads(self._state.read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            state = None
        if state is not None:
            self._settle(state)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            found = os.fstat(fd)
            if state is None:
                os.ftruncate(fd, 0)
                state = _State(ino=found.st_ino)
                self._save(state)
            elif found.st_ino != state.ino:  # removed or replaced by someone else: taken as it is
                state.ino, state.size, state.head = found.st_ino, found.st_size, 0
                self._save(state)
            elif found.st_size != state.size:
                os.ftruncate(fd, state.size)  # an append that was never committed
        finally:
            os.close(fd)
        return state

    def _commit(self, state: _State) -> None:
        self._save(state)
        self._settle(state)

    def _settle(self, state: _State) -> None:
        """Put a committed cut in place; drop one that was never committed."""
        try:
            ino = self._cut.stat().st_ino
        except FileNotFoundError:
            return
        if ino == state.ino:
            os.replace(self._cut, self.path)
        else:
            self._cut.unlink()

    def _save(self, state: _State) -> None:
        part = self._state.with_name(self._state.name + ".part")
        part.write_text(json.dumps(asdict(state)))
        os.replace(part, self._state)

    def _write(self, state: _State, data: bytes) -> None:
        if state.size + len(data) > self.limit:
            self._rewrite_tail(state, data)
            return
        fd = os.open(self.path, os.O_WRONLY)
        try:
            done = 0
            while done < len(data):
                done += os.pwrite(fd, data[done:], state.size + done)
        finally:
            os.close(fd)
        state.size += len(data)

    def _rewrite_tail(self, state: _State, data: bytes) -> None:
        # As a local log does: down to half the limit, starting at a whole line, under a line
        # that says how much was cut.
        keep = self.limit // 2
        body = state.size - state.head
        from_file = min(body, max(0, keep - len(data)))
        with open(self.path, "rb") as f:
            f.seek(state.size - from_file)
            kept = f.read(from_file) + data
        kept = kept[-keep:]
        newline = kept.find(b"\n")
        if 0 <= newline < len(kept) - 1:
            kept = kept[newline + 1:]
        cut = state.cut + body + len(data) - len(kept)
        line = b"[gitopsq: %d bytes of output cut here]\n" % cut
        content = memoryview(line + kept)
        fd = os.open(self._cut, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            while content:
                content = content[os.write(fd, content):]
            ino = os.fstat(fd).st_ino
        finally:
            os.close(fd)
        # In place once the caller commits the state naming it (_commit).
        state.size, state.head, state.cut, state.ino = len(line) + len(kept), len(line), cut, ino


def log_path(logs: str | Path, submission_id: int, attempt: int, rank: int = 0) -> Path:
    """Where the log of one attempt of a cloud submission is kept: <logs>/<id>.<attempt>.log; for
    the node of rank R > 0 of a cluster run (nodes: N), <logs>/<id>.<attempt>.r<R>.log."""
    suffix = f".r{int(rank)}" if rank else ""
    return Path(logs) / f"{int(submission_id)}.{int(attempt)}{suffix}.log"
