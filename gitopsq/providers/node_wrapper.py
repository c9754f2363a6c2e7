"""The process that owns one local node: it runs the node's command and contains what it starts.

Started by the local driver's launcher as `python -I -S node_wrapper.py EXIT_FILE LOG_FILE
MAX_LOG GRACE USER COMMAND...`, in a session of its own, so it is not the controller's child. It
imports nothing but the standard library (never gitopsq: an upgrade must not change a running
node) and:

- runs COMMAND as USER when it is `uid:gid:groups` (the run user: supplementary groups, group and
  user are set in the child before it execs), or as itself when it is `-`; the wrapper itself keeps
  its user, so the log and the exit file stay the controller's;

- is a child subreaper (PR_SET_CHILD_SUBREAPER): whatever the command starts stays below it,
  even what double-forks or calls setsid, since orphans are re-parented here, not to init;
- owns the pipe from the command's stdout and stderr and writes the log, live, capped at
  MAX_LOG bytes: past the cap it keeps the tail, under a line saying how much was cut; when
  the disk is full it drops output (the run goes on) and says how much once there is room;
- when the command ends, or on SIGTERM/SIGINT/SIGHUP, ends every process still below it
  (TERM, then KILL after GRACE seconds), reaps them, and only then records the command's exit
  status (128+N for signal N) by overwriting EXIT_FILE in place: the driver reserved its space
  at launch, so a full disk cannot lose it. The node's slot is busy for as long as this runs.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import signal
import subprocess
import sys
import time

PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36
CHUNK = 65536
TICK = 0.05  # how often processes are looked at while the run is ending
GIVE_UP = 10.0  # seconds of SIGKILL after which what is left cannot be ended by us (setuid)


class Log:
    """The run's output: appended as it comes, capped keeping the tail; a full disk costs output only."""

    def __init__(self, path: str, limit: int):
        self.fd = os.open(path, os.O_RDWR)
        self.size = os.fstat(self.fd).st_size
        self.limit = limit
        self.head = 0  # length of the cut line at the top of the file
        self.cut = 0  # bytes dropped to stay under the limit
        self.lost = 0  # bytes dropped because they could not be written (disk full)
        self.why = b""  # why they could not

    def write(self, data: bytes) -> None:
        note = b"[gitopsq: %d bytes of output lost: %s]\n" % (self.lost, self.why) if self.lost else b""
        try:
            if self.size + len(note) + len(data) > self.limit:
                self._cut(note + data)
            else:
                self._append(note + data)
        except OSError as exc:
            self.lost += len(data)
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            self.why = b"disk full" if full else os.strerror(exc.errno or errno.EIO).encode()
        else:
            self.lost = 0

    def finish(self) -> None:
        """Say what was lost, if the disk has room for that now."""
        if self.lost:
            self.write(b"")

    def _append(self, data: bytes) -> None:
        done = 0
        try:
            while done < len(data):
                done += os.pwrite(self.fd, data[done:], self.size + done)
        except OSError:
            os.ftruncate(self.fd, self.size)  # all or nothing: no half chunk before the loss note
            raise
        self.size += done

    def _cut(self, data: bytes) -> None:
        # Down to half the limit, so the next cut is half a limit of output away, not every write.
        keep = self.limit // 2
        body = self.size - self.head
        from_file = min(body, max(0, keep - len(data)))
        kept = (os.pread(self.fd, from_file, self.size - from_file) if from_file else b"") + data
        kept = kept[-keep:]
        newline = kept.find(b"\n")
        if 0 <= newline < len(kept) - 1:
            kept = kept[newline + 1:]  # start at a whole line
        cut = self.cut + body + len(data) - len(kept)
        line = b"[gitopsq: %d bytes of output cut here]\n" % cut
        content = line + kept
        try:
            # In place: the log shrinks, so this needs no room and works on a full disk too.
            if os.pwrite(self.fd, content, 0) != len(content):
                raise OSError("short write")
            os.ftruncate(self.fd, len(content))
        except OSError:
            # Only when the log was shorter than what it keeps (a huge chunk) and the disk is full:
            # the old content is partly overwritten, so it goes; the caller counts `data` as lost.
            os.ftruncate(self.fd, 0)
            self.size = self.head = 0
            self.cut += body
            raise
        self.size, self.head, self.cut = len(content), len(line), cut


