"""The coordinator on a real local Ray cluster (2 CPUs' worth of actors, 2 declared GPUs): the
workers are Ray actors; git, results.tsv and the keep rule stay with the driver."""

import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from autoresearch.loop import run
from standin import TRAIN_PY, ScriptedProposer, make_lab
from test_coordinator import check_record, config
from test_loop import RecordingView

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=4, num_gpus=2, object_store_memory=80 << 20, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_two_ray_workers_one_record_one_best(cluster, tmp_repo):
    lab = make_lab(tmp_repo)
    steps = [{"VAL": round(1.0 - i / 1000, 6), "SLEEP": 0.5} for i in range(1, 12)]
    outcome = run(config(lab, workers=None, ray="local", max_experiments=5), proposer=ScriptedProposer(steps),
                  view=RecordingView())
    got = check_record(lab, outcome)
    assert outcome.experiments == 5 and all(r.sandbox == "none" for r in got)
    assert ray.is_initialized()  # the run used the Ray it found and left it up


def test_an_actor_lost_mid_trial_reruns_that_trial_elsewhere(cluster, tmp_repo, tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    flag = tmp_path / "kill-one"
    flag.write_text("")
    train_py = TRAIN_PY.replace(
        'print("step 00001',
        f'open({str(pids)!r} + "/" + str(os.getpid()), "w").close()\n'
        f'time.sleep(1.0 if os.path.exists({str(flag)!r}) else 0.0)\nprint("step 00001', 1)
    lab = make_lab(tmp_repo, train_py)

    def kill_one_actor():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for name in os.listdir(pids):
                try:
                    actor = psutil.Process(int(name)).parent().parent()  # train.py <- reaper <- actor
                except (psutil.Error, AttributeError):
                    continue
                flag.unlink()
                os.kill(actor.pid, signal.SIGKILL)  # as a lost node or the OOM killer would
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_actor)
    killer.start()
    view = RecordingView()
    steps = [{"VAL": round(1.0 - i / 1000, 6)} for i in range(1, 12)]
    outcome = run(config(lab, workers=None, ray="local", max_experiments=4), proposer=ScriptedProposer(steps), view=view)
    killer.join()
    got = check_record(lab, outcome)
    assert not flag.exists(), "no actor was killed"
    assert any("lost on" in note for note in view.notes), view.notes
    assert all(r.status != "crash" for r in got) and outcome.experiments == 4
