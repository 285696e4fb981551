"""`autoresearch ab` through the real CLI: real loop, real git, the stand-in lab, an hparam arm
against a command arm (tests/standin_agent.py)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import git
import pytest

from autoresearch.ab import parse_arm, parse_arms
from autoresearch.errors import AutoresearchError
from autoresearch.ledger import group
from autoresearch.records import ResultsFile, RunState
from standin import make_lab

TESTS = Path(__file__).resolve().parent
AGENT = f"{sys.executable} {TESTS / 'standin_agent.py'}"
ARMS = ["--arm", "hparam", "--arm", f"command:{AGENT}"]


@pytest.fixture
def lab(tmp_repo) -> Path:
    return make_lab(tmp_repo)


def ab(*args: str, tag: str = "x") -> list[str]:
    return [sys.executable, "-m", "autoresearch", "ab", "--tag", tag, "--profile", "cpu", "--time-budget", "5",
            "--timeout", "60", "--keep-rule", "greedy", "--audit", "off", *args]


def agent_env(tmp_path: Path, steps: list) -> dict:
    script = tmp_path / "script.json"
    script.write_text(json.dumps(steps))
    return {**os.environ, "STANDIN_SCRIPT": str(script)}


def rows(lab: Path, tag: str):
    return ResultsFile(lab / "results" / tag / "results.tsv").rows()


def turns(stdout: str) -> list[str]:
    """The arms in the order the A/B gave them their turns."""
    return [line.split()[3].rstrip(":") for line in stdout.splitlines() if ": experiment " in line and line.startswith("[ab ")]


def own(lab: Path, tag: str) -> list:
    """The arm's experiments after the shared baseline (experiment 0)."""
    return [e for e in group(rows(lab, tag)) if e.number != 0]


# ---------------------------------------------------------------------------
# Arms
# ---------------------------------------------------------------------------


def test_arms_parse_as_backend_and_model():
    assert (parse_arm("anthropic:claude-opus-5-5").name, parse_arm("anthropic:claude-opus-5-5").model) == (
        "anthropic-claude-opus-5-5", "claude-opus-5-5")
    assert parse_arm("openai:qwen/qwen3:32b").name == "openai-qwen-qwen3-32b"
    assert parse_arm("openai:qwen/qwen3:32b").model == "qwen/qwen3:32b"
    assert (parse_arm("optuna").name, parse_arm("optuna:cmaes").sampler) == ("optuna", "cmaes")
    assert (parse_arm("hparam:3").seed, parse_arm("hparam:3").name) == (3, "hparam-3")
    assert parse_arm("command:harness/claude.sh --x").command == "harness/claude.sh --x"
    arms = parse_arms(["command:a.sh", "command:b.sh"], "t")
    assert [a.name for a in arms] == ["command", "command-2"]


@pytest.mark.parametrize("specs, message", [
    (["gpt:4", "optuna"], "the backend is one of"),
    (["command", "optuna"], "give the agent command"),
    (["optuna:bayes", "hparam"], "optuna's sampler is one of"),
    (["hparam:x", "optuna"], "hparam takes a seed"),
    (["optuna", "optuna"], "is given twice"),
    (["optuna"], "at least two --arm"),
    (["openai:" + "m" * 80, "optuna"], "is not a valid tag"),
])
def test_bad_arms_are_one_line_errors(specs, message):
    with pytest.raises(AutoresearchError, match=message):
        parse_arms(specs, "t")


