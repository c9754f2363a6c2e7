"""Files shipped with gitopsq: the run schema and the example config repo.

They live at the top of the source tree (`schemas/`, `examples-repo/`) where editors and users
find them; an installed wheel carries them inside the package (`gitopsq/schemas`,
`gitopsq/examples_repo`, see pyproject.toml). Look in the package first, then the source tree.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _find(installed: str, source: str) -> Path:
    inside = _PACKAGE / installed
    return inside if inside.is_dir() else _PACKAGE.parent / source


def schema_path() -> Path:
    return _find("schemas", "schemas") / "run.schema.json"


def examples_dir() -> Path:
    return _find("examples_repo", "examples-repo")
