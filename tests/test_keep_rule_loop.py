"""The noise keep rule through the real loop: real git, real training subprocesses (the stand-in
lab), seeds from the harness, confirm trials, and a kill -9 in the middle of a confirm."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from autoresearch.analysis import read_results, read_run, summarize
from autoresearch.config import RunConfig
from autoresearch.loop import run
from autoresearch.records import ResultsFile, RunState
from autoresearch.report import extra_trials_line
from invariants import check_invariants
from reliability import Harness, make_user_lab, read_json, secret_env, training_json, wait_for
from standin import ScriptedProposer, make_lab, set_constants
from test_loop import RecordingView

# Baseline trials read 1.0 (seed 42) and 1.001 (seed 43): sigma = 0.000707, 1 dof.
NOISY = {43: 0.001}


@pytest.fixture
def noisy_lab(tmp_repo) -> Path:
    root = make_lab(tmp_repo)
    train = root / "train.py"
    train.write_text(set_constants(train.read_text(), JITTER=NOISY))
    tmp_repo.index.add(["train.py"])
    tmp_repo.index.commit("noisy stand-in")
    return root


def noise_config(root: Path, **overrides) -> RunConfig:
    values = dict(repo_root=root, tag="t", profile="cpu", time_budget=5, timeout=30, pause_seconds=0.01,
                  audit="off")  # the stand-in hands over no model
    values.update(overrides)
    return RunConfig(**values)  # the defaults: --keep-rule noise, --baseline-repeats 2


def rows(root: Path):
    return ResultsFile(root / "results" / "t" / "results.tsv").rows()


def test_the_baseline_is_trained_twice_with_two_seeds_and_sets_the_noise(noisy_lab):
    view = RecordingView()
    outcome = run(noise_config(noisy_lab, max_experiments=1), proposer=ScriptedProposer([]), view=view)
    got = rows(noisy_lab)
    assert [(r.status, r.role, r.trial, r.seed) for r in got] == [
        ("trial", "baseline", 1, 42), ("keep", "repeat", 2, 43)]
    assert [r.val_bpb for r in got] == [1.0, 1.001]
    assert got[1].mean_val_bpb == pytest.approx(1.0005) and got[1].sigma == pytest.approx(0.001 / 2**0.5, abs=1e-6)
    assert outcome.best_val_bpb == pytest.approx(1.0005) and outcome.experiments == 1 and outcome.rows == 2
    log = (noisy_lab / "results/t/runs/0000/run.trial2.log").read_text()
    assert "lab env:" in log


# With 1 dof (the baseline's pair) t is wide: even a 12-sigma first trial is confirmed, which
# adds a pair; with 2 dof a 16-sigma trial is kept at once. The third change reads 4.2 and then
# 5.8 standard errors with 2 and 3 dof (t_0.995 is 9.9 and 5.8 there: sigma itself is barely
# known), so the sequential rule trains it a third time (seed 44) and keeps it on its mean.
STEPS = [{"VAL": 0.99, "JITTER": {}},  # confirmed (0.99, 0.99), kept
         {"VAL": 0.98},  # kept at once
         {"VAL": 0.977, "JITTER": {43: -0.0005}},  # unclear: 0.977, 0.9765, 0.977, kept on its mean
         {"VAL": 1.2}]  # discarded at once


def test_clear_win_unclear_win_and_clear_loss_under_the_noise_rule(noisy_lab):
    view = RecordingView()
    outcome = run(noise_config(noisy_lab, max_experiments=5), proposer=ScriptedProposer(list(STEPS)), view=view)
    got = rows(noisy_lab)
    table = [(r.experiment, r.status, r.role, r.trial) for r in got]
    assert table == [(0, "trial", "baseline", 1), (0, "keep", "repeat", 2),
                     (1, "trial", "candidate", 1), (1, "keep", "confirm", 2),
                     (2, "keep", "candidate", 1),
                     (3, "trial", "candidate", 1), (3, "trial", "confirm", 2), (3, "keep", "confirm", 3),
                     (4, "discard", "candidate", 1)]
    assert "unclear, trial 2 of at most 5" in got[5].reason and "clear win" in got[4].reason
    assert "clear win after 3 trials" in got[7].reason
    assert got[7].mean_val_bpb == pytest.approx(0.976833) and got[4].delta == pytest.approx(0.98 - 0.99)
    assert [r.seed for r in got[5:8]] == [42, 43, 44]
    assert outcome.experiments == 5 and outcome.best_commit == got[7].commit
    assert outcome.best_val_bpb == pytest.approx(0.976833, abs=1e-6)
    # The proposer sees each experiment once, with its mean and number of trials.
    history = run_history(noisy_lab)
    assert [h["experiment"] for h in history] == [0, 1, 2, 3, 4]
    assert history[3]["trials"] == 3 and history[3]["val_bpb"] == pytest.approx(0.976833)
    check_invariants(noisy_lab, "t")


def run_history(root: Path) -> list[dict]:
    from autoresearch.ledger import Ledger

    return Ledger(root / "results" / "t").history()


def test_a_confirm_that_reverses_discards_and_the_branch_returns_to_the_best(noisy_lab):
    steps = [{"VAL": 0.998, "JITTER": {43: 0.0045}}]  # 0.998 (grey zone) then 1.0025: no gain
    run(noise_config(noisy_lab, max_experiments=2, min_delta=0.0), proposer=ScriptedProposer(steps),
        view=RecordingView())
    got = rows(noisy_lab)
    assert [(r.status, r.role) for r in got][2:] == [("trial", "candidate"), ("discard", "confirm")]
    assert got[3].commit == got[2].commit and got[3].parent == got[0].commit
    check_invariants(noisy_lab, "t")
    # The report: one confirm, and it changed the verdict (its first trial alone was a keep).
    extra = summarize(read_results(noisy_lab / "results/t/results.tsv"), run=read_run(noisy_lab / "results/t"))["noise"]["confirms"]
    assert extra["confirm_trials"] == 1 and extra["confirmed_experiments"] == 1
    assert extra["confirm_seconds"] == got[3].run_seconds > 0
    assert extra["changed"] == [{"experiment": 1, "first_trial_alone": "keep", "final": "discard", "trials": 2}]
    assert "changed 1 decisions of the first trial alone (#1 keep->discard)" in extra_trials_line(extra)


def test_the_proposer_is_not_asked_while_a_confirm_is_due_and_max_experiments_counts_experiments(noisy_lab):
    proposer = ScriptedProposer([{"VAL": 0.998, "JITTER": {43: -0.0003}}])
    run(noise_config(noisy_lab, max_experiments=2, min_delta=0.0), proposer=proposer, view=RecordingView())
    got = rows(noisy_lab)
    # 2 experiments, 5 trials: the candidate (0.998, 0.9977, 0.998) is unclear until its third
    # trial with so few degrees of freedom, and each of its trials came before the end
    assert len(got) == 5 and {r.experiment for r in got} == {0, 1} and got[-1].status == "keep"
    assert len(proposer.contexts) == 1


def test_greedy_keeps_what_the_noise_rule_would_confirm(noisy_lab):
    run(noise_config(noisy_lab, max_experiments=2, keep_rule="greedy", baseline_repeats=1),
        proposer=ScriptedProposer([{"VAL": 0.9999}]), view=RecordingView())
    assert [(r.status, r.role) for r in rows(noisy_lab)] == [("keep", "baseline"), ("keep", "candidate")]


def test_upstream_notebook_semantics_on_a_file_with_trial_rows(noisy_lab):
    run(noise_config(noisy_lab, max_experiments=5), proposer=ScriptedProposer(list(STEPS)), view=RecordingView())
    path = noisy_lab / "results/t/results.tsv"
    # What analysis.ipynb computes: status counts, keep rate = KEEP / (KEEP + DISCARD), best = min keep.
    import csv

    with open(path, newline="") as f:
        table = list(csv.DictReader(f, delimiter="\t"))
    statuses = [r["status"].strip().upper() for r in table]
    assert statuses.count("KEEP") == 4 and statuses.count("DISCARD") == 1 and statuses.count("TRIAL") == 4
    keep_rate = statuses.count("KEEP") / (statuses.count("KEEP") + statuses.count("DISCARD"))
    assert keep_rate == 0.8
    assert float(table[0]["val_bpb"]) == 1.0  # the notebook's baseline: the first row
    # Our report counts experiments, not trials, and reads the best as a mean.
    s = summarize(read_results(path))
    assert s["experiments"] == 5 and s["trials"] == 9 and s["counts"] == {"keep": 4, "discard": 1, "crash": 0}
    assert s["best"]["val_bpb"] == pytest.approx(0.976833) and s["best"]["trials"] == 3
    assert s["noise"]["dof"] == 4 and s["noise"]["extra_trials"] == 4
    # 3 confirms of 2 candidates, both clear keeps on their first trial alone: nothing changed
    assert s["noise"]["confirms"]["confirm_trials"] == 3 and s["noise"]["confirms"]["confirmed_experiments"] == 2
    assert s["noise"]["confirms"]["changed"] == []


# ---------------------------------------------------------------------------
# kill -9 during a confirm, then resume
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_during_a_confirm_then_resume_runs_the_confirm_again(tmp_repo, tmp_path):
    root, user = make_user_lab(tmp_repo)
    train = root / "train.py"
    train.write_text(set_constants(train.read_text(), JITTER=NOISY))
    tmp_repo.index.add(["train.py"])
    tmp_repo.index.commit("noisy stand-in")
    user = type(user).take(root)
    agent = [sys.executable, str(Path(__file__).with_name("standin_agent.py"))]
    steps = tmp_path / "steps.json"
    import json

    # Experiment 1: a grey-zone first trial (0.9985), then a confirm that sleeps long enough to be killed.
    steps.write_text(json.dumps([{"VAL": 0.9985, "JITTER": {"43": -0.0003}, "SLEEP_BY_SEED": {"43": 60}}]))
    env = secret_env(STANDIN_SCRIPT=str(steps))
    args = ("--proposer", "command", "--command", " ".join(agent), "--max-experiments", "2",
            "--min-delta", "0", "--keep-rule", "noise", "--baseline-repeats", "2")
    harness = Harness(root, args, env, tmp_path / "out")
    try:
        wait_for(lambda: len(rows(root)) == 3 and training_json(root), 120,
                 "the confirm to start training")
    finally:
        harness.kill_group()  # kill -9 of the harness (and its group)
        harness.wait(30)
    assert [(r.experiment, r.status) for r in rows(root)] == [(0, "trial"), (0, "keep"), (1, "trial")]
    steps.write_text(json.dumps([]))  # the resume must not need the proposer
    again = Harness(root, args, secret_env(STANDIN_SCRIPT=str(steps), STANDIN_SLEEP="0"), tmp_path / "out", "again")
    assert again.wait(120) == 0, again.stderr()
    got = check_invariants(root, "t", user)
    # The confirm the kill cut off runs again on the same commit (trial 2), then as many more as the
    # sequential rule asks for; nothing is asked of the proposer.
    got_ = [(r.experiment, r.status, r.trial) for r in got]
    assert got_[:3] == [(0, "trial", 1), (0, "keep", 2), (1, "trial", 1)]
    assert [t for _, _, t in got_[2:]] == list(range(1, len(got_) - 1)) and got_[-1][:2] == (1, "keep")
    assert all(status == "trial" for _, status, _ in got_[2:-1]) and len({r.commit for r in got[2:]}) == 1
    assert RunState.load(root / "results/t/run.json")["state"] == "done"
