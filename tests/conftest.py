"""Shared fixtures: real git repositories, real files."""

from pathlib import Path

import git
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def tmp_repo(tmp_path) -> git.Repo:
    """An empty real git repository with a user name and email set."""
    repo = git.Repo.init(tmp_path / "repo", initial_branch="main")
    with repo.config_writer() as cfg:
        cfg.set_value("user", "name", "Test User")
        cfg.set_value("user", "email", "test@example.com")
    return repo
