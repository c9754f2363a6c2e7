"""A bare git repository served over git's dumb HTTP protocol on 127.0.0.1, from a thread.

`hang()` makes every later request wait without an answer, as when a server accepts the
connection and never replies: the way to hang a real `git fetch`.
"""

from __future__ import annotations

import functools
import subprocess
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Handler(SimpleHTTPRequestHandler):
    def do_GET(self):
        server: DumbGitServer = self.server.owner
        if server.hanging.is_set():
            server.held.set()
            server.released.wait()
            return  # the connection closes without an answer
        super().do_GET()

    def log_message(self, *args):
        pass


class DumbGitServer:
    def __init__(self, bare: Path):
        self.bare = bare
        self.hanging = threading.Event()
        self.held = threading.Event()  # a request is being held unanswered
        self.released = threading.Event()
        self.update()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(bare)))
        self.httpd.daemon_threads = True
        self.httpd.owner = self
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="dumb-git", daemon=True)
        self.thread.start()

    def update(self) -> None:
        """The dumb protocol reads info/refs and objects/info/packs: refresh them after a push."""
        subprocess.run(["git", "update-server-info"], cwd=self.bare, check=True)

    def hang(self) -> None:
        self.hanging.set()

    def close(self) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains `text` (git-remote-http names its URL)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found
