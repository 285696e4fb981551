"""`autoresearch run` as a real subprocess: exit codes, one-line errors, Ctrl-C and SIGTERM."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import git
import psutil
import pytest

from autoresearch.ledger import Ledger
from autoresearch.records import ResultsFile, RunState
from reliability import training_files, training_json
from standin import make_lab, set_constants

TESTS = Path(__file__).resolve().parent
AGENT = f"{sys.executable} {TESTS / 'standin_agent.py'}"


@pytest.fixture
def lab(tmp_repo) -> Path:
    return make_lab(tmp_repo)


def command(*args: str, speculate: bool = False) -> list[str]:
    # Sequential by default: these tests script the agent's answers in order
    # (tests/test_speculation.py runs speculation through the CLI).
    return [sys.executable, "-m", "autoresearch", "run", "--tag", "t", "--profile", "cpu",
            "--time-budget", "5", "--timeout", "60", "--keep-rule", "greedy", "--baseline-repeats", "1", "--audit", "off",
            *([] if speculate else ["--no-speculate"]), *args]


def agent_env(tmp_path: Path, steps: list, **extra) -> dict:
    script = tmp_path / "script.json"
    script.write_text(json.dumps(steps))
    return {**os.environ, "STANDIN_SCRIPT": str(script), **extra}


def start(lab: Path, args, env) -> subprocess.Popen:
    return subprocess.Popen(command(*args), cwd=lab, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(predicate, seconds: float = 60.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def rows(lab: Path):
    return ResultsFile(lab / "results/t/results.tsv").rows()


def assert_clean_at_best(lab: Path):
    wt = git.Repo(lab / ".autoresearch/worktrees/t")
    assert not wt.is_dirty(untracked_files=True)
    kept = [r for r in rows(lab) if r.status == "keep"]
    best = kept[-1].commit if kept else git.Repo(lab).head.commit.hexsha[:7]
    assert wt.head.commit.hexsha[:7] == best


def test_run_logs_plain_lines_and_exits_0_when_the_limit_is_reached(lab, tmp_path):
    env = agent_env(tmp_path, [{"VAL": 0.99}, {"VAL": 0.995}])
    done = subprocess.run(command("--proposer", "command", "--command", AGENT, "--max-experiments", "3"),
                          cwd=lab, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "[0000] keep val_bpb=1.000000 baseline" in lines
    assert "[0001] keep val_bpb=0.990000 (-0.010000 vs the best, on 1 trial) set VAL 0.99" in lines
    assert "[0002] discard val_bpb=0.995000 (+0.005000 vs the best, on 1 trial) set VAL 0.995" in lines
    assert lines[-1].startswith("done (--max-experiments 3): 3 experiments, best val_bpb 0.990000")
    assert [r.proposer for r in rows(lab)] == ["baseline", "command", "command"]
    assert_clean_at_best(lab)


def test_an_agents_reported_cost_reaches_results_and_a_failed_ones_counts_towards_max_cost(lab, tmp_path):
    steps = [{"exit": 1, "claude_cost": 0.3}, {"VAL": 0.99, "claude_cost": 0.25}, {"VAL": 0.98, "claude_cost": 0.25}]
    done = subprocess.run(command("--proposer", "command", "--command", AGENT, "--max-cost", "0.5"),
                          cwd=lab, env=agent_env(tmp_path, steps), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--max-cost 0.5" in done.stdout.splitlines()[-1]
    agent_rows = [r for r in rows(lab) if r.proposer == "command"]
    assert len(agent_rows) == 1  # 0.3 (failed) + 0.25 reaches the limit: the third step never runs
    assert float(agent_rows[0].cost_usd) == pytest.approx(0.25)
    assert int(agent_rows[0].input_tokens) == 12 + 3000 + 20000 and int(agent_rows[0].output_tokens) == 800
    assert agent_rows[0].description == "set VAL 0.99"
    assert agent_rows[0].hypothesis == "VAL 0.99 should help"  # read from inside the JSON result
    assert RunState.load(lab / "results/t/run.json")["proposal_cost_usd"] == pytest.approx(0.3)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--proposer", "nope"], "nope"),
        (["--profile", "tpu"], "bad --profile 'tpu'"),
        (["--tag", "bad..tag"], "bad --tag"),
        (["--proposer", "command"], "--command"),
    ],
)
def test_bad_options_are_one_line_errors_with_exit_1(lab, args, message):
    done = subprocess.run(command(*args), cwd=lab, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert message in done.stderr and "Traceback" not in done.stderr


def test_a_new_tag_whose_branch_exists_is_refused_with_a_hint(lab, tmp_repo):
    tmp_repo.create_head("autoresearch/t")
    done = subprocess.run(command(), cwd=lab, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr == "error: branch autoresearch/t already exists but was not started here; pick another --tag (or delete the branch)\n"
    assert not (lab / "results/t").exists()


def test_ctrl_c_during_training_kills_it_leaves_the_best_commit_and_resume_works(lab, tmp_path):
    env = agent_env(tmp_path, [{"VAL": 0.99}], STANDIN_SLEEP="120")
    proc = start(lab, ["--proposer", "command", "--command", AGENT, "--max-experiments", "2"], env)
    training = wait_for(lambda: training_json(lab))
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)

    assert proc.returncode == 130, err
    assert out.splitlines()[-1] == "stopped; resume with: autoresearch run --tag t --resume"
    assert not _alive(training["pid"])
    assert RunState.load(lab / "results/t/run.json")["state"] == "stopped"
    assert rows(lab) == [] and not training_files(lab)
    assert_clean_at_best(lab)

    env["STANDIN_SLEEP"] = "0"
    done = subprocess.run(command("--resume", "--proposer", "command", "--command", AGENT, "--max-experiments", "2"),
                          cwd=lab, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # The interrupted baseline's number (0) is not reused: numbers never are.
    assert [(r.experiment, r.status) for r in rows(lab)] == [(1, "keep"), (2, "keep")]
    assert_clean_at_best(lab)


def test_after_kill_9_during_training_resume_stops_the_orphan_and_loses_nothing(lab, tmp_path):
    env = agent_env(tmp_path, [{"VAL": 0.99}, {"VAL": 0.98}], STANDIN_SLEEP="0")
    first = subprocess.run(command("--proposer", "command", "--command", AGENT, "--max-experiments", "2"),
                           cwd=lab, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    env["STANDIN_SLEEP"] = "120"
    proc = start(lab, ["--proposer", "command", "--command", AGENT, "--max-experiments", "3"], env)
    training = wait_for(lambda: training_json(lab))
    proc.kill()
    proc.communicate(timeout=30)
    assert _alive(training["pid"])  # orphaned: it lives in its own session

    env["STANDIN_SLEEP"] = "0"
    (tmp_path / "script.json").write_text(json.dumps([{"VAL": 0.97}]))
    again = subprocess.run(command("--proposer", "command", "--command", AGENT, "--max-experiments", "3"),
                           cwd=lab, env=env, capture_output=True, text=True, timeout=120)
    try:
        assert again.returncode == 0, again.stderr
        assert not _alive(training["pid"])
        assert [(r.experiment, r.description) for r in rows(lab)] == [
            (0, "baseline"), (1, "set VAL 0.99"), (3, "set VAL 0.97"),  # 2 was killed before its row
        ]
        assert_clean_at_best(lab)
    finally:
        _kill(training["pid"])


def test_sigterm_while_the_agent_proposes_stops_it_and_the_run_cleanly(lab, tmp_path):
    env = agent_env(tmp_path, [{"sleep": 120, "VAL": 0.9}])
    proc = start(lab, ["--proposer", "command", "--command", AGENT, "--max-experiments", "3"], env)
    wait_for(lambda: len(rows(lab)) == 1 and (tmp_path / "script.json.pid").exists())
    agent = int((tmp_path / "script.json.pid").read_text())
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    try:
        assert proc.returncode == 130, err
        assert "stopped; resume with: autoresearch run --tag t --resume" in out
        assert [r.experiment for r in rows(lab)] == [0]
        assert_clean_at_best(lab)
        wait_for(lambda: not _alive(agent), 10)
    finally:
        _kill(agent)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _kill(pid: int) -> None:
    try:
        psutil.Process(pid).kill()
    except psutil.Error:
        pass


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@pytest.mark.slow
def test_hparam_on_the_real_train_py_leaves_3_rows_the_best_commit_and_the_checkout_untouched(tmp_path, lab_cache):
    """Issue 3's "done when", on a fresh clone: `autoresearch run --tag t --proposer hparam
    --profile cpu --time-budget 5 --max-experiments 3`."""
    from conftest import REPO_ROOT, lab_env

    if not (REPO_ROOT / "train.py").exists():
        pytest.skip("train.py is not in this checkout yet")
    clone = tmp_path / "clone"
    user = git.Repo.clone_from(REPO_ROOT, clone)
    (clone / "program.md").write_text((clone / "program.md").read_text() + "\nAn uncommitted note.\n")
    before = checkout_files(clone)
    env = {**os.environ, **lab_env(lab_cache), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    done = subprocess.run(
        [sys.executable, "-m", "autoresearch", "run", "--tag", "t", "--proposer", "hparam", "--profile", "cpu",
         "--time-budget", "5", "--max-experiments", "3"],
        cwd=clone, env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    got = rows(clone)
    experiments = Ledger(clone / "results" / "t").experiments()  # the default noise rule: trials per experiment
    assert len(experiments) == 3 and experiments[0].status == "keep" and 0 < experiments[0].mean < 20
    assert [e.first.proposer for e in experiments] == ["baseline", "hparam", "hparam"]
    assert [r.seed for r in experiments[0].rows] == [42, 43]
    assert all(r.training_seconds and r.num_steps for r in got if r.status != "crash")
    assert_clean_at_best(clone)
    assert checkout_files(clone) == before and user.active_branch.name == "main"
    assert user.git.status("--porcelain") == " M program.md"


def checkout_files(root: Path) -> dict:
    """The user's files: everything but .git, results/ and .autoresearch/."""
    return {
        p: p.read_bytes() for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0] not in (".git", "results", ".autoresearch")
    }


def test_no_worker_flag_and_workers_1_are_one_loop_and_write_the_same_rows(lab, tmp_repo):
    """The sequential run is the multi-worker loop with a pool of one: the same seeded lab and
    hparam proposer give the same rows with and without --workers 1 (timings aside)."""
    jitter = {42: 0.0, 43: 0.004, 44: -0.003, 45: 0.002, 46: -0.001}
    (lab / "train.py").write_text(set_constants((lab / "train.py").read_text(), JITTER=jitter))
    tmp_repo.index.add(["train.py"])
    tmp_repo.index.commit("a noisy stand-in")
    fields = ("experiment", "status", "role", "trial", "seed", "description", "hypothesis", "val_bpb",
              "mean_val_bpb", "delta", "sigma", "reason", "speculation")
    got = {}
    for tag, extra in (("one", []), ("w1", ["--workers", "1"])):
        args = [a if a != "t" else tag for a in command("--proposer", "hparam", "--seed", "3", "--max-experiments", "6",
                                                         "--keep-rule", "noise", "--baseline-repeats", "2", *extra)]
        done = subprocess.run(args, cwd=lab, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        got[tag] = [tuple(getattr(r, f) for f in fields)
                    for r in ResultsFile(lab / f"results/{tag}/results.tsv").rows()]
        got[tag] += sorted(p.read_text() for p in (lab / f"results/{tag}/runs").glob("*/diff.patch"))
    assert len(got["one"]) >= 7 + 6 and {row[1] for row in got["one"][:7]} >= {"keep", "trial"}
    assert got["one"] == got["w1"]
