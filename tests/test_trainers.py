"""LocalTrainer: a TrainJob run in a scratch folder of its own, with real subprocesses."""

import os
import signal
import subprocess
import sys
import threading

import pytest

from autoresearch import trainers
from autoresearch.errors import AutoresearchError
from autoresearch.gpus import RAY_MISSING, import_ray
from autoresearch.trainers import WORKER_ENV, LocalTrainer, lab_files, reap_worker
from trainer_lab import alive, gone, job, wait_for_pids


def test_a_job_runs_with_its_files_and_returns_metrics_log_and_artefacts(tmp_path):
    trainer = LocalTrainer("gpu3@here", gpu="3", scratch_root=tmp_path / "scratch")
    out = trainer.run(job())
    assert out.result.status == "ok", out.log.decode()
    assert out.result.metrics["val_bpb"] == 0.987654  # from the job's prepare.py
    assert out.result.metrics["num_steps"] == 7
    assert b"cuda 3\n" in out.log and out.log.rstrip().endswith(b"num_steps:        7")
    assert out.artefacts == {"model.bin": b"weights\x00\xff"}
    assert (out.worker, out.lost, out.changed, out.left_out) == ("gpu3@here", False, [], [])
    assert not any(trainer.folder.iterdir())  # the scratch folder of the run is gone
    result = out.save_log(tmp_path / "runs" / "0001" / "run.log")
    assert result.log_path.read_bytes() == out.log


def test_credentials_and_worker_settings_do_not_reach_training(tmp_path):
    base = {**os.environ, "OMP_NUM_THREADS": "1", "MY_API_KEY": "abc", "PYTHONBREAKPOINT": "x.y"}
    trainer = LocalTrainer("w", scratch_root=tmp_path, base_env=base)
    out = trainer.run(job(OPENAI_API_KEY="sk-secret", GH="ghp_abc", HF_TOKEN="hf_x",
                          CUDA_VISIBLE_DEVICES="7", AUTORESEARCH_EVAL_TOKENS="1024"))
    assert out.result.status == "ok", out.log.decode()
    assert b"secrets ['AUTORESEARCH_EVAL_TOKENS']\n" in out.log  # a lab variable, kept
    assert b"omp None\n" in out.log
    assert b"cuda 7" not in out.log and b"sk-secret" not in out.log


def test_a_hang_is_killed_at_the_timeout_with_its_escaped_child(tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    out = LocalTrainer("w", scratch_root=tmp_path / "s").run(
        job(timeout=3, STANDIN_MODE="hang", STANDIN_PIDS=str(pids)))
    assert out.result.status == "timeout" and out.result.reason == "timeout after 3 s"
    assert out.artefacts == {"model.bin": b"weights\x00\xff"}  # written before the hang
    [(pid, child, _)] = wait_for_pids(pids)
    assert gone([pid, child])


def test_files_written_into_the_lab_are_reported(tmp_path):
    out = LocalTrainer("w", scratch_root=tmp_path).run(job(STANDIN_MODE="write"))
    assert out.result.status == "ok"
    assert out.changed == ["prepare.py", "stray.txt"]


def test_cancel_from_another_thread_stops_the_run_and_its_children(tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    trainer = LocalTrainer("w", scratch_root=tmp_path / "s")
    outputs = []
    the_job = job(experiment=4, trial=1, timeout=600, STANDIN_MODE="hang", STANDIN_PIDS=str(pids))
    thread = threading.Thread(target=lambda: outputs.append(trainer.run(the_job)))
    thread.start()
    [(pid, child, parent)] = wait_for_pids(pids)
    assert parent == os.getpid() and trainer.busy
    assert trainer.cancel((4, 0)) is False  # another trial: left alone
    assert alive(pid)
    assert trainer.cancel((4, 1)) is True
    thread.join(60)
    assert not thread.is_alive()
    assert outputs[0].result.status == "cancelled" and not outputs[0].lost
    assert gone([pid, child])
    assert trainer.cancel() is False and not trainer.busy
    assert trainer.run(job()).result.status == "ok"  # the trainer is usable again


def test_a_job_file_outside_the_lab_is_refused(tmp_path):
    trainer = LocalTrainer("w", scratch_root=tmp_path)
    for name in ("../evil.py", "/etc/x", "train.py"):
        bad = job()
        bad.files = {name: "x"}
        with pytest.raises(ValueError):
            trainer.run(bad)


def test_a_huge_log_keeps_its_head_and_tail(tmp_path, monkeypatch):
    monkeypatch.setattr(trainers, "MAX_LOG_BYTES", 4096)
    monkeypatch.setattr(trainers, "LOG_HEAD_BYTES", 1024)
    noisy = job()
    noisy.train_py = "print('first line')\nprint('x' * 100_000)\n" + noisy.train_py
    out = LocalTrainer("w", scratch_root=tmp_path).run(noisy)
    assert out.result.status == "ok"
    assert out.log.startswith(b"first line\n") and b"bytes of the log left out" in out.log
    assert out.log.rstrip().endswith(b"num_steps:        7") and len(out.log) < 4096 + 100


def test_reap_worker_kills_what_a_dead_worker_left_running(tmp_path):
    folder = tmp_path / "worker"
    folder.mkdir()
    # What survives a SIGKILLed worker: a training in its own session, carrying the worker's mark.
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"],
                              env={**os.environ, WORKER_ENV: "abc123"}, start_new_session=True)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"],
                                 env={**os.environ, WORKER_ENV: "other"}, start_new_session=True)
    try:
        assert reap_worker(folder, "abc123") == 1
        orphan.wait(10)
        assert orphan.returncode == -signal.SIGTERM and not folder.exists()
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
        orphan.kill()
        orphan.wait()


def test_lab_files_are_the_python_files_besides_train_py(tmp_path):
    for name in ("train.py", "prepare.py", "helpers.py", "program.md"):
        (tmp_path / name).write_text(name)
    assert lab_files(tmp_path) == {"helpers.py": "helpers.py", "prepare.py": "prepare.py"}


def test_without_ray_installed_the_error_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets when it is not installed
    with pytest.raises(AutoresearchError) as info:
        import_ray()
    assert str(info.value) == RAY_MISSING


def test_a_reserved_worker_trains_nothing_until_it_is_released(tmp_path):
    """The audit of a keep holds an idle worker's GPU: no training starts there meanwhile."""
    from autoresearch.local_pool import LocalTrainerPool

    pool = LocalTrainerPool(["0", "1"], tmp_path / "workers", probe=[sys.executable, "-c", "pass"])
    try:
        with pool.reserve(prefer="1") as gpu:
            assert gpu == "1" and pool.free == 1
            first = pool.submit(job(1))
            second = pool.submit(job(2))  # no worker for it while "1" is held
            assert pool.result(first, timeout=120).result.status == "ok"
            assert pool.result(second, timeout=120).result.status == "ok"
            assert first.slot.trainer.gpu == second.slot.trainer.gpu == "0"  # one after the other
        assert pool.free == 2
        third = pool.submit(job(3))  # released: both workers take work again
        fourth = pool.submit(job(4))
        assert {h.slot.trainer.gpu for h in (third, fourth)} == {"0", "1"}
        assert all(pool.result(h, timeout=120).result.status == "ok" for h in (third, fourth))
    finally:
        pool.close()
