"""A real one-machine Slurm cluster for the tests: munged, slurmctld and slurmd on 127.0.0.1.

Everything lives in a fresh temp dir (config, munge key and socket, state save dir, spool, logs);
the ports are picked free, the node's CPUs and memory are this machine's, and the commands find
the config through SLURM_CONF, so the cluster touches nothing outside its directory and several
can run side by side. The daemons run in the foreground as children of the test process (with a
parent-death signal, so none outlives a killed test session) and are stopped by pid.

    python -m tests.slurm_cluster    # start one, print how to reach it, stop it on Enter
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PACKAGES = "apt-get install -y slurm-wlm munge"
DAEMONS = ("munged", "slurmctld", "slurmd")
COMMANDS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")
NODE = "gqnode"
PARTITION = "gq"


def missing_tools() -> list[str]:
    """The Slurm and munge programs this machine lacks."""
    sbin = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return [tool for tool in (*DAEMONS, *COMMANDS) if shutil.which(tool, path=sbin) is None]


def _which(tool: str) -> str:
    return shutil.which(tool, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the process that started it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _memory_mb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


class SlurmCluster:
    """Start with `start()`, stop with `stop()` (or use it as a context manager)."""

    def __init__(self, root: Path | None = None, cpus: int | None = None, memory_mb: int | None = None):
        # A short path: Slurm and munge put Unix sockets under it (108 bytes at most).
        self.root = Path(root or tempfile.mkdtemp(prefix="gq-slurm-", dir="/tmp"))
        self.cpus = cpus or os.cpu_count() or 1
        # Below what the machine has, or slurmd registers less than configured and the node drains.
        self.memory_mb = memory_mb or int(_memory_mb() * 0.9)
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.ctld_port = self.slurmd_port = 0
        self.procs: dict[str, subprocess.Popen] = {}
        self.partition = PARTITION
        self.node = NODE

    # --- the environment the Slurm commands need ----------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """Variables that point Slurm's commands at this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *args: str, check: bool = True, timeout: float = 30) -> str:
        """A Slurm command against this cluster; returns stdout."""
        out = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                             env={**os.environ, **self.env})
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {out.returncode}: {out.stderr.strip()}")
        return out.stdout

    # --- start and stop -----------------------------------------------------------------------

    def start(self, timeout: float = 60) -> "SlurmCluster":
        missing = missing_tools()
        if missing:
            raise RuntimeError(f"not installed: {', '.join(missing)} ({PACKAGES})")
        try:
            self._write_files()
            self._spawn("munged", [_which("munged"), "--foreground", "--force", f"--socket={self.munge_socket}",
                                   f"--key-file={self.root / 'munge' / 'munge.key'}",
                                   f"--pid-file={self.root / 'munge' / 'munged.pid'}",
                                   f"--log-file={self.root / 'log' / 'munged.log'}",
                                   f"--seed-file={self.root / 'munge' / 'munged.seed'}"])
            self._wait(lambda: self.munge_socket.exists(), timeout, "munged's socket")
            self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
            self._wait(self._controller_answers, timeout, "slurmctld to answer")
            self._spawn("slurmd", [_which("slurmd"), "-D", "-f", str(self.conf), "-N", self.node])
            self._wait(self._node_idle, timeout, f"node {self.node} to be idle")
            # slurmctld places its first job a few seconds after it starts: wait for that here, so
            # no test sees a job pending in an empty partition.
            probe = self.run("sbatch", "--parsable", "--output=/dev/null", "--wrap", "true").strip()
            self._wait(lambda: self._job_state(probe) not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"),
                       timeout, "a first job to run")
        except BaseException:
            self.stop()
            raise
        return self

    def cancel_all(self, timeout: float = 20) -> None:
        """Cancel every job of the partition and wait until none is left running."""
        subprocess.run([_which("scancel"), f"--partition={self.partition}"], env={**os.environ, **self.env},
                       capture_output=True, timeout=30)
        self._wait_no_jobs(timeout)

    def stop(self) -> None:
        """Cancel every job, then stop slurmd, slurmctld and munged by pid."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.cancel_all()
        for name in reversed(DAEMONS):
            proc = self.procs.pop(name, None)
            if proc is None:
                continue
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for pid in self._stepd_pids():  # job step daemons slurmd left behind (it daemonizes them)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- internals ----------------------------------------------------------------------------

    def _write_files(self) -> None:
        for sub in ("munge", "log", "state", "spool"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        self.ctld_port, self.slurmd_port = _free_port(), _free_port()
        while self.slurmd_port == self.ctld_port:
            self.slurmd_port = _free_port()
        (self.root / "dev").mkdir(exist_ok=True)
        for i in range(2):
            (self.root / "dev" / f"gpu{i}").touch()
        (self.root / "gres.conf").write_text(f"AutoDetect=off\nNodeName={self.node} Name=gpu Type=t4 File={self.root}/dev/gpu[0-1]\n")
        tmp_mb = shutil.disk_usage(self.root).free // 1024**2
        user = "root" if os.getuid() == 0 else os.environ.get("USER", "root")
        self.conf.write_text(f"""\
