"""`--track wandb` and `export --to wandb` in W&B's offline mode: the run files `wandb sync`
would upload, read back record by record (tests/wandb_offline.py)."""

import os
from collections import Counter
from pathlib import Path

import pytest

# CI installs the extra (.ci/run): there a missing library is a failure, never a skip.
__import__("wandb") if os.environ.get("CI") else pytest.importorskip("wandb")
from autoresearch.records import ResultsFile  # noqa: E402
from standin import make_lab  # noqa: E402
from track_lab import SCRIPT, lab_env, more_steps, run_cli, run_lab  # noqa: E402
from wandb_offline import offline_runs, runs_by_id  # noqa: E402


@pytest.fixture
def lab(tmp_repo) -> Path:
    return make_lab(tmp_repo)


def offline(tmp_path: Path, steps: list) -> dict:
    return lab_env(tmp_path, steps, WANDB_MODE="offline", WANDB_DIR=str(tmp_path / "wb"))


def logged_steps(tmp_path: Path) -> Counter:
    """(run id, step) -> how many times it was logged, across every offline folder."""
    return Counter((run["id"], step) for run in offline_runs(tmp_path / "wb" / "wandb") for step in run["history"])


def test_track_wandb_offline_writes_one_run_per_experiment_with_trials_as_steps(lab, tmp_path):
    done = run_lab(lab, offline(tmp_path, SCRIPT), 4, "--track", "wandb")
    assert done.returncode == 0, done.stderr
    assert "wandb:" not in done.stdout + done.stderr  # W&B's own lines stay out of the run's output
    rows = ResultsFile(lab / "results/t/results.tsv").rows()
    runs = runs_by_id(tmp_path / "wb" / "wandb")
    assert len(runs) == 4 and all(run["group"] == "t" for run in runs.values())
    by_number = {int(run["config"]["experiment"]): run for run in runs.values()}
    assert sorted(by_number) == [0, 1, 2, 3]

    baseline = by_number[0]
    assert {step: values["val_bpb"] for step, values in baseline["history"].items()} == {1: 1.0, 2: 1.0}
    assert baseline["summary"]["status"] == "keep" and baseline["exit"] == 0

    kept = by_number[1]
    row = next(r for r in rows if r.experiment == 1)
    assert kept["history"][1]["val_bpb"] == 0.99 and kept["history"][1]["cost_usd"] == 0
    assert {k: kept["config"][k] for k in ("tag", "commit", "parent", "proposer")} == {
        "tag": "t", "commit": row.commit, "parent": rows[0].commit, "proposer": "command"}
    summary = kept["summary"]
    assert (summary["status"], summary["hypothesis"], summary["description"]) == ("keep", "VAL 0.99 should help", "set VAL 0.99")
    assert summary["reason"] == row.reason and summary["wall_seconds"] == row.wall_seconds
    assert "diff.patch" in kept["files"]
    assert (kept["folders"][-1] / "files/diff.patch").read_text() == (lab / "results/t/runs/0001/diff.patch").read_text()

    crashed = by_number[3]
    assert crashed["exit"] == 1 and crashed["summary"]["status"] == "crash"
    assert "val_bpb" not in crashed["history"][1]  # a crash's 0 is no measurement
    assert set(logged_steps(tmp_path).values()) == {1}


def test_a_resume_and_an_export_log_nothing_twice(lab, tmp_path):
    env = offline(tmp_path, SCRIPT[:1])
    assert run_lab(lab, env, 2, "--track", "wandb").returncode == 0
    first = logged_steps(tmp_path)
    assert len(first) == 3  # the baseline's two trials, experiment 1's one

    more_steps(tmp_path, [{"VAL": 0.98}])
    resumed = run_lab(lab, env, 3, "--track", "wandb")
    assert resumed.returncode == 0, resumed.stderr
    again = logged_steps(tmp_path)
    assert len(again) == 4 and set(again.values()) == {1}
    assert len(list((tmp_path / "wb" / "wandb").glob("offline-run-*"))) == 4  # one folder per row: one more

    exported = run_cli(lab, env, "export", "--tag", "t", "--to", "wandb")
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.startswith("exported 0 trials of 3 experiments to Weights & Biases (4 already there): "
                                      "offline runs under ")
    assert logged_steps(tmp_path) == again


def test_export_of_a_run_that_was_not_tracked(lab, tmp_path):
    env = offline(tmp_path, SCRIPT)
    assert run_lab(lab, env, 4).returncode == 0
    assert not (tmp_path / "wb").exists()
    exported = run_cli(lab, env, "export", "--tag", "t", "--to", "wandb")
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.startswith("exported 5 trials of 4 experiments to Weights & Biases (0 already there)")
    assert "wandb sync" in exported.stdout
    runs = offline_runs(tmp_path / "wb" / "wandb")
    assert len(runs) == 4  # one offline run per experiment: its trials go in together
    assert sum(len(run["history"]) for run in runs) == 5
