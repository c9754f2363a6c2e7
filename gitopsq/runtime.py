"""Building a controller from command-line options: the store, the config repo, the provider."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gitopsq.providers.base import log_dir_for
from gitopsq.store import Store, default_db_path


@dataclass
class ProviderOptions:
    name: str = "local"
    local_slots: int | None = None
    local_gpus: int | None = None
    options: tuple[tuple[str, str], ...] = ()  # --provider-opt KEY=VALUE
    max_nodes: int | None = None
    public_url: str | None = None


def open_store(db: str | None) -> Store:
    return Store(Path(db) if db else default_db_path())


def make_provider(store: Store, opts: ProviderOptions):
    if opts.name == "local":
        from gitopsq.providers.local import make_local_provider

        return make_local_provider(log_dir_for(store.path), store.controller_id, opts.local_slots, opts.local_gpus)
    if opts.name == "slurm":
        from gitopsq.providers.slurm_adapter import make_slurm_provider

        return make_slurm_provider(slurm_dir_for(store.path), dict(opts.options), store.controller_id, opts.max_nodes)
    from gitopsq.providers.cloud import make_cloud_provider

    return make_cloud_provider(opts.name, dict(opts.options), store.controller_id, opts.max_nodes, opts.public_url)


def slurm_dir_for(db_path: Path) -> Path:
    """Where the slurm provider keeps jobs' working directories and logs unless workdir_root says."""
    return db_path.parent / f"{db_path.stem}-slurm"


def make_controller(repo_location: str | None, branch: str, store: Store, opts: ProviderOptions):
    from gitopsq.controller import Controller
    from gitopsq.source import ConfigRepo

    repo = ConfigRepo(repo_location, branch=branch, state_dir=store.path.parent / f"{store.path.stem}-repos") if repo_location else None
    return Controller(store, make_provider(store, opts), repo, branch)