def test_a_bad_arm_on_the_command_line_is_one_line_and_creates_nothing(lab):
    done = subprocess.run(ab("--arm", "gpt:4", "--arm", "optuna"), cwd=lab, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.startswith("error: bad --arm 'gpt:4'") and done.stderr.count("\n") == 1
    assert not (lab / "results").exists()


# ---------------------------------------------------------------------------
# The A/B end to end
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_ab_shares_one_baseline_interleaves_the_arms_and_reports_them_side_by_side(lab, tmp_path):
    env = agent_env(tmp_path, [{"VAL": 0.99}, {"VAL": 0.995}, {"VAL": 0.98}])
    done = subprocess.run(ab(*ARMS, "--max-experiments", "2", "--baseline-repeats", "2"),
                          cwd=lab, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert turns(done.stdout) == ["hparam", "command", "hparam", "command"]
    assert done.stdout.splitlines()[-1].startswith(
        "done: experiments per arm: hparam 2 (--max-experiments 2), command 2 (--max-experiments 2)")

    baseline = rows(lab, "x")
    assert [(r.experiment, r.status, r.role) for r in baseline] == [(0, "trial", "baseline"), (0, "keep", "repeat")]
    base = RunState.load(lab / "results/x/run.json")["base_commit"]
    for tag in ("x-hparam", "x-command"):
        arm_rows = rows(lab, tag)
        assert arm_rows[:2] == baseline  # the same rows: one baseline, trained once
        assert RunState.load(lab / f"results/{tag}/run.json")["base_commit"] == base
        assert (lab / f"results/{tag}/runs/0000/run.log").is_file()
        assert len(own(lab, tag)) == 2  # --max-experiments is per arm, the baseline not counted
        assert git.Repo(lab).git.merge_base("--is-ancestor", base, f"autoresearch/{tag}") == ""
    # A B A B in time too: every arm experiment starts no earlier than the one before it
    a, b = own(lab, "x-hparam"), own(lab, "x-command")
    order = [a[0], b[0], a[1], b[1]]
    starts = [e.first.started_at for e in order]
    assert starts == sorted(starts)
    assert [e.first.description for e in b] == ["set VAL 0.99", "set VAL 0.995"]
    assert sum(1 for r in rows(lab, "x-hparam") + rows(lab, "x-command") if r.proposer == "baseline") == 4

    report = subprocess.run([sys.executable, "-m", "autoresearch", "report", "--tag", "x", "--json"],
                            cwd=lab, capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    summary = json.loads(report.stdout)["ab"]
    assert summary["baseline"]["val_bpb"] == pytest.approx(1.0) and summary["baseline"]["trials"] == 2
    arms = {arm["name"]: arm for arm in summary["arms"]}
    assert arms["command"]["best"]["val_bpb"] == pytest.approx(0.99)
    assert arms["command"]["improvement"] == pytest.approx(0.01)
    assert arms["command"]["counts"] == {"keep": 1, "discard": 1, "crash": 0}
    assert arms["command"]["experiments"] == 2 and arms["hparam"]["experiments"] == 2
    assert arms["command"]["gpu_seconds"] == pytest.approx(3.0)  # 2 experiments x 1.5 s, the baseline not counted
    assert [p["val_bpb"] for p in arms["command"]["running_best"]] == pytest.approx([1.0, 0.99])
    assert summary["noise"]["dof"] == 1  # the baseline's repeat, counted once
    assert summary["verdict"]["leader"] == "command"
    assert Path(summary["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    page = tmp_path / "ab.html"
    text = subprocess.run([sys.executable, "-m", "autoresearch", "report", "--tag", "x", "--no-plot", "--html", str(page)],
                          cwd=lab, capture_output=True, text=True, timeout=120)
    assert text.returncode == 0, text.stderr
    table = text.stdout
    assert "Arms side by side" in table and "kept / discarded / crashed" in table
    assert f"wrote the HTML report to {page}" in table
    assert "Arms side by side" in page.read_text() and "command: best 0.990000" in page.read_text()
    line = next(line for line in table.splitlines() if line.startswith("improvement"))
    assert "none kept" in line and "0.010000 ±" in line
    # each arm is a normal run for the ordinary report
    plain = subprocess.run([sys.executable, "-m", "autoresearch", "report", "--tag", "x-command", "--json", "--no-plot"],
                           cwd=lab, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout)["runs"][0]["experiments"] == 3


@pytest.mark.slow
def test_ctrl_c_stops_the_ab_and_the_same_command_resumes_in_turn(lab, tmp_path):
    # The command arm's first change sleeps in training: Ctrl-C lands there.
    env = agent_env(tmp_path, [{"VAL": 0.99, "SLEEP": 120.0}, {"VAL": 0.99}, {"VAL": 0.98}])
    args = ab(*ARMS, "--max-experiments", "2", "--baseline-repeats", "1")
    proc = subprocess.Popen(args, cwd=lab, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("command") and "[0001] training" in line:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "stopped; resume with the same `autoresearch ab --tag x` command" in out
    assert len(own(lab, "x-hparam")) == 1 and own(lab, "x-command") == []
    assert RunState.load(lab / "results/x-command/run.json")["state"] == "stopped"

    again = subprocess.run(args, cwd=lab, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert turns(again.stdout) == ["command", "hparam", "command"]  # the command arm's turn comes first
    assert [e.first.description for e in own(lab, "x-command")] == ["set VAL 0.99", "set VAL 0.98"]
    assert len(own(lab, "x-hparam")) == 2
    assert len(rows(lab, "x")) == 1  # the baseline was not trained again
    numbers = [r.experiment for r in rows(lab, "x-command")]  # nothing written twice; the number the
    assert numbers == [0, 2, 3]  # stop cut off (1) stays unused

    other = subprocess.run(ab("--arm", "hparam", "--arm", "optuna"), cwd=lab, capture_output=True, text=True, timeout=60)
    assert other.returncode == 1 and "give the same --arm options in that order" in other.stderr


def test_a_plain_run_tag_is_not_taken_for_an_ab(lab):
    done = subprocess.run([sys.executable, "-m", "autoresearch", "run", "--tag", "x", "--profile", "cpu",
                           "--time-budget", "5", "--baseline-repeats", "1", "--max-experiments", "1", "--audit", "off"],
                          cwd=lab, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    again = subprocess.run(ab(*ARMS), cwd=lab, capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "results/x is a run, not an A/B" in again.stderr


@pytest.mark.slow
def test_max_cost_is_per_arm_and_an_arm_that_reaches_it_takes_no_more_turns(lab, tmp_path):
    steps = [{"VAL": 0.99, "claude_cost": 0.25}, {"VAL": 0.98, "claude_cost": 0.25}, {"VAL": 0.97, "claude_cost": 0.25}]
    done = subprocess.run(ab(*ARMS, "--max-experiments", "3", "--max-cost", "0.3", "--baseline-repeats", "1"),
                          cwd=lab, env=agent_env(tmp_path, steps), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert turns(done.stdout) == ["hparam", "command", "hparam", "command", "hparam", "command"]
    assert "[ab x] arm command takes no more turns: --max-cost 0.3 (spent $0.5000)" in done.stdout
    assert len(own(lab, "x-hparam")) == 3  # the free arm is not held back by the other's budget
    assert [e.first.description for e in own(lab, "x-command")] == ["set VAL 0.99", "set VAL 0.98"]
