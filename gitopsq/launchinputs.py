"""What a launch needs besides capacity: the values of its secrets and its working tree.

The controller sequences these (gitopsq.controller); this module only knows how:

- secrets are looked up by name in the secret store at launch, for that launch only. A run
  whose secret does not exist is not launched: it waits, and `secret set` wakes the controller.
- a run with `repos` or `files` gets its tree prepared from git (gitopsq.workspace) in a
  staging folder under the state directory, which the provider then takes over. Credentials
  for private URL repos come from the same secret store (`git.<host>`), and every value used
  is returned so that the run's logs mask it too.
- a cloud provider packs the tree into bundles/<submission id>.tar.gz for its node to download
  (gitopsq.web.node); the controller removes it when the node ends (`release`), and at start
  those of submissions no longer provisioning or running (`clear_bundles`).
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from gitopsq.providers.base import bundle_path, workspace_dir_for
from gitopsq.secretstore import SecretStore
from gitopsq.source import ConfigRepo
from gitopsq.spec import RunSpec
from gitopsq.store import Store
from gitopsq.workspace import Prepared, WorkspaceError, outside_dir, prepare


@dataclass(frozen=True)
class Tree:
    prepared: Prepared
    credentials: tuple[str, ...]  # secret values used to fetch it (masked in the run's logs)


class LaunchInputs:
    def __init__(self, store: Store, repo: ConfigRepo | None, secrets: SecretStore | None = None,
                 root: Path | None = None):
        self.store = store
        self.repo = repo
        self.secrets = secrets or SecretStore(store)
        self.root = root or workspace_dir_for(store.path)

    # --- secrets ------------------------------------------------------------------------------

    def known_secrets(self) -> set[str]:
        return {row["name"] for row in self.secrets.list()}

    def resolve(self, spec: RunSpec) -> tuple[dict[str, str], list[str]]:
        """(values of the spec's secrets, names that do not exist)."""
        if not spec.secrets:
            return {}, []
        return self.secrets.resolve(spec.secrets)

    def record(self, submission_id: int, attempt: int, values) -> None:
        """Remember what an attempt was given, so its logs stay masked (encrypted, like the secrets)."""
        self.secrets.record_attempt(submission_id, attempt, values)

    # --- the working tree ---------------------------------------------------------------------

    def prepare(self, spec: RunSpec, commit: str | None) -> Tree | None:
        """The run's repos and files in a fresh staging folder; None when it has neither.

        Raises WorkspaceError naming the entry and the reason (a clone that fails, a file
        missing at that commit)."""
        if not spec.repos and not spec.files:
            return None
        if self.repo is None or not commit:
            raise WorkspaceError("repos/files: this controller has no config repository to read them from")
        used: list[str] = []

        def credentials(key: str) -> str | None:
            value = self.secrets.get(key)
            if value is not None:
                used.append(value)
            return value

        dest = self.root / "staging" / uuid.uuid4().hex
        try:
            prepared = prepare(spec, commit, self.repo, dest, credentials=credentials, cache_dir=self.root / "mirrors")
        except BaseException:
            self.discard(dest)
            raise
        return Tree(prepared, tuple(used))

    @staticmethod
    def discard(dest: Path | None) -> None:
        """Remove a staged tree the provider did not take (and its staged outside entries)."""
        if dest is None:
            return
        copies = Path(dest).parent.glob(f"{Path(dest).name}-rank*")  # a cluster run's other nodes' copies
        for path in (Path(dest), outside_dir(Path(dest)), *copies):
            shutil.rmtree(path, ignore_errors=True)

    def clear_staging(self) -> None:
        """At start: trees staged for launches that a crash interrupted (they are prepared again)."""
        shutil.rmtree(self.root / "staging", ignore_errors=True)

    # --- trees packed for cloud nodes ---------------------------------------------------------

    def release(self, submission_id: int) -> None:
        """Its node ended: the tree it downloaded is no longer served (a retry packs it anew)."""
        bundle_path(self.root / "bundles", submission_id).unlink(missing_ok=True)

    def clear_bundles(self, keep: set[int]) -> None:
        """At start: every packed tree but those of the submissions in `keep` (and half-written ones)."""
        folder = self.root / "bundles"
        if not folder.is_dir():
            return
        kept = {bundle_path(folder, sub_id).name for sub_id in keep}
        for path in folder.iterdir():
            if path.name not in kept and not path.is_dir():
                path.unlink(missing_ok=True)
