"""`--track mlflow` and `export --to mlflow` against MLflow's real SQLite store in tmp_path."""

import os
import socket
from pathlib import Path

import pytest

# CI installs the extra (.ci/run): there a missing library is a failure, never a skip.
mlflow = __import__("mlflow") if os.environ.get("CI") else pytest.importorskip("mlflow")
# MLflow's own store, read here by the test, trips SQLAlchemy 2.1's deprecation of `noload`.
pytestmark = pytest.mark.filterwarnings("ignore:The ..noload.. loader strategy is deprecated")
from mlflow.tracking import MlflowClient  # noqa: E402

from autoresearch.records import ResultsFile  # noqa: E402
from standin import make_lab  # noqa: E402
from track_lab import SCRIPT, lab_env, more_steps, run_cli, run_lab  # noqa: E402


@pytest.fixture
def lab(tmp_repo) -> Path:
    return make_lab(tmp_repo)


def client(lab: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{lab / 'results/t/mlflow.db'}")


def runs_by_experiment(lab: Path) -> dict:
    c = client(lab)
    experiment = c.get_experiment_by_name("autoresearch/t")
    runs = c.search_runs([experiment.experiment_id], max_results=1000)
    by_number = {int(r.data.tags["autoresearch.experiment"]): r for r in runs}
    assert len(by_number) == len(runs), "one run per experiment"
    return by_number


def history(lab: Path, run, key: str = "val_bpb") -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client(lab).get_metric_history(run.info.run_id, key))


def trials_logged(run) -> list[int]:
    return sorted(int(k.rsplit(".", 1)[1]) for k in run.data.tags if k.startswith("autoresearch.trial."))


def test_track_mlflow_logs_one_run_per_experiment_with_trials_as_steps(lab, tmp_path):
    done = run_lab(lab, lab_env(tmp_path, SCRIPT), 4, "--track", "mlflow")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # nothing of MLflow's own logging
    assert all(line.startswith(("[", "done", "warning: --audit off")) for line in done.stdout.splitlines())
    rows = ResultsFile(lab / "results/t/results.tsv").rows()
    runs = runs_by_experiment(lab)
    assert sorted(runs) == [0, 1, 2, 3]
    for n, run in runs.items():  # every trial of results.tsv, once
        assert trials_logged(run) == [r.trial for r in rows if r.experiment == n]

    baseline = runs[0]
    assert history(lab, baseline) == [(1, 1.0), (2, 1.0)]
    assert baseline.info.status == "FINISHED" and baseline.data.tags["status"] == "keep"
    assert baseline.data.params["proposer"] == "baseline"

    kept, row = runs[1], next(r for r in rows if r.experiment == 1)
    assert kept.info.run_name == "0001 set VAL 0.99"
    assert history(lab, kept) == [(1, 0.99)] and kept.data.metrics["mean_val_bpb"] == 0.99
    assert kept.data.params == {"tag": "t", "base": rows[0].commit, "experiment": "1", "commit": row.commit,
                                "parent": rows[0].commit, "proposer": "command", "model": ""}
    tags = kept.data.tags
    assert (tags["status"], tags["hypothesis"], tags["description"]) == ("keep", "VAL 0.99 should help", "set VAL 0.99")
    assert tags["reason"] == row.reason and tags["autoresearch.tag"] == "t"
    assert tags["mlflow.source.git.commit"] == row.commit
    assert kept.data.metrics["cost_usd"] == 0.0 and kept.data.metrics["wall_seconds"] == row.wall_seconds
    diff = Path(mlflow.artifacts.download_artifacts(run_id=kept.info.run_id, artifact_path="diff.patch",
                                                    tracking_uri=client(lab).tracking_uri, dst_path=str(tmp_path)))
    assert diff.read_text() == (lab / "results/t/runs/0001/diff.patch").read_text()
    assert "+VAL = 0.99" in diff.read_text()

    assert runs[2].data.tags["status"] == "discard"
    crashed = runs[3]
    assert crashed.info.status == "FAILED" and crashed.data.tags["status"] == "crash"
    assert "boom" in crashed.data.tags["reason"] and "val_bpb" not in crashed.data.metrics  # 0 is no measurement


def test_a_resume_and_an_export_log_nothing_twice(lab, tmp_path):
    env = lab_env(tmp_path, SCRIPT[:1])
    assert run_lab(lab, env, 2, "--track", "mlflow").returncode == 0
    c, runs = client(lab), runs_by_experiment(lab)
    # As if killed -9 after experiment 1's metrics reached the store but before its trial was
    # marked as logged: the resume logs that trial again, and the store keeps it once.
    c.delete_tag(runs[1].info.run_id, "autoresearch.trial.1")
    more_steps(tmp_path, [{"VAL": 0.98}])
    resumed = run_lab(lab, env, 3, "--track", "mlflow")
    assert resumed.returncode == 0, resumed.stderr
    runs = runs_by_experiment(lab)
    assert sorted(runs) == [0, 1, 2] and trials_logged(runs[1]) == [1]
    assert history(lab, runs[0]) == [(1, 1.0), (2, 1.0)]
    assert history(lab, runs[1]) == [(1, 0.99)] and history(lab, runs[1], "wall_seconds")[0][0] == 1
    assert len(history(lab, runs[1], "wall_seconds")) == 1

    exported = run_cli(lab, env, "export", "--tag", "t", "--to", "mlflow")
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.startswith("exported 0 trials of 3 experiments to MLflow (4 already there): sqlite:///")
    assert history(lab, runs_by_experiment(lab)[2]) == [(1, 0.98)]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_tracking_server_that_is_down_costs_one_warning_line_and_export_logs_it_later(lab, tmp_path):
    down = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{closed_port()}",
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    env = lab_env(tmp_path, SCRIPT, **down)
    done = run_lab(lab, env, 4, "--track", "mlflow")
    assert done.returncode == 0, done.stderr
    lines = (done.stdout + done.stderr).splitlines()
    warnings = [line for line in lines if "tracking failed" in line]
    assert len(warnings) == 1, lines
    assert warnings[0].startswith("warning: mlflow tracking failed (")
    assert warnings[0].endswith("`autoresearch export --tag t --to mlflow` logs what it missed")
    assert "Traceback" not in done.stderr
    rows = ResultsFile(lab / "results/t/results.tsv").rows()
    assert [(r.experiment, r.status) for r in rows] == [(0, "trial"), (0, "keep"), (1, "keep"), (2, "discard"),
                                                        (3, "crash")]

    exported = run_cli(lab, lab_env(tmp_path, []), "export", "--tag", "t", "--to", "mlflow")  # the local store
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.startswith("exported 5 trials of 4 experiments to MLflow (0 already there)")
    runs = runs_by_experiment(lab)
    assert {n: trials_logged(run) for n, run in runs.items()} == {0: [1, 2], 1: [1], 2: [1], 3: [1]}

    refused = run_cli(lab, env, "export", "--tag", "t", "--to", "mlflow")  # the server, still down
    assert refused.returncode == 1 and refused.stderr.startswith("error: export to mlflow failed: ")
    assert refused.stderr.count("\n") == 1
