"""Fits y = w * x + b to a CSV of points by gradient descent, writing a checkpoint every epoch.

    python train.py POINTS.csv CHECKPOINTS_DIR      (EPOCHS in the environment, default 5)

Standard library only. Each checkpoint is signed with HMAC-SHA256 under the CHECKPOINT_KEY
secret. At start it resumes from the newest checkpoint whose signature matches, so a retry, or
a later submission with more EPOCHS, goes on where the last one stopped; a checkpoint signed
with another key is not trusted, and training starts over.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import os
import sys
from pathlib import Path

STEPS_PER_EPOCH = 25
LEARNING_RATE = 0.02


def load_points(path: str) -> list[tuple[float, float]]:
    with open(path, newline="") as f:
        return [(float(row["x"]), float(row["y"])) for row in csv.DictReader(f)]


def signature(key: bytes, state: dict) -> str:
    return hmac.new(key, json.dumps(state, sort_keys=True).encode(), hashlib.sha256).hexdigest()


def latest_checkpoint(folder: Path, key: bytes) -> dict | None:
    """The state of the newest checkpoint signed with `key`, or None."""
    untrusted = 0
    for path in sorted(folder.glob("epoch-*.json"), reverse=True):
        saved = json.loads(path.read_text())
        if hmac.compare_digest(saved.get("signature", ""), signature(key, saved["state"])):
            return saved["state"]
        untrusted += 1
    if untrusted:
        print(f"{untrusted} checkpoint(s) not signed with this CHECKPOINT_KEY: not resuming from them")
    return None


def save_checkpoint(folder: Path, key: bytes, state: dict) -> None:
    path = folder / f"epoch-{state['epoch']:04d}.json"
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps({"state": state, "signature": signature(key, state)}, sort_keys=True) + "\n")
    os.replace(partial, path)  # a run killed while writing leaves the last whole checkpoint


def train_epoch(points: list[tuple[float, float]], w: float, b: float) -> tuple[float, float, float]:
    n = len(points)
    for _ in range(STEPS_PER_EPOCH):
        grad_w = sum(2 * (w * x + b - y) * x for x, y in points) / n
        grad_b = sum(2 * (w * x + b - y) for x, y in points) / n
        w, b = w - LEARNING_RATE * grad_w, b - LEARNING_RATE * grad_b
    loss = sum((w * x + b - y) ** 2 for x, y in points) / n
    return w, b, loss


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip())
        return 2
    points_path, checkpoints = argv[0], Path(argv[1])
    key = os.environ.get("CHECKPOINT_KEY")
    if not key:
        print("CHECKPOINT_KEY is not set (gitopsq secret set CHECKPOINT_KEY)")
        return 2
    epochs = int(os.environ.get("EPOCHS", "5"))
    points = load_points(points_path)
    commit = os.environ.get("GITOPSQ_COMMIT", "unknown")[:12]
    # The key's length only: a value printed here would be masked in served logs, but the log
    # file on disk would still hold it.
    print(f"train.py at commit {commit}: {len(points)} points, checkpoints signed with CHECKPOINT_KEY "
          f"({len(key)} characters)")

    checkpoints.mkdir(parents=True, exist_ok=True)
    state = latest_checkpoint(checkpoints, key.encode())
    if state is None:
        state = {"epoch": 0, "w": 0.0, "b": 0.0, "loss": None}
    else:
        print(f"resuming from epoch {state['epoch']} (loss {state['loss']:.4f})")
    if state["epoch"] >= epochs:
        print(f"already trained for {state['epoch']} epochs; raise EPOCHS to train longer")
        return 0
    for epoch in range(state["epoch"] + 1, epochs + 1):
        w, b, loss = train_epoch(points, state["w"], state["b"])
        state = {"epoch": epoch, "w": w, "b": b, "loss": loss}
        save_checkpoint(checkpoints, key.encode(), state)
        print(f"epoch {epoch}/{epochs} loss={loss:.4f} w={w:.3f} b={b:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
