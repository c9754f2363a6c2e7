"""Fixtures every test shares."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def isolated_git(monkeypatch, tmp_path):
    """Git as on a fresh CI machine: no user config, and an identity for commits."""
    empty = tmp_path / "empty.gitconfig"
    empty.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(empty))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "gitopsq test")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "test@gitopsq.dev")


@pytest.fixture
def cleanup_nodes(tmp_path):
    """Destroys every local node a test left under tmp_path/state (processes must not outlive tests)."""
    yield
    from gitopsq.providers.local import LocalNodeDriver

    state = tmp_path / "state" / "gitopsq-nodes"
    if state.exists():
        driver = LocalNodeDriver(state, slots=1, gpus=0)
        for node in driver.list_nodes():
            driver.destroy_node(node, ex_timeout=2)


@pytest.fixture
def state_dir(tmp_path):
    """A local driver's state folder; every node a test left in it is destroyed afterwards."""
    from gitopsq.providers.local import LocalNodeDriver

    state = tmp_path / "state"
    yield state
    driver = LocalNodeDriver(state, slots=1, gpus=0)
    for node in driver.list_nodes():
        driver.destroy_node(node, ex_timeout=1)
