"""SIGINT and SIGTERM in every phase, kill -9, orphans and the run lock, against a real
`python -m autoresearch run` subprocess.

Phases are made observable and slow with stand-ins, never with timing guesses:
- proposing: the stand-in agent (tests/standin_agent.py) sleeps; its pid file says it started;
- committing / logging: a `git` on PATH that pauses in `git commit` / `git diff` once armed
  (tests/reliability.py), which says so in a file;
- training: the agent sets SLEEP in train.py; training.json says it started;
- paused: the agent fails five times in a row; the plain log line says the run paused.
SIGINT goes to the harness's whole process group (as Ctrl-C in a terminal does), SIGTERM to its
pid only (as `kill PID` does). Each case must stop with exit code 130, leave every invariant
holding, and resume to finish the run with no row lost or doubled.
"""

import json
import signal
import sys
from pathlib import Path

import psutil
import pytest

from autoresearch.records import ResultsFile, RunState
from invariants import check_invariants
from reliability import TESTS, Harness, fake_git, make_user_lab, read_json, secret_env, wait_for, training_files, training_json

AGENT = f"{sys.executable} {TESTS / 'standin_agent.py'}"
STOPPED = "stopped; resume with: autoresearch run --tag t --resume"


@pytest.fixture
def user_lab(tmp_repo):
    return make_user_lab(tmp_repo)


def rows(lab: Path):
    return ResultsFile(lab / "results/t/results.tsv").rows()


def script(tmp_path: Path, steps: list) -> Path:
    path = tmp_path / "script.json"
    path.write_text(json.dumps(steps))
    return path


def start(lab: Path, tmp_path: Path, steps: list, *args, name: str = "harness", **env) -> Harness:
    env = secret_env(STANDIN_SCRIPT=str(script(tmp_path, steps)), **env)
    args = ("--proposer", "command", "--command", AGENT, "--max-experiments", "2", *args)
    return Harness(lab, args, env, tmp_path / "out", name)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill(pid: int) -> None:
    try:
        psutil.Process(pid).kill()
    except psutil.Error:
        pass


# How to get the harness into each phase: (agent steps, extra env, what to wait for).
def reach(phase: str, lab: Path, tmp_path: Path):
    gitdir = tmp_path / "git"
    env = fake_git(gitdir) if phase in ("committing", "logging") else {}
    if phase == "committing":
        env["FAKEGIT_PAUSE"] = "commit-tree"  # candidates are committed without a worktree (Workspace.commit_on)
    if phase == "logging":
        env["FAKEGIT_PAUSE"] = "diff"
    steps = {
        "proposing": [{"sleep": 120, "VAL": 0.9}],
        "committing": [{"VAL": 0.9}],
        "training": [{"SLEEP": 120.0}],
        "logging": [{"VAL": 0.9}],
        "paused": [{"exit": 3}] * 5,
    }[phase]
    harness = start(lab, tmp_path, steps, **env)

    def baseline_done():
        return len(rows(lab)) == 1

    wait_for(baseline_done, what="the baseline row")
    if phase in ("committing", "logging"):
        (gitdir / "armed").touch()  # only experiment 1 commits / diffs: arm after the baseline
    wait = {
        "proposing": lambda: (tmp_path / "script.json.pid").exists() and "[0001] proposing" in harness.stdout(),
        "committing": lambda: (gitdir / "paused").exists(),
        "training": lambda: "[0001] training" in harness.stdout() and training_json(lab),
        "logging": lambda: (gitdir / "paused").exists(),
        "paused": lambda: "paused asking: the proposer failed 5 times in a row" in harness.stdout(),
    }[phase]
    wait_for(wait, what=f"phase {phase}")
    return harness


