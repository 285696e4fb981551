"""The tracker observer (tracking.Tracking) and the trackers' one-line errors; no tracker
library needed. The backends against MLflow's and W&B's real stores: test_tracking_mlflow.py,
test_tracking_wandb.py."""

import os
import threading
import time
from pathlib import Path

import pytest

from autoresearch.records import Row
from autoresearch.tracking import Tracker, Tracking, measurements, recorded, send, texts
from standin import make_lab
from track_lab import lab_env, run_cli, run_lab


class ListTracker(Tracker):
    """An in-process store (a list): what reached it, and a switch to make it fail."""

    name = "list"
    store: list = []
    down = threading.Event()

    def __init__(self, run_dir, tag, base):
        super().__init__(run_dir, tag, base)
        if self.down.is_set():
            raise ConnectionError("connection refused")

    def logged(self, experiment, trial):
        return (experiment, trial) in {(r["experiment"], r["trial"]) for r in self.store}

    def log(self, rows):
        if self.down.is_set():
            raise ConnectionError("connection refused")
        self.store.extend(rows)

    def where(self):
        return "a list"


@pytest.fixture
def store():
    ListTracker.store = []
    ListTracker.down.clear()
    return ListTracker.store


def wait_for(predicate, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def row(experiment: int, trial: int = 1, status: str = "keep") -> dict:
    return Row(commit="abc1234", val_bpb=1.0 - experiment / 100, memory_gb=1.0, status=status,
               description=f"change {experiment}", experiment=experiment, trial=trial,
               wall_seconds=1.23456, started_at="2026-12-03T10:00:00Z").as_dict()


def test_a_down_tracker_costs_one_warning_and_catches_up_when_it_answers(tmp_path, store):
    notes = []
    tracking = Tracking(ListTracker, tmp_path, "t", notes.append)
    ListTracker.down.set()
    for n in range(3):
        tracking.log_row(row(n))
    wait_for(lambda: tracking.failure is not None)
    ListTracker.down.clear()
    tracking.log_row(row(3))  # the server is back: this row and the three it missed
    tracking.close()
    assert len(notes) == 1 and notes[0].startswith("warning: list tracking failed")
    assert "`autoresearch export --tag t --to list` logs what it missed" in notes[0]
    assert [(r["experiment"], r["trial"]) for r in store] == [(0, 1), (1, 1), (2, 1), (3, 1)]


def test_a_tracker_down_all_night_is_one_warning_line_and_never_raises(tmp_path, store):
    notes = []
    ListTracker.down.set()
    tracking = Tracking(ListTracker, tmp_path, "t", notes.append)
    for n in range(5):
        tracking.log_row(row(n))
    tracking.close()
    assert len(notes) == 1
    assert notes[0].startswith("warning: list tracking failed (ConnectionError: connection refused); the run goes on")
    assert store == []


def test_send_skips_what_the_tracker_holds_and_groups_an_experiments_trials(tmp_path, store):
    tracker = ListTracker(tmp_path, "t", "")
    rows = [recorded(r) for r in (row(0, 1, "trial"), row(0, 2), row(1, 1, "trial"), row(1, 2))]
    assert send(tracker, list(rows[:3])) == 3
    assert send(tracker, list(rows)) == 1  # only experiment 1's second trial is new
    assert send(tracker, list(rows)) == 0
    assert len(store) == 4


def test_rows_are_logged_as_results_tsv_writes_them():
    # A row logged live and the same row read back from results.tsv are the same values, which
    # MLflow needs to keep a re-logged trial once.
    live = row(1)
    assert live["wall_seconds"] == 1.23456 and recorded(live)["wall_seconds"] == 1.2
    crash = recorded({**row(2, status="crash"), "val_bpb": 0.5})
    assert crash["val_bpb"] == 0.0 and crash["memory_gb"] == 0.0


def hidden(tmp_path: Path, module: str) -> dict:
    """PYTHONPATH with a stand-in `module` that fails to import, as when the extra is missing."""
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / f"{module}.py").write_text(f'raise ImportError("No module named {module!r}")\n')
    return {"PYTHONPATH": f"{shim}:{os.environ.get('PYTHONPATH', '')}"}


@pytest.mark.parametrize("tracker", ["mlflow", "wandb"])
def test_a_missing_tracker_library_is_one_line_naming_the_pip_command(tmp_repo, tmp_path, tracker):
    lab = make_lab(tmp_repo)
    env = lab_env(tmp_path, [], **hidden(tmp_path, tracker))
    done = run_lab(lab, env, 1, "--track", tracker)
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: --track {tracker} needs ") and done.stderr.count("\n") == 1
    assert f"pip install 'autoresearch[{tracker}]'" in done.stderr
    assert not (lab / "results/t").exists()  # refused before anything ran
    exported = run_cli(lab, env, "export", "--tag", "t", "--to", tracker)
    assert exported.returncode == 1 and exported.stderr.startswith(f"error: --to {tracker} needs ")


def test_bad_tracker_names_are_one_line_errors(tmp_repo, tmp_path):
    lab = make_lab(tmp_repo)
    env = lab_env(tmp_path, [])
    done = run_lab(lab, env, 1, "--track", "tensorboard")
    assert done.returncode == 1 and done.stderr == "error: bad --track 'tensorboard': use mlflow or wandb\n"
    exported = run_cli(lab, env, "export", "--tag", "t", "--to", "neptune")
    assert exported.returncode == 1 and exported.stderr == "error: bad --to 'neptune': use mlflow or wandb\n"


def test_a_declared_targets_other_metrics_are_logged_as_numbers_not_as_a_tag():
    row = {"experiment": 3, "status": "keep", "val_bpb": 0.71, "metrics": "compress_seconds=0.137 peak_mb=512",
           "reason": "a clear win"}
    got = measurements(row)
    assert got["compress_seconds"] == 0.137 and got["peak_mb"] == 512.0 and got["val_bpb"] == 0.71
    assert "metrics" not in texts(row) and texts(row)["reason"] == "a clear win"
