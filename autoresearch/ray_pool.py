"""Train on many GPUs and nodes: a pool of Ray actors, one per GPU, each wrapping a LocalTrainer.

    pool = RayTrainerPool("auto")           # or "HEAD:6379"; None starts Ray on this machine
    handle = pool.submit(job)               # queued until an actor is free
    for handle in pool.wait(timeout=60):    # the handles that finished
        output = pool.result(handle)        # TrainOutput; output.lost if its actor/node died
    pool.cancel(handle)                     # kills that training on its node, waits until it ended
    pool.close()

Actors live for the whole run (starting one costs seconds; a trial costs milliseconds of Ray on
top of the training). Only jobs and outputs travel: git, results.tsv and the keep rule stay
with the driver. An actor that dies mid-trial (node lost, OOM kill, `ray.kill`) gives its job a
lost output; the pool kills what that training left running on the node (a zero-CPU task pinned
there, see trainers.reap_worker) and starts a replacement actor. Ray is an optional extra and
is imported only here, when a pool is made.
"""

import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from autoresearch.errors import AutoresearchError
from autoresearch.gpus import import_ray
from autoresearch.trainers import (Handle, LocalTrainer, TrainJob, TrainOutput, cancelled_output, lost_output,
                                   reap_worker)

CANCEL_WAIT = 60.0  # seconds an actor gets to stop a cancelled run before it is killed instead
REAP_WAIT = 30.0  # seconds to wait for the clean-up task on a lost actor's node


class TrainerActor:
    """The body of each actor (made remote in RayTrainerPool): a LocalTrainer on the GPU Ray gave it.
    Threaded (max_concurrency=2) so that cancel runs while train is busy."""

    def __init__(self, name: str, scratch_root: str | None):
        import ray

        gpus = [str(g) for g in ray.get_gpu_ids()]
        gpu = ",".join(gpus) if gpus else None
        worker = f"{name}@{socket.gethostname()}" + (f"/gpu{gpu}" if gpu else "")
        self.node = ray.get_runtime_context().get_node_id()
        self.trainer = LocalTrainer(worker, gpu, Path(scratch_root) if scratch_root else None)

    def info(self) -> dict:
        t = self.trainer
        return {"pid": os.getpid(), "node": self.node, "uid": t.uid, "folder": str(t.folder),
                "worker": t.worker_id, "gpu": t.gpu}

    def train(self, job: TrainJob) -> TrainOutput:
        return self.trainer.run(job)

    def cancel(self, key: tuple[int, int]) -> bool:
        return self.trainer.cancel(key, wait=CANCEL_WAIT)


@dataclass(eq=False)
class _Slot:
    index: int
    actor: object
    info_ref: object
    running: Handle | None = None


