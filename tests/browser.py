"""Headless Chromium for the browser tests, and a small DOM over html.parser to read what it rendered.

`chromium()` runs one command (--dump-dom, --screenshot); `Browser` drives one page over the
DevTools protocol on a pipe (--remote-debugging-pipe: no websocket library), for what a command
cannot do: type into a form, submit it, keep cookies between pages.

Chromium comes from Debian's package. Where it is missing the browser tests are skipped with the
reason, unless GITOPSQ_REQUIRE names chromium (`.ci/run` sets it, after installing the package):
there a missing browser is a failure, so CI can never pass by skipping them.
"""

from __future__ import annotations

import base64
import json
import os
import select
import signal
import subprocess
import time
from html.parser import HTMLParser

import pytest

from tests.requirements import require


def chromium(tmp_path, *args: str, timeout: float = 60) -> str:
    """Run headless Chromium; returns stdout."""
    binary = require("chromium", "the dashboard is tested in headless Chromium", "apt-get install -y chromium")
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # Chromium's helper processes are in its session
        proc.communicate()
        pytest.fail(f"chromium did not finish within {timeout}s: {' '.join(args)}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {err[-2000:]}"
    return out


class Browser:
    """One headless Chromium page driven over the DevTools protocol: messages are JSON, each ended
    by a NUL byte; Chromium reads them from its fd 3 and writes to its fd 4."""

    def __init__(self, tmp_path, timeout: float = 30):
        binary = require("chromium", "the dashboard is tested in headless Chromium", "apt-get install -y chromium")
        self.timeout = timeout
        profile = tmp_path / "chromium-profile"
        profile.mkdir(exist_ok=True)
        its_input, to_chromium = os.pipe()
        from_chromium, its_output = os.pipe()
        # Chromium's ends moved above 9, so that placing them at 3 and 4 below cannot overwrite one another
        its_input, its_output = (_above_nine(fd) for fd in (its_input, its_output))
        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]
        # bash (dash takes one-digit fds only) puts the pipe's ends where Chromium looks, then becomes it
        self.proc = subprocess.Popen(["bash", "-c", f'exec 3<&{its_input} 4>&{its_output} {its_input}<&- {its_output}>&- "$@"',
                                      "bash", *args], pass_fds=(its_input, its_output), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        os.close(its_input)
        os.close(its_output)
        self._out, self._in = to_chromium, from_chromium
        self._buffer, self._next_id, self.events = b"", 0, []
        try:
            target = self.call("Target.createTarget", url="about:blank")["targetId"]
            self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            self.call("Page.enable", session=True)
            self.call("Network.enable", session=True)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def call(self, method: str, session: bool = False, **params) -> dict:
        """Send one command; returns its result (events that arrive meanwhile are kept in self.events)."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_event(self, method: str) -> dict:
        """The first event `method` of the page since self.events was last cleared (waits for it)."""
        while True:
            for event in self.events:
                if event.get("method") == method and event.get("sessionId") == self.session:
                    return event
            self.events.append(self._read())

    def goto(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", session=True, url=url)
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def type_into(self, selector: str, text: str) -> None:
        """Focus the field and type `text` into it, as a person would."""
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        self.call("Input.insertText", session=True, text=text)

    def click_and_wait(self, selector: str) -> None:
        """Click an element that leads to a new page (a form's button, a link), and wait for that page."""
        self.events.clear()
        self.evaluate(f"document.querySelector({json.dumps(selector)}).click()")
        self.wait_event("Page.loadEventFired")

    def dom(self) -> "Node":
        return parse(self.evaluate("document.documentElement.outerHTML"))

    def cookies(self) -> list[dict]:
        return self.call("Network.getCookies", session=True)["cookies"]

    def screenshot(self, width: int, height: int) -> bytes:
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height, deviceScaleFactor=1,
                  mobile=False)
        return base64.b64decode(self.call("Page.captureScreenshot", session=True, format="png")["data"])

    def _read(self) -> dict:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise AssertionError(f"chromium did not answer within {self.timeout}s")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise AssertionError("chromium closed its DevTools pipe (it exited)")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        for fd in (self._out, self._in):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # Chromium's helper processes are in its session
        except ProcessLookupError:
            pass
        self.proc.wait()


def _above_nine(fd: int) -> int:
    import fcntl

    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


# --- a small DOM over html.parser -----------------------------------------------------------------

VOID = {"meta", "br", "img", "input", "link", "hr", "col", "area", "base", "source", "wbr"}


class Node:
    def __init__(self, tag: str, attrs: dict, parent: "Node | None"):
        self.tag, self.attrs, self.parent, self.children = tag, attrs, parent, []

    @property
    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def find_all(self, tag: str | None = None, cls: str | None = None) -> list["Node"]:
        found = []
        for child in self.children:
            if isinstance(child, Node):
                if (tag is None or child.tag == tag) and (cls is None or cls in child.classes):
                    found.append(child)
                found.extend(child.find_all(tag, cls))
        return found

    def one(self, tag: str | None = None, cls: str | None = None) -> "Node":
        found = self.find_all(tag, cls)
        assert len(found) == 1, f"expected one <{tag or '*'} class={cls}>, found {len(found)}"
        return found[0]


class DomBuilder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self.current = Node("#document", {}, None)

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_endtag(self, tag):
        node = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data):
        self.current.children.append(data)


def parse(html: str) -> Node:
    builder = DomBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


def squash(text: str) -> str:
    return " ".join(text.split())


def dump_dom(tmp_path, url: str) -> Node:
    return parse(chromium(tmp_path, "--dump-dom", url))
