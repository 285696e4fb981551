"""Shared fixtures: real git repositories, real files."""

import os
import subprocess
import sys
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


def lab_env(cache: Path) -> dict[str, str]:
    """The lab's variables for a train.py or loop run on `cache` (add them to os.environ yourself).

    EVAL_TOKENS 16384 keeps eval to a second while leaving room for an eval batch of up to 64 rows
    of 256 tokens (evaluate_bpb refuses a batch larger than EVAL_TOKENS).
    """
    return {
        "AUTORESEARCH_CACHE": str(cache),
        "AUTORESEARCH_PROFILE": "cpu",
        "AUTORESEARCH_SOURCE": "stdlib",
        "AUTORESEARCH_EVAL_TOKENS": str(2**14),
    }


@pytest.fixture(scope="session")
def lab_cache(tmp_path_factory) -> Path:
    """A cache root holding a small stdlib source prepared for the cpu profile (~250k train tokens)."""
    cache = tmp_path_factory.mktemp("lab_cache")
    result = subprocess.run(
        [sys.executable, "prepare.py", "--profile", "cpu", "--source", "stdlib", "--max-docs", "60"],
        cwd=REPO_ROOT, env={**os.environ, **lab_env(cache)}, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return cache
