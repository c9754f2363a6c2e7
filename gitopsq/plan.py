"""Pure: desired run specs + recorded state -> the actions that reconcile them.

Exactly the table of DESIGN.md section 3. No I/O: the controller and `gitopsq plan` feed it.

| change in git                        | run active          | run finished or unknown |
| new file / new name                  | -                   | submit                  |
| edit of in-place fields only         | update, no restart  | submit                  |
| any other edit                       | restart             | submit                  |
| file deleted                         | cancel              | nothing                 |
| file now invalid                     | nothing (kept)      | nothing                 |
| file unchanged                       | nothing             | nothing                 |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

# `schedule` changes when the next submissions come, not the one that is active.
IN_PLACE_FIELDS = frozenset({"priority", "inactivity_duration", "max_duration", "retry", "schedule"})
ACTIVE = ("queued", "provisioning", "running", "stopping")  # the statuses of a run that has a live submission


@dataclass(frozen=True)
class Desired:
    """A valid run file at the head commit."""

    name: str
    file: str
    blob: str
    spec: Mapping[str, Any]  # RunSpec.to_dict()


@dataclass(frozen=True)
class Known:
    """What has been recorded of a run."""

    name: str
    file: str | None
    spec: Mapping[str, Any] | None
    present: bool  # its file was in the last reconciled tree
    status: str | None  # latest submission's status, None if never submitted

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


@dataclass(frozen=True)
class Action:
    kind: str  # submit | update | restart | cancel
    run: str
    file: str | None
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # field -> (old, new)
    spec: Mapping[str, Any] | None = None  # the new spec (submit, update, restart)

    def as_dict(self) -> dict:
        return {"run": self.run, "action": self.kind, "file": self.file,
                "priority": (self.spec or {}).get("priority"),
                "changes": {k: [old, new] for k, (old, new) in self.changes.items()}}


def field_changes(old: Mapping | None, new: Mapping) -> dict[str, tuple[Any, Any]]:
    """Top-level fields whose normalised value differs."""
    old = old or {}
    keys = sorted(set(old) | set(new))
    return {k: (old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)}


def plan(desired: Mapping[str, Desired], invalid_files: set[str], known: Mapping[str, Known]) -> list[Action]:
    """The actions that make the recorded state match the desired one, sorted by run name.

    desired: run name -> its valid file at head. invalid_files: paths at head that hold a run
    file that did not validate (their runs keep their last valid spec). known: run name -> record.
    """
    actions: list[Action] = []
    stuck = held(desired, invalid_files, known)
    for name, want in desired.items():
        if name in stuck:
            continue
        have = known.get(name)
        if have is None or have.spec is None:
            actions.append(Action("submit", name, want.file, field_changes(None, want.spec), want.spec))
            continue
        changes = field_changes(have.spec, want.spec)
        if have.active:
            if not changes:
                continue
            kind = "update" if set(changes) <= IN_PLACE_FIELDS else "restart"
            actions.append(Action(kind, name, want.file, changes, want.spec))
        elif changes or not have.present:
            # Finished (or never run): an edit or a re-added file is a new submission.
            actions.append(Action("submit", name, want.file, changes, want.spec))
    for name, have in known.items():
        if name in desired or not have.present:
            continue
        if have.file in invalid_files:
            continue  # its file is broken, not gone: the last valid spec keeps running
        if have.active:
            actions.append(Action("cancel", name, have.file))
    return sorted(actions, key=lambda a: a.run)


def held(desired: Mapping[str, Desired], invalid_files: set[str], known: Mapping[str, Known]) -> dict[str, str]:
    """Runs another file now claims while the file that defines them does not validate.

    The broken file still holds the name (as with two files claiming one name): the run keeps
    its last valid spec until that file is fixed or deleted. Returns run name -> the reason.
    """
    out = {}
    for name, want in desired.items():
        have = known.get(name)
        if have and have.present and have.file != want.file and have.file in invalid_files:
            out[name] = f"run {name!r} is defined by {have.file}, which does not validate: fix or delete that file first"
    return out


def absent(desired: Mapping[str, Desired], invalid_files: set[str], known: Mapping[str, Known]) -> list[str]:
    """Runs whose file is gone from head (to be marked absent, whatever their status)."""
    return sorted(name for name, have in known.items()
                  if name not in desired and have.present and have.file not in invalid_files)