PHASES = ["proposing", "committing", "training", "logging", "paused"]


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("phase", PHASES)
def test_a_stop_signal_in_any_phase_stops_cleanly_and_the_run_resumes(user_lab, tmp_path, phase, sig):
    lab, user = user_lab
    harness = reach(phase, lab, tmp_path)
    training = training_json(lab)
    agent = int((tmp_path / "script.json.pid").read_text()) if phase == "proposing" else None
    try:
        harness.signal(signal.Signals[sig], group=sig == "SIGINT")
        code = harness.wait(90)
        assert code == 130, harness.stderr()
        assert harness.stdout().splitlines()[-1] == STOPPED
        assert "Traceback" not in harness.stderr()
        if training:
            assert not alive(training["pid"])
        if agent is not None:
            wait_for(lambda: not alive(agent), 15, "the agent to be stopped")
        assert RunState.load(lab / "results/t/run.json")["state"] == "stopped"
        check_invariants(lab, "t", user, rows=1)
    finally:
        if agent is not None:
            kill(agent)

    again = start(lab, tmp_path, [{"VAL": 0.9}], "--resume", name="resume")
    assert again.wait(120) == 0, again.stderr()
    got = check_invariants(lab, "t", user, rows=2)
    # The number of the experiment the stop cut off stays unused.
    assert [r.status for r in got] == ["keep", "keep"] and got[0].experiment == 0 < got[1].experiment


def test_kill_9_during_training_leaves_an_orphan_that_resume_stops_before_training_again(user_lab, tmp_path):
    lab, user = user_lab
    harness = reach("training", lab, tmp_path)
    orphan = training_json(lab)
    harness.signal(signal.SIGKILL)  # the harness only: its training lives on
    harness.wait(30)
    assert alive(orphan["pid"])

    again = start(lab, tmp_path, [{"SLEEP": 3.0, "VAL": 0.9}], name="resume")
    # When the resumed harness starts training, the orphan must already be gone.
    new = wait_for(lambda: (t := training_json(lab)) and t["pid"] != orphan["pid"] and t,
                   what="the resumed run's training")
    assert not alive(orphan["pid"]), "the orphan was still training when the resumed run started training"
    assert new["marker"] != orphan["marker"]
    assert again.wait(120) == 0, again.stderr()
    check_invariants(lab, "t", user, rows=2)


def test_a_second_harness_on_the_same_tag_is_refused_while_the_first_runs(user_lab, tmp_path):
    lab, user = user_lab
    first = reach("training", lab, tmp_path)
    try:
        second = start(lab, tmp_path, [], name="second")
        assert second.wait(60) == 1
        assert second.stderr() == f"error: run 't' is already running (pid {first.pid})\n"
        assert first.proc.poll() is None  # the first one goes on undisturbed
        assert training_json(lab)
    finally:
        first.signal(signal.SIGINT, group=True)
        assert first.wait(60) == 130
    check_invariants(lab, "t", user, rows=1)


def test_a_lock_held_by_a_killed_harness_does_not_block_the_next_one(user_lab, tmp_path):
    lab, user = user_lab
    first = reach("proposing", lab, tmp_path)
    agent = int((tmp_path / "script.json.pid").read_text())
    first.kill_group()
    first.wait(30)
    kill(agent)  # an agent orphaned by kill -9 (see test_kill_9_while_proposing_...)
    assert (lab / "results/t/run.lock").read_text().strip() == str(first.pid)  # the dead pid is still named
    assert RunState.effective_state(RunState.load(lab / "results/t/run.json")) == "stopped"

    again = start(lab, tmp_path, [{"VAL": 0.9}], name="resume")
    assert again.wait(120) == 0, again.stderr()
    check_invariants(lab, "t", user, rows=2)


def test_kill_9_while_proposing_the_resumed_run_stops_the_orphaned_agent(user_lab, tmp_path):
    lab, user = user_lab
    first = reach("proposing", lab, tmp_path)
    agent = int((tmp_path / "script.json.pid").read_text())
    try:
        first.signal(signal.SIGKILL)
        first.wait(30)
        assert alive(agent)
        again = start(lab, tmp_path, [{"VAL": 0.9}], name="resume")
        assert again.wait(120) == 0, again.stderr()
        assert not alive(agent)
        check_invariants(lab, "t", user, rows=2)
    finally:
        kill(agent)
