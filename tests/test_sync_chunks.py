"""sync_git plans and records the runs of a commit a chunk of names at a time (so a first sync of
10,000 never holds all their decoded specs): whatever the chunk size, the store ends the same."""

from __future__ import annotations

import pytest

from gitopsq import controller as controller_module
from gitopsq.controller import Controller
from gitopsq.source import ConfigRepo
from gitopsq.store import Store
from tests.fakes import Clock, FakeProvider
from tests.helpers import GitRepo, task

TABLES = {
    "runs": "SELECT * FROM runs ORDER BY name",
    "submissions": "SELECT * FROM submissions ORDER BY id",  # tokens are random: left out below
    "events": "SELECT * FROM events ORDER BY id",
    "files": "SELECT * FROM files ORDER BY path",
    "problems": "SELECT * FROM problems ORDER BY rowid",
}


def scheduled(name: str) -> str:
    return f"type: task\nname: {name}\ncommands: ['echo tick']\nschedule:\n  cron: '0 3 * * *'\n"


def contents(store: Store) -> dict:
    out = {}
    for table, sql in TABLES.items():
        rows = [dict(row) for row in store.conn.execute(sql)]
        for row in rows:
            row.pop("token", None)
        out[table] = rows
    return out


class Twin:
    """A controller over the shared repo with a store of its own, syncing `chunk` names at a time."""

    def __init__(self, tmp_path, repo: GitRepo, name: str, chunk: int):
        self.chunk = chunk
        self.store = Store(tmp_path / f"{name}.db")
        self.source = ConfigRepo(str(repo.path))
        self.controller = Controller(self.store, FakeProvider(slots=3), self.source, clock=Clock())

    def sync(self, monkeypatch) -> list[tuple]:
        monkeypatch.setattr(controller_module, "SYNC_CHUNK", self.chunk)
        _, actions = self.controller.sync_git()
        return [(a.kind, a.run, a.file) for a in actions]

    def close(self):
        self.source.close()
        self.store.close()


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_a_sync_in_chunks_records_what_one_chunk_does(tmp_path, monkeypatch, chunk):
    repo = GitRepo(tmp_path / "repo")
    for name in "abcdefg":
        repo.write(f"runs/{name}.yml", task(name, priority=ord(name) % 10))
    repo.write("runs/dup1.yml", task("dup"))
    repo.write("runs/dup2.yml", task("dup"))  # one name claimed twice: an error on both
    repo.write("runs/broken.yml", "type: task\nname: [\n")
    repo.write("runs/cron.yml", scheduled("cron"))
    repo.commit("first")
    chunked, whole = Twin(tmp_path, repo, "chunked", chunk), Twin(tmp_path, repo, "whole", 10_000)
    try:
        first = chunked.sync(monkeypatch)
        assert first == whole.sync(monkeypatch)
        assert [(kind, run) for kind, run, _ in first] == [("submit", run) for run in [*"abcdefg"[:2], "c", "cron", *"defg"]]
        assert contents(chunked.store) == contents(whole.store)
        for twin in (chunked, whole):
            twin.controller.step()  # three of them start
        repo.write("runs/a.yml", task("a", priority=9))  # update, in place
        repo.write("runs/b.yml", task("b", "echo changed"))  # restart
        repo.remove("runs/c.yml")  # cancel
        repo.write("runs/d.yml", "type: task\nname: [\n")  # broken: d keeps its spec ...
        repo.write("runs/d2.yml", task("d", "echo other"))  # ... and a file claiming d is held
        repo.remove("runs/dup2.yml")  # dup is claimed once again: submitted
        repo.write("runs/h.yml", task("h"))
        repo.write("runs/cron.yml", scheduled("cron").replace("0 3", "0 4"))
        repo.commit("second")
        second = chunked.sync(monkeypatch)
        assert second == whole.sync(monkeypatch)
        assert {(kind, run) for kind, run, _ in second} >= {("update", "a"), ("restart", "b"), ("cancel", "c"),
                                                           ("submit", "dup"), ("submit", "h")}
        assert [run for _, run, _ in second] == sorted(run for _, run, _ in second)
        assert contents(chunked.store) == contents(whole.store)
        assert any("does not validate" in row["message"] for row in contents(chunked.store)["problems"])
    finally:
        chunked.close()
        whole.close()
