"""Building a controller from command-line options: the store, the config repo, the provider."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gitopsq.providers.base import log_dir_for
from gitopsq.store import StateMissing, Store, default_db_path, open_readonly


@dataclass
class ProviderOptions:
    name: str = "local"
    local_slots: int | None = None
    local_gpus: int | None = None
    options: tuple[tuple[str, str], ...] = ()  # --provider-opt KEY=VALUE
    max_nodes: int | None = None
    public_url: str | None = None


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
        from gitopsq.providers.local import make_local_provider

        return make_local_provider(log_dir_for(store.path), store.controller_id, opts.local_slots, opts.local_gpus)
    from gitopsq.providers.cloud import make_cloud_provider

    return make_cloud_provider(opts.name, dict(opts.options), store.controller_id, opts.max_nodes, opts.public_url)


def make_controller(repo_location: str | None, branch: str, store: Store, opts: ProviderOptions):
    from gitopsq.controller import Controller
    from gitopsq.source import ConfigRepo

    repo = ConfigRepo(repo_location, branch=branch, state_dir=store.path.parent / f"{store.path.stem}-repos") if repo_location else None
    return Controller(store, make_provider(store, opts), repo, branch)
