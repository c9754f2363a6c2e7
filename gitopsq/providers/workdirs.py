"""The working directories of ended local nodes: kept after their run, pruned by a retention policy.

A node's working directory stays at one path from launch until it is pruned
(<state>/workdirs/<node id>/<name>), so the path a submission recorded when it started is the
one to look in afterwards. What ended is listed in <state>/workdirs.jsonl, one JSON object a
line, appended and never edited:

    {"id", "group", "unit", "ended_at", "remove"}  when a node is destroyed (remove: the folder to delete)
    {"id", "size"}                                  its disk usage, measured at the first prune after
    {"id", "pruned": true}                          once its folder is deleted

The policy keeps, per group (a run), the folders of the last `keep` units (submissions; all their
attempts), and then the newest folders whose sizes add up to at most `max_size`, oldest going
first. The index is read once and then only from where it was last read, and sizes are measured
once, so a prune costs what ended since the last one, not a walk of every folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("gitopsq.providers.workdirs")

DEFAULT_KEEP = 5
DEFAULT_MAX_SIZE = 20 * 1024**3
PRUNE_INTERVAL = 300.0  # seconds between prunes at most


@dataclass
class Ended:
    id: str
    group: str
    unit: str
    ended_at: float
    remove: str
    size: int | None = None


def victims(entries: list[Ended], keep: int, max_size: int) -> list[str]:
    """The ids whose folders go: every unit of a group but its `keep` newest, then the oldest of
    the rest until they fit in `max_size` bytes (a folder not yet measured counts as empty)."""
    newest: dict[str, dict[str, float]] = {}
    for e in entries:
        units = newest.setdefault(e.group, {})
        units[e.unit] = max(units.get(e.unit, e.ended_at), e.ended_at)
    kept_units = {(group, unit) for group, units in newest.items()
                  for unit in sorted(units, key=units.get, reverse=True)[:max(keep, 0)]}
    doomed = [e for e in entries if (e.group, e.unit) not in kept_units]
    kept = sorted((e for e in entries if (e.group, e.unit) in kept_units), key=lambda e: (e.ended_at, e.id))
    total = sum(e.size or 0 for e in kept)
    for e in kept:
        if total <= max_size:
            break
        doomed.append(e)
        total -= e.size or 0
    return [e.id for e in doomed]


def disk_usage(path: str | Path) -> int:
    """Bytes on disk under path, as du counts them; symlinks (volumes) are not followed."""
    try:
        total, todo = os.lstat(path).st_blocks * 512, [str(path)]
    except OSError:
        return 0
    while todo:
        try:
            with os.scandir(todo.pop()) as found:
                for entry in found:
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += info.st_blocks * 512
                    if stat.S_ISDIR(info.st_mode):
                        todo.append(entry.path)
        except OSError:
            continue  # gone, or not ours to read (a container's root-owned files)
    return total


class WorkdirIndex:
    """workdirs.jsonl, and what it says in memory; callers hold the driver's lock around each call."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, Ended] = {}
        self._inode: int | None = None
        self._offset = 0
        self._lines = 0

    def exists(self) -> bool:
        return self.path.exists()

    def append(self, records: list[dict]) -> None:
        if not records:
            return
        data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def sync(self) -> dict[str, Ended]:
        """Take in what was appended since the last look (all of it when the file was rewritten)."""
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return self.entries
        if info.st_ino != self._inode or info.st_size < self._offset:
            self.entries, self._inode, self._offset, self._lines = {}, info.st_ino, 0, 0
        if info.st_size == self._offset:
            return self.entries
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read(info.st_size - self._offset)
        whole = data[:data.rfind(b"\n") + 1]  # a line still being written waits for the next look
        self._offset += len(whole)
        for line in whole.splitlines():
            self._lines += 1
            try:
                self._apply(json.loads(line))
            except (ValueError, KeyError, TypeError):
                log.warning("%s: skipping a bad line", self.path)
        return self.entries

    def _apply(self, record: dict) -> None:
        node_id = record["id"]
        if record.get("pruned"):
            self.entries.pop(node_id, None)
        elif "remove" in record:
            self.entries[node_id] = Ended(node_id, str(record["group"]), str(record["unit"]), float(record["ended_at"]),
                                          record["remove"], record.get("size"))
        elif node_id in self.entries and "size" in record:
            self.entries[node_id].size = int(record["size"])

    def compact(self) -> None:
        """Rewrite the file with what is still kept, once the pruned lines are most of it."""
        if self._lines <= 2 * len(self.entries) + 64:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        records = [{"id": e.id, "group": e.group, "unit": e.unit, "ended_at": e.ended_at, "remove": e.remove,
                    **({"size": e.size} if e.size is not None else {})} for e in self.entries.values()]
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w") as f:
            f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in records)
        os.replace(tmp, self.path)
        self.sync()