ClusterName=gitopsqtest
SlurmctldHost={socket.gethostname()}(127.0.0.1)
MailProg=/bin/true
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={self.root / 'state'}
SlurmdSpoolDir={self.root / 'spool'}
SlurmctldPidFile={self.root / 'slurmctld.pid'}
SlurmdPidFile={self.root / 'slurmd.pid'}
SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}
SlurmdLogFile={self.root / 'log' / 'slurmd.log'}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
ReturnToService=2
MinJobAge=300
KillWait=2
InactiveLimit=0
Waittime=0
TmpFS={self.root}
DefMemPerCPU=512
GresTypes=gpu
NodeName={self.node} NodeHostname={socket.gethostname()} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} TmpDisk={tmp_mb} Gres=gpu:t4:2 State=UNKNOWN
PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        self.procs[name] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, **self.env}, preexec_fn=_die_with_parent)
        log.close()

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited {proc.returncode} while waiting for {what}:\n{self.logs(name)}")
            if ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"timed out waiting for {what}:\n{self.logs()}")

    def _controller_answers(self) -> bool:
        out = subprocess.run([_which("scontrol"), "ping"], capture_output=True, text=True, env={**os.environ, **self.env})
        return out.returncode == 0 and "UP" in out.stdout

    def _node_idle(self) -> bool:
        out = subprocess.run([_which("sinfo"), "-h", "-N", "-n", self.node, "-o", "%T"], capture_output=True, text=True,
                             env={**os.environ, **self.env})
        return out.returncode == 0 and out.stdout.strip() == "idle"

    def submit_running(self, *sbatch_args: str, timeout: float = 30) -> str:
        """Submit a job as another user of the cluster would, and wait until Slurm runs it; its id."""
        job_id = self.run("sbatch", "--parsable", "--output=/dev/null", *sbatch_args).strip().split(";")[0]
        self._wait(lambda: self._job_state(job_id) != "PENDING", timeout, f"job {job_id} to start")
        return job_id

    def _job_state(self, job_id: str) -> str:
        return self.run("squeue", "-h", "--states=all", f"--jobs={job_id}", "-O", "State").strip()

    def _wait_no_jobs(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = subprocess.run([_which("squeue"), "-h", "-o", "%i"],  # by default: jobs not yet ended
                                 capture_output=True, text=True, env={**os.environ, **self.env})
            if out.returncode != 0 or not out.stdout.strip():
                return
            time.sleep(0.2)

    def _stepd_pids(self) -> list[int]:
        """slurmstepd processes of this cluster (their command line names our node)."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].startswith(b"slurmstepd") and str(self.root).encode() in b" ".join(argv + self._environ(entry)):
                pids.append(int(entry))
        return pids

    @staticmethod
    def _environ(pid: str) -> list[bytes]:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                return f.read().split(b"\0")
        except OSError:
            return []

    def logs(self, *names: str) -> str:
        parts = []
        for name in names or DAEMONS:
            for path in (self.root / "log" / f"{name}.log", self.root / "log" / f"{name}.out"):
                if path.exists():
                    parts.append(f"--- {path}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)


if __name__ == "__main__":
    with SlurmCluster() as cluster:
        print(f"export SLURM_CONF={cluster.conf}")
        print(cluster.run("sinfo"))
        input("Enter stops the cluster. ")
