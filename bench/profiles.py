"""Where a benchmark figure's time or memory goes: the profiles bench/README.md quotes.

    python bench/profiles.py first-sync [--files N]        cProfile of Controller.sync_git on an empty store
    python bench/profiles.py catch-up [--files N]          cProfile of one sync from the first commit to the tip (500 commits)
    python bench/profiles.py first-admission [--files N]   cProfile of the first admit_and_launch after a first sync
    python bench/profiles.py admission [--queued N]        cProfile of 200 admission decisions at N queued
    python bench/profiles.py memory [--files N]            tracemalloc: what a first sync and its first step hold

The same builders and setups as bench/run.py (a repo from `git fast-import`, a queue filled like
bench_queue's, the FakeProvider or the local provider); --sort cumulative|tottime, --top N.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_repo  # noqa: E402
from run import _queue_db, controller, set_ref  # noqa: E402

from gitopsq.controller import Controller  # noqa: E402
from gitopsq.source import ConfigRepo  # noqa: E402
from gitopsq.store import Store  # noqa: E402
from tests.fakes import FakeProvider  # noqa: E402


def profiled(call, sort: str, top: int):
    profile = cProfile.Profile()
    started = time.perf_counter()
    profile.enable()
    result = call()
    profile.disable()
    print(f"{time.perf_counter() - started:.3f} s (profiled; about twice the unprofiled time)")
    pstats.Stats(profile).sort_stats(sort).print_stats(top)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["first-sync", "catch-up", "first-admission", "admission", "memory"])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--sort", default="cumulative")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gitopsq-profile-"))
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path) -> None:
    if args.what == "admission":
        _queue_db(work / "queue.sqlite", args.queued)
        provider = FakeProvider(slots=1)
        c = Controller(Store(work / "queue.sqlite"), provider, None)
        c.recovered = True

        def decisions():
            for _ in range(200):
                assert len(c.admit_and_launch()) == 1
                for node in list(provider.nodes_by_id):
                    provider.stop(node)  # the slot is free again for the next decision

        c.admit_and_launch()  # the first, cold decision is not the one to look at
        for node in list(provider.nodes_by_id):
            provider.stop(node)
        profiled(decisions, args.sort, args.top)
        return
    shas = build_repo(work / "repo", args.files, 500 if args.what == "catch-up" else 0)
    repo = work / "repo"
    set_ref(repo, shas[0])
    c = controller(repo, work / "db.sqlite")
    if args.what == "first-sync":
        profiled(c.sync_git, args.sort, args.top)
    elif args.what == "catch-up":
        c.sync_git()
        set_ref(repo, shas[-1])
        profiled(c.sync_git, args.sort, args.top)
    elif args.what == "first-admission":
        c.sync_git()
        c.recovered = True
        profiled(c.admit_and_launch, args.sort, args.top)
    else:
        tracemalloc.start(10)
        c.step()
        snapshot = tracemalloc.take_snapshot()
        current, peak = tracemalloc.get_traced_memory()
        print(f"held after the first step: {current / 2**20:.1f} MiB; peak during it: {peak / 2**20:.1f} MiB (Python heap)")
        for stat in snapshot.statistics("lineno")[: args.top]:
            print(f"{stat.size / 2**20:8.2f} MiB {stat.count:8d} blocks  {stat.traceback[0]}")


if __name__ == "__main__":
    main()