def remove_tree(path: str) -> bool:
    """Delete a kept folder; False (and a warning) when some of it could not be deleted."""
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        log.warning("could not delete all of %s (files not ours to delete, e.g. a container's?)", path)
        return False
    return True


class Retention:
    """The retention policy of one driver's kept working directories.

    `lock(fcntl.LOCK_EX)` is the driver's lock: the index is read and appended under it, while
    measuring and deleting happen outside it, so launches do not wait on a big delete.
    """

    def __init__(self, state_dir: Path, lock, keep: int | None = None, max_size: int | None = None,
                 interval: float = PRUNE_INTERVAL):
        self.index = WorkdirIndex(state_dir / "workdirs.jsonl")
        self.lock = lock
        self.keep = DEFAULT_KEEP if keep is None else int(keep)
        self.max_size = DEFAULT_MAX_SIZE if max_size is None else int(max_size)
        self.interval = interval
        self._due = 0.0  # time.monotonic() of the next prune; the first list after a start prunes
        self._pending: list[dict] = []  # ended records a full disk kept out of the index, for the next try
        if self.keep < 0 or self.max_size < 0:
            raise ValueError("keep and max_size must be >= 0")

    def start(self, ended_dir: Path) -> None:
        """Make the index when there is none: nodes ended by an older gitopsq are listed once."""
        import fcntl

        with self.lock(fcntl.LOCK_EX):
            if self.index.exists():
                return
            records = []
            for node_dir in sorted(ended_dir.iterdir()):
                try:
                    meta = json.loads((node_dir / "meta.json").read_text())
                except (OSError, ValueError):
                    continue
                workdir = Path(meta.get("workdir_path") or node_dir / meta.get("workdir", "work"))
                remove = workdir.parent if meta.get("workdir_path") else workdir
                group, unit = meta.get("retention") or (meta.get("name", ""),) * 2
                records.append(ended_record(meta["id"], group, unit, _mtime(node_dir / "destroyed"), remove))
            self.index.append(records)
            self.index.path.touch(mode=0o600)

    def ended(self, record: dict) -> None:
        """List a node that ended (the caller holds the lock). A full disk must not stop a node's
        end: the record then waits in memory for the next append that works."""
        self._pending.append(record)
        try:
            self.index.append(self._pending)
        except OSError as exc:
            log.warning("cannot list ended working directories in %s yet: %s", self.index.path, exc)
            return
        self._pending = []

    def maybe_prune(self, now_monotonic: float) -> list[str]:
        """Prune when the interval has passed since the last prune; trouble (a full disk) waits for the next."""
        if now_monotonic < self._due:
            return []
        self._due = now_monotonic + self.interval
        try:
            return self.prune()
        except OSError as exc:
            log.warning("cannot prune kept working directories now: %s", exc)
            return []

    def prune(self) -> list[str]:
        """Delete what the policy no longer keeps; returns the node ids whose folders went."""
        import fcntl

        with self.lock(fcntl.LOCK_EX):
            if self._pending:
                self.index.append(self._pending)
                self._pending = []
            unmeasured = [e for e in self.index.sync().values() if e.size is None]
        sizes = [{"id": e.id, "size": disk_usage(e.remove)} for e in unmeasured]  # only what ended since
        with self.lock(fcntl.LOCK_EX):
            self.index.append(sizes)
            doomed = victims(list(self.index.sync().values()), self.keep, self.max_size)
            folders = {node_id: self.index.entries[node_id].remove for node_id in doomed}
        for node_id, folder in folders.items():
            remove_tree(folder)
        with self.lock(fcntl.LOCK_EX):
            self.index.append([{"id": node_id, "pruned": True} for node_id in folders])
            self.index.sync()
            self.index.compact()
        if folders:
            log.info("pruned %d kept working director%s", len(folders), "y" if len(folders) == 1 else "ies")
        return list(folders)


def ended_record(node_id: str, group: str, unit: str, ended_at: float, remove: str | Path) -> dict:
    return {"id": node_id, "group": group, "unit": unit, "ended_at": ended_at, "remove": str(remove)}


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
