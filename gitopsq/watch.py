"""Triggers that wake the controller loop. They never decide anything: the loop confirms the
tip with git and reconciles; a trigger only shortens its wait.

- a local repo: inotify (watchdog) on $GIT_DIR (not recursive: HEAD, packed-refs) and refs/
  (recursive), write-type events only, never objects/; a commit fires a burst of events, so
  they are coalesced into one wake about 50 ms after the first.
- a remote URL: the loop fetches every --interval (the timer lives in the loop).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

COALESCE_SECONDS = 0.05
_WRITE_EVENTS = {"created", "modified", "moved", "deleted", "closed"}


class Coalescer:
    """Turns a burst of calls into one `wake` call, COALESCE_SECONDS after the first."""

    def __init__(self, wake: Callable[[str], None], delay: float = COALESCE_SECONDS):
        self.wake = wake
        self.delay = delay
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def poke(self) -> None:
        with self._lock:
            if self._timer is None:
                self._timer = threading.Timer(self.delay, self._fire)
                self._timer.daemon = True
                self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            self._timer = None
        self.wake("git")

    def cancel(self) -> None:
        with self._lock:
            if self._timer:
                self._timer.cancel()
                self._timer = None


class RefWatcher:
    """Watches a local repository's refs and wakes the loop when they change."""

    def __init__(self, git_dir: Path, wake: Callable[[str], None]):
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        coalescer = self.coalescer = Coalescer(wake)

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                path = str(getattr(event, "dest_path", "") or event.src_path)  # a ref.lock renamed into place
                if event.event_type in _WRITE_EVENTS and "/objects/" not in path and not path.endswith(".lock"):
                    coalescer.poke()

        self.observer = Observer()
        handler = Handler()
        self.observer.schedule(handler, str(git_dir), recursive=False)
        refs = git_dir / "refs"
        if refs.is_dir():
            self.observer.schedule(handler, str(refs), recursive=True)
        self.observer.daemon = True

    def start(self) -> None:
        self.observer.start()

    def stop(self) -> None:
        self.coalescer.cancel()
        self.observer.stop()
        self.observer.join(timeout=5)
