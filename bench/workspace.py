"""How long a run's working tree takes to make, beside `git archive | tar -x` of the same commit.

    python bench/workspace.py [--files N] [--runs N]

Builds the bench config repo (10,000 run files by default) and times, alternately and each into a
fresh folder, `prepare()` for a run with `repos: [.]` and the plain shell pipeline
`git archive <commit> | tar -x -C <dir>` (the limit). Prints the medians and their ratio (the
issue's target: at most 2x). The first of each (cold page cache; the first prepare also makes the
cache's shadow git dir) is timed apart. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_repo, median, timed  # noqa: E402

from gitopsq.inputs import RepoSpec  # noqa: E402
from gitopsq.source import ConfigRepo  # noqa: E402
from gitopsq.spec import RunSpec  # noqa: E402
from gitopsq.workspace import prepare  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gitopsq-bench-ws-") as tmp:
        base = Path(tmp)
        commit = build_repo(base / "repo", args.files, 0)[-1]
        spec = RunSpec(name="bench", type="task", commands=("true",), repos=(RepoSpec(local_path=""),))
        count = iter(range(10_000))

        def limit() -> None:
            dest = base / f"limit-{next(count)}"
            dest.mkdir()
            pipeline = f"git -C {shlex.quote(str(base / 'repo'))} archive {commit} | tar -x -C {shlex.quote(str(dest))}"
            subprocess.run(pipeline, shell=True, check=True)

        with ConfigRepo(str(base / "repo")) as repo:
            def ours() -> Path:
                return prepare(spec, commit, repo, base / f"ours-{next(count)}", credentials=lambda key: None,
                               cache_dir=base / "cache").dest

            cold_limit, _ = timed(limit)  # the first read of the fresh repo pays for the page cache
            first, dest = timed(ours)
            limits, values = [], []
            for _ in range(args.runs):
                limits.append(timed(limit)[0])
                values.append(timed(ours)[0])
        files = sum(1 for p in dest.rglob("*") if p.is_file())
    print(f"{args.files} run files ({files} files written), median of {args.runs}:")
    print(f"  git archive | tar -x   {median(limits) * 1000:8.1f} ms  (the limit; first, cold: {cold_limit * 1000:.1f} ms)")
    print(f"  prepare(repos: [.])    {median(values) * 1000:8.1f} ms  (first, making the cache: {first * 1000:.1f} ms)")
    print(f"  ratio                  {median(values) / median(limits):8.2f}x  (target: at most 2x)")


if __name__ == "__main__":
    main()
