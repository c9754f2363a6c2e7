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


@pytest.fixture(scope="session")
def slurm_cluster():
    """One real Slurm cluster (munged, slurmctld, slurmd on 127.0.0.1) for the whole session.

    Skipped with the reason where Slurm's packages are missing or the test is not root (slurmd
    must be), unless GITOPSQ_REQUIRE names slurm: there either is a failure.
    """
    import os
    import shutil

    from tests.requirements import unavailable
    from tests.slurm_cluster import PACKAGES, SlurmCluster, missing_tools

    missing = missing_tools()
    if missing:
        unavailable("slurm", f"Slurm is not installed ({', '.join(missing)} missing): the slurm provider is tested "
                             f"on a real one-machine cluster (install it with {PACKAGES})")
    if os.geteuid() != 0:
        unavailable("slurm", "the test Slurm cluster runs slurmd, which needs root")
    cluster = SlurmCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture
def slurm(slurm_cluster):
    """The session's Slurm cluster with an empty partition before and after the test."""
    slurm_cluster.cancel_all()
    yield slurm_cluster
    slurm_cluster.cancel_all()
