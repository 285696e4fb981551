"""The start-up checks in `autoresearch run` (doctor.preflight, called by loop.run): a run that
cannot work stops at once with one line naming the fix, before anything trains or is recorded."""

import os
import subprocess
import sys
from pathlib import Path

import git
import pytest

from conftest import REPO_ROOT
from fake_llm_server import FakeLLMServer, status
from standin import make_lab


def run_cli(lab: Path, *args: str, env: dict | None = None, tag: str = "t") -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "autoresearch", "run", "--tag", tag, "--profile", "cpu", "--time-budget", "5",
               "--baseline-repeats", "1", "--max-experiments", "2", *args]
    return subprocess.run(command, cwd=lab, env=env or dict(os.environ), capture_output=True, text=True, timeout=120)


def assert_stopped_before_anything(lab: Path, done: subprocess.CompletedProcess, message: str, tag: str = "t"):
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert "(see `autoresearch doctor`)" in done.stderr
    assert not (lab / "results" / tag).exists()  # no run.json, no results.tsv, no rows
    assert f"autoresearch/{tag}" not in [h.name for h in git.Repo(lab).heads]


def test_unprepared_data_stops_the_run_with_the_prepare_command(tmp_repo, tmp_path):
    lab = make_lab(tmp_repo, train_py=(REPO_ROOT / "train.py").read_text(),
                   prepare_py=(REPO_ROOT / "prepare.py").read_text())
    env = {k: v for k, v in os.environ.items() if k != "AUTORESEARCH_SOURCE"}
    env["AUTORESEARCH_CACHE"] = str(tmp_path / "empty-cache")
    done = run_cli(lab, env=env)
    assert_stopped_before_anything(lab, done, "data: source 'stdlib' is not prepared")
    assert "fix: autoresearch prepare --profile cpu --source stdlib" in done.stderr


def test_a_missing_agent_command_stops_the_run(tmp_repo):
    lab = make_lab(tmp_repo)
    done = run_cli(lab, "--proposer", "command", "--command", "no-such-agent-x1 --flag")
    assert_stopped_before_anything(lab, done, "agent: 'no-such-agent-x1' is not found on PATH")


def test_a_rejected_key_stops_the_run_after_one_cheap_call(tmp_repo):
    lab = make_lab(tmp_repo)
    with FakeLLMServer() as server:
        server.push(status(401, "invalid api key"))
        env = {**os.environ, "OPENAI_API_KEY": "sk-wrong-key"}
        done = run_cli(lab, "--proposer", "openai", "--model", "gpt-x", "--base-url", server.openai_url, env=env)
        assert_stopped_before_anything(lab, done, "refused the key (HTTP 401")
        assert "set a valid OPENAI_API_KEY" in done.stderr and "sk-wrong-key" not in done.stderr
        assert [(r.path, r.body) for r in server.requests] == [("/v1/models", None)]  # nothing generated


def test_an_ab_checks_every_arm_before_its_baseline(tmp_repo):
    lab = make_lab(tmp_repo)
    with FakeLLMServer() as server:
        server.push(status(401, "invalid api key"))
        env = {**os.environ, "OPENAI_API_KEY": "sk-wrong-key"}
        done = subprocess.run([sys.executable, "-m", "autoresearch", "ab", "--tag", "t", "--profile", "cpu",
                               "--arm", "hparam", "--arm", "openai:gpt-x", "--base-url", server.openai_url],
                              cwd=lab, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.startswith("error: arm openai:gpt-x: proposer: ")
    assert done.stderr.count("\n") == 1 and not (lab / "results").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU answer")
def test_the_gpu_profile_without_a_gpu_stops_the_run(tmp_repo):
    lab = make_lab(tmp_repo)
    done = subprocess.run([sys.executable, "-m", "autoresearch", "run", "--tag", "t", "--profile", "gpu"],
                          cwd=lab, capture_output=True, text=True, timeout=120)
    assert_stopped_before_anything(lab, done, "gpu: profile gpu but no CUDA device is visible")
