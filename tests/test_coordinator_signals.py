"""Stopping a multi-worker run (issue 11), through the CLI as a subprocess: Ctrl-C stops every
worker's training; kill -9 of the coordinator leaves trainings that the resumed run stops before
anything trains, and the record has no row lost or doubled."""

import json
import signal
import sys
from pathlib import Path

import git
import psutil
import pytest

from autoresearch.records import ResultsFile, RunState
from invariants import UserCheckout
from reliability import Harness, make_user_lab, read_json, secret_env, wait_for

TESTS = Path(__file__).resolve().parent
AGENT = f"{sys.executable} {TESTS / 'standin_agent.py'}"

pytestmark = pytest.mark.slow


@pytest.fixture
def user_lab(tmp_repo):
    return make_user_lab(tmp_repo)


def rows(lab: Path):
    return ResultsFile(lab / "results/t/results.tsv").rows()


def start(lab: Path, tmp_path: Path, steps: list, *args, name: str = "harness") -> Harness:
    script = tmp_path / f"{name}.json"
    script.write_text(json.dumps(steps))
    args = ("--proposer", "command", "--command", AGENT, "--workers", "3", *args)
    return Harness(lab, args, secret_env(STANDIN_SCRIPT=str(script)), tmp_path / "out", name)


def trainings(lab: Path) -> list[int]:
    """The pids of the trainings the local workers run now (their pid files)."""
    pids = []
    for pid_file in (lab / ".autoresearch/workers/t").glob("*/*/training.json"):
        data = read_json(pid_file)
        if data and data.get("pid"):
            pids.append(int(data["pid"]))
    return pids


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def check_run(lab: Path, user: UserCheckout, experiments: int | None = None) -> list:
    """Rows unique per (experiment, trial), the branch and the clean worktree at the last keep,
    the user's checkout untouched."""
    got = rows(lab)
    keys = [(r.experiment, r.trial) for r in got]
    assert len(keys) == len(set(keys)), keys
    if experiments is not None:
        assert len({r.experiment for r in got}) == experiments
    kept = [r for r in got if r.status == "keep"]
    tip = git.Repo(lab).commit("autoresearch/t").hexsha[:7]
    assert tip == kept[-1].commit
    worktree = git.Repo(lab / ".autoresearch/worktrees/t")
    assert worktree.head.commit.hexsha[:7] == tip and not worktree.is_dirty(untracked_files=True)
    assert UserCheckout.take(lab).diff(user) == []
    return got


def test_ctrl_c_stops_every_worker_and_the_run_resumes(user_lab, tmp_path):
    lab, user = user_lab
    slow = [{"VAL": 0.99 - i / 1000, "SLEEP": 120.0} for i in range(6)]
    harness = start(lab, tmp_path, slow, "--max-experiments", "6")
    wait_for(lambda: len(rows(lab)) >= 1, what="the baseline row")
    running = wait_for(lambda: len(trainings(lab)) >= 3 and trainings(lab), what="three trainings at once")
    harness.signal(signal.SIGINT, group=True)
    assert harness.wait(90) == 130, harness.stderr()
    assert "Traceback" not in harness.stderr()
    for pid in running:
        assert not alive(pid), pid
    assert RunState.load(lab / "results/t/run.json")["state"] == "stopped"
    check_run(lab, user)

    again = start(lab, tmp_path, [{"VAL": 0.98 - i / 1000, "SLEEP": 0.3} for i in range(10)], "--max-experiments", "6",
                  name="resume")
    assert again.wait(180) == 0, again.stderr()
    check_run(lab, user, experiments=6)


def test_kill_9_of_the_coordinator_then_resume_loses_and_doubles_no_row(user_lab, tmp_path):
    lab, user = user_lab
    # ideas built on a best that moved and overlapping it are thrown away: plenty of steps
    steps = [{"VAL": 0.99, "SLEEP": 0.3}] * 3 + [{"VAL": 0.97, "SLEEP": 120.0}] * 20
    harness = start(lab, tmp_path, steps, "--max-experiments", "8")
    wait_for(lambda: len(rows(lab)) >= 2, what="two rows")
    orphans = wait_for(lambda: len(trainings(lab)) >= 2 and trainings(lab), what="trainings in flight")
    before = rows(lab)
    harness.signal(signal.SIGKILL)  # the coordinator only: its trainings live on in their sessions
    harness.wait(30)
    assert any(alive(pid) for pid in orphans)

    again = start(lab, tmp_path, [{"VAL": 0.96 - i / 1000, "SLEEP": 0.3} for i in range(12)],
                  "--max-experiments", "8", name="resume")
    wait_for(lambda: not any(alive(pid) for pid in orphans), 30, "the orphans to be stopped")
    assert again.wait(180) == 0, again.stderr()
    got = check_run(lab, user)
    assert got[:len(before)] == before  # every row of the killed run is still there, once
    assert len({r.experiment for r in got}) == 8
    assert not trainings(lab)
