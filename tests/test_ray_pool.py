"""RayTrainerPool on a real local Ray cluster (2 CPUs, 2 declared GPUs): real actors, real
processes, real kills. Ray starts once for the module."""

import os
import signal

import pytest

from autoresearch.errors import AutoresearchError
from trainer_lab import alive, gone, job, wait_for_pids

ray = pytest.importorskip("ray")
from autoresearch.ray_pool import RayTrainerPool  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, num_gpus=2, object_store_memory=80 << 20, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def pool(cluster, tmp_path_factory):
    pool = RayTrainerPool(scratch_root=str(tmp_path_factory.mktemp("scratch")))
    assert pool.size == 2 and not pool.owns_ray  # 2 GPUs declared, 1 per worker
    yield pool
    pool.close()


def pids_folder(tmp_path):
    folder = tmp_path / "pids"
    folder.mkdir()
    return folder


def test_jobs_run_concurrently_on_two_actors_that_are_reused(pool, tmp_path):
    actors = {w["pid"] for w in pool.workers()}
    assert len(actors) == 2
    folder = pids_folder(tmp_path)
    # The first two only finish once both have started: they must run at the same time.
    handles = [pool.submit(job(experiment=n, STANDIN_MODE="barrier", STANDIN_NEED="2", STANDIN_PIDS=str(folder)))
               for n in (1, 2)]
    handles += [pool.submit(job(experiment=n)) for n in (3, 4, 5)]
    assert pool.free == 0 and len(pool.queue) == 3
    outputs = [pool.result(h) for h in handles]
    for out in outputs:
        assert out.result.status == "ok" and not out.lost, out.log.decode()
        assert out.result.metrics["val_bpb"] == 0.987654
        assert out.artefacts == {"model.bin": b"weights\x00\xff"}
    assert all(b"barrier passed" in out.log for out in outputs[:2])
    # train.py's parent is the actor that ran it: the same two actors ran all five trials.
    parents = {int(out.log.split(b"ppid ")[1].split()[0]) for out in outputs}
    assert parents == actors
    assert {w["pid"] for w in pool.workers()} == actors
    assert {out.log.split(b"cuda ")[1].split()[0] for out in outputs} == {b"0", b"1"}
    assert all(b"omp None" in out.log for out in outputs)  # Ray's OMP_NUM_THREADS=1 is not passed on
    assert len({out.worker for out in outputs}) == 2 and pool.free == 2


def test_wait_returns_what_finished(pool, tmp_path):
    folder = pids_folder(tmp_path)
    slow = pool.submit(job(STANDIN_MODE="hang", STANDIN_PIDS=str(folder)))
    quick = pool.submit(job())
    assert pool.wait([slow], timeout=0.5) == []
    assert pool.wait(timeout=120) == [quick]
    pool.cancel(slow)
    assert pool.result(slow).result.status == "cancelled"


def test_cancel_kills_the_training_on_its_node_and_the_actor_stays(pool, tmp_path):
    actors = {w["pid"] for w in pool.workers()}
    folder = pids_folder(tmp_path)
    handle = pool.submit(job(experiment=7, trial=2, timeout=600, STANDIN_MODE="hang", STANDIN_PIDS=str(folder)))
    [(pid, child, actor)] = wait_for_pids(folder)
    assert actor in actors and alive(pid) and alive(child)
    pool.cancel(handle)
    out = pool.result(handle)
    assert out.result.status == "cancelled" and not out.lost
    assert gone([pid, child])
    assert {w["pid"] for w in pool.workers()} == actors and pool.replaced == 0
    assert pool.result(pool.submit(job())).result.status == "ok"


def test_cancel_of_a_queued_job_never_runs_it(pool, tmp_path):
    folder = pids_folder(tmp_path)
    busy = [pool.submit(job(STANDIN_MODE="hang", STANDIN_PIDS=str(folder))) for _ in range(2)]
    queued = pool.submit(job(experiment=9))
    wait_for_pids(folder, 2)
    pool.cancel(queued)
    assert pool.result(queued).result.status == "cancelled" and queued not in pool.queue
    for handle in busy:
        pool.cancel(handle)
    assert pool.free == 2


def test_an_actor_killed_mid_trial_is_a_lost_output_and_is_replaced(pool, tmp_path):
    before = {w["pid"] for w in pool.workers()}
    folder = pids_folder(tmp_path)
    handle = pool.submit(job(experiment=11, STANDIN_MODE="hang", STANDIN_PIDS=str(folder)))
    [(pid, child, actor)] = wait_for_pids(folder)
    replaced = pool.replaced
    os.kill(actor, signal.SIGKILL)  # as the OOM killer would; training lives on in its own session
    out = pool.result(handle)
    assert out.lost and out.lost_reason.startswith("worker lost: ")
    assert out.result.status == "lost" and out.worker.startswith("w")
    assert pool.replaced == replaced + 1
    assert gone([pid, child])  # the clean-up task on that node killed them
    after = {w["pid"] for w in pool.workers()}
    assert actor not in after and len(after) == 2 and before - {actor} <= after
    # The coordinator may rerun it: the pool works at full size again.
    outputs = [pool.result(h) for h in [pool.submit(job(experiment=11, trial=1)) for _ in range(2)]]
    assert all(o.result.status == "ok" for o in outputs)


def test_ray_kill_of_an_actor_is_a_lost_output_too(pool, tmp_path):
    folder = pids_folder(tmp_path)
    handle = pool.submit(job(STANDIN_MODE="hang", STANDIN_PIDS=str(folder)))
    [(pid, child, _)] = wait_for_pids(folder)
    ray.kill(handle.slot.actor)
    out = pool.result(handle)
    assert out.lost and gone([pid, child])
    assert pool.result(pool.submit(job())).result.status == "ok"


def test_more_workers_than_gpus_is_a_one_line_error(cluster):
    with pytest.raises(AutoresearchError, match="3 workers need 3 GPUs; the Ray cluster has 2"):
        RayTrainerPool(workers=3)
    assert ray.is_initialized()  # a pool that did not start Ray leaves it running

