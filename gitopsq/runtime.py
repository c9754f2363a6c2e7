"""Building a controller from command-line options: the store, the config repo, the provider."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from gitopsq.providers.base import ProviderConfigError, bundles_dir_for, cloud_logs_dir_for, log_dir_for, workspace_dir_for
from gitopsq.store import StateMissing, Store, default_db_path, open_readonly


@dataclass
class ProviderOptions:
    name: str = "local"
    local_slots: int | None = None
    local_gpus: int | None = None
    options: tuple[tuple[str, str], ...] = ()  # --provider-opt KEY=VALUE
    max_nodes: int | None = None
    public_url: str | None = None
    max_log_size: int | None = None  # bytes of each local run's log kept (its tail)
    keep_workdirs: int | None = None  # ended working directories kept per local run (its last submissions')
    workdirs_max_size: int | None = None  # bytes the kept working directories may take in total
    insecure_public_url: bool = False  # allow an http:// public_url off loopback
    credentials: Mapping[str, str] | None = None  # a cloud provider's, by variable name (None: the environment's)
    run_user: str | None = None  # --run-user: the user local process runs execute as (default: gitopsq-run if it exists)
    no_run_user: bool = False  # --no-run-user: runs execute as the controller's own user
    allow_cidrs: tuple[str, ...] = ()  # --allow-cidr: the networks cloud runs' ports are opened to


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_byte_size(text: str) -> int:
    """Bytes from `512KB`, `16MB`, `20GB`, `1TB` (1024-based, like sizes in run files) or a number of bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:([KMGT])(?:i?B)?)?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"{text!r} is not a size: use 512KB, 16MB, 20GB or a number of bytes")
    return int(float(match[1]) * _SIZE_UNITS[(match[2] or "").upper()])


def parse_log_size(text: str) -> int:
    """A log's cap: a size (parse_byte_size) of at least MIN_LOG_SIZE."""
    from gitopsq.providers.local import MIN_LOG_SIZE

    size = parse_byte_size(text)
    if size < MIN_LOG_SIZE:
        raise ValueError(f"{text!r} is too small: at least {MIN_LOG_SIZE // 1024}KB, e.g. 16MB")
    return size


def state_path(db: str | None) -> Path:
    """The state database: --db, else $GITOPSQ_DB, else the user's state directory."""
    return Path(db) if db else default_db_path()


def open_store(db: str | None) -> Store:
    return Store(state_path(db))


def open_existing_store(db: str | None) -> Store:
    """The state for a command that writes to it but must not create it (a wrong --db is an error)."""
    path = state_path(db)
    if not path.is_file():
        raise StateMissing(path)
    return Store(path)


def open_store_readonly(db: str | None) -> Store:
    """The state for a command that only reads it: never created, written or migrated."""
    return open_readonly(state_path(db))


def make_provider(store: Store, opts: ProviderOptions):
    if opts.name == "local":
        from gitopsq.providers.local import LocalError
        from gitopsq.providers.local_adapter import make_local_provider

        choice = _run_user(store, opts)
        try:
            return make_local_provider(log_dir_for(store.path), store.controller_id, opts.local_slots, opts.local_gpus,
                                       max_log_size=opts.max_log_size, keep_workdirs=opts.keep_workdirs,
                                       workdirs_max_size=opts.workdirs_max_size, run_user=choice.user,
                                       why_no_run_user=choice.why_not)
        except LocalError as exc:  # e.g. a run user that cannot reach the working directories
            raise ProviderConfigError(str(exc)) from None
    if opts.name == "slurm":
        from gitopsq.providers.slurm_adapter import make_slurm_provider

        return make_slurm_provider(slurm_dir_for(store.path), dict(opts.options), store.controller_id, opts.max_nodes)
    from gitopsq.providers.cloud import make_cloud_provider

    return make_cloud_provider(opts.name, dict(opts.options), store.controller_id, opts.max_nodes, opts.public_url,
                               bundles=bundles_dir_for(store.path), insecure_public_url=opts.insecure_public_url,
                               credentials=opts.credentials, logs=cloud_logs_dir_for(store.path),
                               max_log_size=opts.max_log_size, allow_cidrs=opts.allow_cidrs)


def _private_folder(folder: Path) -> None:
    """0700: what git and the staging make inside (with the umask's modes: clones, staged trees)
    stays the controller's, also in a state directory a run user may pass through."""
    folder.mkdir(mode=0o700, exist_ok=True)
    if stat.S_IMODE(folder.stat().st_mode) != 0o700:
        folder.chmod(0o700)


def _run_user(store: Store, opts: ProviderOptions):
    """The run user (runuser.choose); with one, the state directory gitopsq made private (0700)
    becomes 0711, so that the user passes through it to its runs' folders, never lists it."""
    from gitopsq.providers import runuser

    try:
        choice = runuser.choose(opts.run_user, opts.no_run_user)
    except runuser.RunUserError as exc:
        raise ProviderConfigError(str(exc)) from None
    folder = store.path.parent
    if choice.user is not None and folder.stat().st_uid == os.geteuid() and stat.S_IMODE(folder.stat().st_mode) == 0o700:
        runuser.make_traversable(folder)
    return choice


def slurm_dir_for(db_path: Path) -> Path:
    """Where the slurm provider keeps jobs' working directories and logs unless workdir_root says."""
    return db_path.parent / f"{db_path.stem}-slurm"


def make_controller(repo_location: str | None, branch: str, store: Store, opts: ProviderOptions):
    from gitopsq.controller import Controller
    from gitopsq.source import ConfigRepo

    repos = store.path.parent / f"{store.path.stem}-repos"
    for folder in (repos, workspace_dir_for(store.path)):
        _private_folder(folder)
    repo = ConfigRepo(repo_location, branch=branch, state_dir=repos) if repo_location else None
    return Controller(store, make_provider(store, opts), repo, branch)
