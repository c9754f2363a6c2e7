"""The controller's provider, rebuilt for questions only (never a launch): what a spec needs from
it and whether it can ever run there. `apply -Q` asks before committing; `plan --db` asks with the
provider `serve` recorded in the state (a daemon answers `plan --server` with its own provider).
"""

from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from gitopsq.spec import RunSpec


class ProviderUnavailable(Exception):
    """The provider cannot be built here (bad options, no credentials in this environment)."""


class ProviderCheck:
    """The provider's own demand() and unsatisfiable() (those the controller asks before queueing):
    the local one over this machine (GPUs from --local-gpus, else nvidia-smi), Slurm's partition
    from its options, a cloud one from its options and the environment's credentials."""

    def __init__(self, name: str = "local", options: dict | None = None, local_gpus: int | None = None,
                 local_slots: int | None = None):
        self.name, self.options = name, dict(options or {})
        self.local_gpus, self.local_slots = local_gpus, local_slots

    def __call__(self, spec: RunSpec) -> str | None:
        """Why the provider can never run `spec`, or None."""
        with self.provider() as provider:
            return provider.unsatisfiable(spec)

    @contextmanager
    def provider(self) -> Iterator:
        """The provider, for as many questions as the block asks; raises ProviderUnavailable."""
        from gitopsq.providers.base import ProviderConfigError

        with tempfile.TemporaryDirectory(prefix="gitopsq-check-") as scratch:  # the driver keeps state: none is wanted
            if self.name == "local":
                from gitopsq.providers.local_adapter import make_local_provider

                yield make_local_provider(Path(scratch), "provider-check", self.local_slots, self.local_gpus)
                return
            if self.name == "slurm":
                from gitopsq.providers.slurm_adapter import make_slurm_provider

                try:  # its job files in the scratch folder: nothing is submitted
                    provider = make_slurm_provider(Path(scratch), {**self.options, "workdir_root": scratch}, "provider-check")
                except ProviderConfigError as exc:
                    raise ProviderUnavailable(str(exc)) from None
                yield provider
                return
            from gitopsq.providers.cloud import make_cloud_provider

            try:  # the callback URL is never used: nothing is launched
                provider = make_cloud_provider(self.name, self.options, "provider-check", public_url="http://127.0.0.1")
            except ProviderConfigError as exc:
                raise ProviderUnavailable(str(exc)) from None
            yield provider

    def as_dict(self) -> dict:
        """What `serve` records in the state (no credentials: those never go there)."""
        return {"name": self.name, "options": self.options, "local_gpus": self.local_gpus, "local_slots": self.local_slots}

    @classmethod
    def from_text(cls, text: str | None) -> ProviderCheck | None:
        if not text:
            return None
        data = json.loads(text)
        return cls(data["name"], data.get("options"), data.get("local_gpus"), data.get("local_slots"))


def judgment(provider, spec: dict) -> dict:
    """{"needs", "unsatisfiable"} of a spec (RunSpec.to_dict() form), as `provider` says."""
    parsed = RunSpec.from_dict(spec)
    return {"needs": dict(provider.demand(parsed)), "unsatisfiable": provider.unsatisfiable(parsed)}
