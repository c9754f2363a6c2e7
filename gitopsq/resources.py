"""Files shipped with gitopsq: the run schema and the example config repo.

They live at the top of the source tree (`schemas/`, `examples-repo/`) where editors and users
find them; a wheel carries them as the data packages `gitopsq.schemas` and
`gitopsq.examples_repo`. An editable install cannot map those, so fall back to the source tree.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

_SOURCE_TREE = Path(__file__).resolve().parent.parent
_FOLDERS = {"gitopsq.schemas": "schemas", "gitopsq.examples_repo": "examples-repo"}


def data_dir(package: str) -> Path:
    """The folder holding one of gitopsq's data packages."""
    try:
        return Path(str(resources.files(package)))
    except ModuleNotFoundError:
        return _SOURCE_TREE / _FOLDERS[package]


def schema_path() -> Path:
    return data_dir("gitopsq.schemas") / "run.schema.json"


def examples_dir() -> Path:
    return data_dir("gitopsq.examples_repo")