class RayTrainerPool:
    """`workers` actors (default: the cluster's GPUs / num_gpus_per_worker), each holding
    `num_gpus_per_worker` GPUs (default 1; 0 on a cluster without GPUs when `workers` is given,
    a CPU test bed). `address` None starts a local Ray instance (`init_kwargs` go to
    ray.init then); a pool that started Ray shuts it down on close. An already initialised Ray
    (a test fixture, a Ray job) is used as it is."""

    def __init__(self, address: str | None = None, workers: int | None = None, num_gpus_per_worker: float | None = None,
                 num_cpus_per_worker: float = 1, scratch_root: str | None = None, init_kwargs: dict | None = None):
        ray = self.ray = import_ray()
        self.owns_ray = not ray.is_initialized()
        if self.owns_ray:
            kwargs = {"include_dashboard": False, "log_to_driver": False, **(init_kwargs or {})}
            try:
                ray.init(address=address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                raise AutoresearchError(f"could not start or reach {where}: {_one_line(exc)}") from None
        gpus = ray.cluster_resources().get("GPU", 0)
        if num_gpus_per_worker is None:  # a cluster without GPUs (a CPU test bed): CPU workers
            num_gpus_per_worker = 1 if gpus or workers is None else 0
        if workers is None:
            workers = int(gpus // num_gpus_per_worker) if num_gpus_per_worker else 0
            if workers < 1:
                self.close()
                raise AutoresearchError("the Ray cluster has no GPUs: start its nodes with --num-gpus N, or pass --workers")
        elif workers < 1:
            self.close()
            raise AutoresearchError(f"--workers must be at least 1, not {workers}")
        elif workers * num_gpus_per_worker > gpus:
            self.close()
            raise AutoresearchError(f"{workers} workers need {workers * num_gpus_per_worker:g} GPUs; the Ray cluster has {gpus:g}")
        self._actor_class = ray.remote(TrainerActor).options(
            num_gpus=num_gpus_per_worker, num_cpus=num_cpus_per_worker, max_concurrency=2, max_restarts=0)
        self._reap = ray.remote(num_cpus=0)(reap_worker)
        self.scratch_root = scratch_root
        self._started = 0
        self.slots = [self._new_slot(i) for i in range(workers)]
        self.queue: list[Handle] = []
        self.unclaimed: list[Handle] = []  # submitted, result() not yet called: what wait() watches
        self._ids = 0
        self.replaced = 0  # actors lost and replaced so far
        self.reap_errors: list[str] = []  # clean-ups that could not run (their node was gone)

    # -- the interface the coordinator uses ------------------------------------------------------

    @property
    def size(self) -> int:
        return len(self.slots)

    @property
    def free(self) -> int:
        """Workers with nothing running or queued for them: how many jobs to submit now."""
        return max(0, sum(s.running is None for s in self.slots) - len(self.queue))

    def submit(self, job: TrainJob) -> Handle:
        self._ids += 1
        handle = Handle(self._ids, job)
        self.queue.append(handle)
        self.unclaimed.append(handle)
        self._dispatch()
        return handle

    def wait(self, handles: list[Handle] | None = None, timeout: float | None = None) -> list[Handle]:
        """Block until at least one of `handles` (default: every handle whose result() has not
        been taken) is done, or `timeout` seconds pass; returns the finished ones (none on timeout)."""
        ray = self.ray
        watched = list(handles) if handles is not None else list(self.unclaimed)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            finished = [h for h in watched if h.done]
            running = [s.running for s in self.slots if s.running is not None]
            if finished or not running:
                return finished
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _ = ray.wait([h.ref for h in running], num_returns=1, timeout=left)
            for h in running:
                if h.ref in ready:
                    self._finish(h)
            if not ready:
                return []

    def result(self, handle: Handle, timeout: float | None = None) -> TrainOutput:
        """The job's TrainOutput, waiting for it; a bug in the worker code is raised here."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not handle.done:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"experiment {handle.job.experiment} trial {handle.job.trial} still running")
            self.wait([handle], left)
        if handle in self.unclaimed:
            self.unclaimed.remove(handle)
        if handle.error is not None:
            raise handle.error
        return handle.output

    def cancel(self, handle: Handle) -> None:
        """Stop the job: dequeued if it had not started; otherwise its training is killed on its
        node and this returns once it has ended (result(handle) then says "cancelled"). An actor
        that cannot stop it in CANCEL_WAIT seconds is killed and replaced."""
        if handle.done:
            return
        if handle in self.queue:
            self.queue.remove(handle)
            handle.output = cancelled_output("")
            return
        slot, ray = handle.slot, self.ray
        try:
            ray.get(slot.actor.cancel.remote(handle.job.key), timeout=CANCEL_WAIT + 10)
        except ray.exceptions.GetTimeoutError:  # stuck: the actor goes, _finish reaps and replaces it
            ray.kill(slot.actor, no_restart=True)
        except ray.exceptions.RayError:
            pass  # the actor is gone already: the same
        ready, _ = ray.wait([handle.ref], timeout=30)
        if not ready:
            ray.kill(slot.actor, no_restart=True)
        self._finish(handle)

    def pending(self) -> list[Handle]:
        return list(self.queue) + [s.running for s in self.slots if s.running is not None]

    def workers(self, timeout: float = 60.0) -> list[dict]:
        """Each actor's pid, node id, scratch folder, worker name and GPU (waits for pending actors)."""
        return self.ray.get([s.info_ref for s in self.slots], timeout=timeout)

    @contextmanager
    def reserve(self, prefer: str | None = None):
        """The loop's own work (an audit) runs on the head node, not on a worker's GPU."""
        yield None

    def close(self) -> None:
        """Cancel what runs, kill the actors, shut Ray down if this pool started it."""
        for handle in list(getattr(self, "queue", [])):
            self.cancel(handle)
        for slot in getattr(self, "slots", []):
            if slot.running is not None:
                try:
                    self.cancel(slot.running)
                except Exception:  # closing anyway
                    pass
            self.ray.kill(slot.actor, no_restart=True)
        self.slots = []
        if self.owns_ray and self.ray.is_initialized():
            self.ray.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- slots, dispatch, losses ---------------------------------------------------------------

    def _new_slot(self, index: int) -> _Slot:
        self._started += 1
        actor = self._actor_class.remote(f"w{index}.{self._started}", self.scratch_root)
        return _Slot(index, actor, actor.info.remote())

    def _dispatch(self) -> None:
        for slot in self.slots:
            if not self.queue:
                return
            if slot.running is None:
                handle = self.queue.pop(0)
                handle.slot, slot.running = slot, handle
                handle.ref = slot.actor.train.remote(handle.job)

    def _finish(self, handle: Handle) -> None:
        ray, slot = self.ray, handle.slot
        try:
            handle.output = ray.get(handle.ref)
        except ray.exceptions.RayTaskError as exc:  # our code raised on the worker: a bug, not a loss
            handle.error = exc
        except ray.exceptions.RayError as exc:  # actor, worker or node died; object lost
            handle.output = lost_output(self._worker_name(slot), f"worker lost: {_one_line(exc)}")
            self._replace(slot)
        if slot.running is handle:
            slot.running = None
        self._dispatch()

    def _worker_name(self, slot: _Slot) -> str:
        try:
            return self.ray.get(slot.info_ref, timeout=1)["worker"]
        except Exception:  # never started, or its answer is lost with it
            return f"w{slot.index}"

    def _replace(self, slot: _Slot) -> None:
        """Kill what the lost actor's training left on its node, then put a new actor in its place."""
        ray = self.ray
        ray.kill(slot.actor, no_restart=True)
        try:
            info = ray.get(slot.info_ref, timeout=1)
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            pinned = self._reap.options(scheduling_strategy=NodeAffinitySchedulingStrategy(info["node"], soft=False))
            ray.get(pinned.remote(info["folder"], info["uid"]), timeout=REAP_WAIT)
        except Exception as exc:  # the node itself is gone (and its processes with it), or never started one
            self.reap_errors.append(f"{type(exc).__name__}: {_one_line(exc)}")
        self.replaced += 1
        fresh = self._new_slot(slot.index)
        slot.actor, slot.info_ref = fresh.actor, fresh.info_ref


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