def descendants() -> list[int]:
    """Live processes below this one: with the subreaper flag, everything the run started."""
    children: dict[int, list[tuple[int, bytes]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append((int(entry), fields[0]))
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    found, todo = [], [os.getpid()]
    while todo:
        for pid, state in children.get(todo.pop(), ()):
            todo.append(pid)
            if state not in (b"Z", b"X"):
                found.append(pid)
    return found


def send(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):  # gone, or setuid: not ours to signal
            pass


def exit_code(wait_status: int) -> int:
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code  # killed by signal N: 128+N, as a shell says


def record(path: str, code: int) -> None:
    """Overwrite the reserved exit file in place: no new space needed, so a full disk cannot stop it."""
    text = b"%d\n" % code
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:  # not reserved: write it whole
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        reserved = os.fstat(fd).st_size
        os.pwrite(fd, text.rjust(reserved) if reserved > len(text) else text, 0)
    finally:
        os.close(fd)


def run_as(user: str) -> dict:
    """Popen's arguments that make the child USER (`uid:gid:g1,g2`), or none for `-`."""
    if user == "-":
        return {}
    uid, gid, groups = user.split(":")
    return {"user": int(uid), "group": int(gid), "extra_groups": [int(g) for g in groups.split(",") if g]}


def main(argv: list[str]) -> int:
    exit_path, log_path, limit, grace, user, *command = argv
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    libc.prctl(PR_SET_NAME, b"gitopsq-node", 0, 0, 0)

    # Signals only wake the loop below (through the wakeup pipe); the loop decides.
    stop = []
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)  # a full pipe already means "wake up"
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: stop.append(signum))
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)

    log = Log(log_path, int(limit))
    out_r, out_w = os.pipe()
    try:
        # restore_signals: Python ignores SIGPIPE and SIGXFSZ; the run gets the defaults a shell would
        # give it (the handlers set above are reset by exec). The child is reaped below, not by Popen.
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out_w, stderr=out_w,
                                 restore_signals=True, **run_as(user))
        main_pid, status = child.pid, None
    except (OSError, subprocess.SubprocessError) as exc:
        log.write(f"gitopsq: cannot run {command[0]}: {exc}\n".encode())
        child, main_pid, status = None, None, 127
    os.close(out_w)

    reading, term_at = True, None
    while True:
        while True:  # reap: the command's status is kept, anything else is just collected
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid == main_pid:
                status = exit_code(wait_status)
        ending = status is not None or bool(stop)
        if ending:  # the run is over: end whatever it left running
            left = descendants()
            if not left:
                break
            if term_at is None:
                term_at = time.monotonic()
                send(left, signal.SIGTERM)
                send(left, signal.SIGCONT)  # a stopped process acts on TERM only once continued
            elif time.monotonic() - term_at >= float(grace) + GIVE_UP:
                log.write(b"[gitopsq: could not end processes %s]\n" % " ".join(map(str, left)).encode())
                break
            elif time.monotonic() - term_at >= float(grace):
                send(left, signal.SIGKILL)
        ready = select.select([wake_r, out_r] if reading else [wake_r], [], [], TICK if ending else None)[0]
        if out_r in ready:
            chunk = os.read(out_r, CHUNK)
            if chunk:
                log.write(chunk)
            else:
                reading = False  # every writer is gone
        if wake_r in ready:
            while True:
                try:
                    if not os.read(wake_r, 512):
                        break
                except BlockingIOError:
                    break

    if status is None:  # the command died between the last reap and the last look at /proc
        pid, wait_status = os.waitpid(main_pid, os.WNOHANG)
        status = exit_code(wait_status) if pid else 255  # 255: still there after all (given up)
    os.set_blocking(out_r, False)
    while reading:  # what the run wrote just before it ended
        try:
            chunk = os.read(out_r, CHUNK)
        except BlockingIOError:
            break
        reading = bool(chunk)
        if chunk:
            log.write(chunk)
    log.finish()
    record(exit_path, status)
    if child is not None:
        child.returncode = status  # reaped above: Popen must not wait for it again
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
