"""Bare git repositories served over HTTP on 127.0.0.1, from a thread.

DumbGitServer: git's dumb HTTP protocol; `hang()` makes every later request wait without an
answer, as when a server accepts the connection and never replies: the way to hang a real
`git fetch`.

SmartGitServer: git's own `git-http-backend` (smart HTTP, as GitHub or GitLab serve it) behind
HTTP basic auth, for private repositories.
"""

from __future__ import annotations

import base64
import functools
import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote


class _Handler(SimpleHTTPRequestHandler):
    def do_GET(self):
        server: DumbGitServer = self.server.owner
        server.requests.append(self.path)
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
        self.requests: list[str] = []  # the path of every request, in order
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

    @property
    def fetches(self) -> int:
        """Clones and fetches served so far: each begins by reading info/refs."""
        return sum(1 for path in list(self.requests) if path.startswith("/info/refs"))

    def hang(self) -> None:
        self.hanging.set()

    def close(self) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class _SmartHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        self._serve()

    def do_POST(self):
        self._serve()

    def _serve(self):
        server: SmartGitServer = self.server.owner
        given = self.headers.get("Authorization")
        server.authorizations.append(given)
        if given != server.expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        body = self._body()
        env = {"PATH": os.environ.get("PATH", os.defpath), "GIT_PROJECT_ROOT": str(server.root), "GIT_HTTP_EXPORT_ALL": "1",
               "REQUEST_METHOD": self.command, "PATH_INFO": unquote(path), "QUERY_STRING": query,
               "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
               "REMOTE_USER": server.user, "REMOTE_ADDR": "127.0.0.1", "GIT_CONFIG_NOSYSTEM": "1",
               "GIT_CONFIG_GLOBAL": os.devnull, "HOME": str(server.root)}
        for header, name in (("Git-Protocol", "GIT_PROTOCOL"), ("Content-Encoding", "HTTP_CONTENT_ENCODING")):
            if self.headers.get(header):
                env[name] = self.headers[header]
        out = subprocess.run([server.backend], input=body, env=env, capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        headers = [line.split(": ", 1) for line in head.decode("latin-1").split("\r\n") if ": " in line]
        status = next((int(value.split()[0]) for name, value in headers if name.lower() == "status"), 200)
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in ("status", "content-length"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":  # git streams large requests
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
                if size == 0:
                    return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def log_message(self, *args):
        pass


class SmartGitServer:
    """The bare repositories under `root` at `url + name`, readable only as user:password."""

    def __init__(self, root: Path, user: str, password: str):
        self.root, self.user = root, user
        self.expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.authorizations: list[str | None] = []  # the Authorization header of every request
        exec_path = subprocess.run(["git", "--exec-path"], check=True, capture_output=True, text=True).stdout.strip()
        self.backend = str(Path(exec_path) / "git-http-backend")
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _SmartHandler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="smart-git", daemon=True)
        self.thread.start()

    def close(self) -> None:
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
