"""Train on this machine's GPUs: a pool of LocalTrainers, one per GPU (or N on the CPU), each in a
thread of its own. The same interface as ray_pool.RayTrainerPool, so the coordinator drives
either:

    pool = LocalTrainerPool(["0", "1"], scratch_root)   # or [None] * N: no GPU pinning
    handle = pool.submit(job)                # queued until a worker is free
    for handle in pool.wait(timeout=1):      # the handles that finished
        output = pool.result(handle)         # TrainOutput; output.lost if its GPU went away
    pool.cancel(handle)                      # kills that training, returns once it has ended
    pool.close()

A GPU that disappears (fell off the bus, reset by the driver) makes its trainings crash. After a
crash on a GPU the pool asks a fresh process whether the GPU is still there (`probe`); when it is
not, the worker is taken out of the pool, and the job comes back lost so the coordinator can run
it on another GPU. A crash that the probe does not confirm is the training's own.
"""

import os
import subprocess
from contextlib import contextmanager
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from autoresearch.gpus import pin_env
from autoresearch.trainers import Handle, LocalTrainer, TrainJob, TrainOutput, cancelled_output, lost_output

PROBE_TIMEOUT = 120.0
# Exit 0 when the (only visible) GPU answers; run with CUDA_VISIBLE_DEVICES set to the worker's GPU.
GPU_PROBE = [sys.executable, "-c",
             "import sys, torch; sys.exit(0 if torch.cuda.is_available() and torch.cuda.device_count() > 0 else 3)"]


@dataclass(eq=False)
class _LocalSlot:
    index: int
    trainer: LocalTrainer
    running: Handle | None = None
    gone: str = ""  # why the worker was taken out ("" while it is in)
    held: bool = False  # reserved for the loop's own work on its GPU (an audit): no training starts

    @property
    def idle(self) -> bool:
        return self.running is None and not self.gone and not self.held


def probe_gpu(gpu: str, env: dict, probe: Sequence[str] | None = None) -> bool:
    """Whether GPU `gpu` still answers a fresh process."""
    try:
        done = subprocess.run(list(probe or GPU_PROBE), env={**env, **pin_env(gpu, env)}, capture_output=True,
                              timeout=PROBE_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


class LocalTrainerPool:
    """One worker per entry of `gpus` (a CUDA_VISIBLE_DEVICES entry from gpus.worker_gpus: an
    index, GPU-... or MIG-...; or None for no pinning)."""

    def __init__(self, gpus: Sequence[str | None], scratch_root: Path, base_env: dict | None = None,
                 wrap: Callable | None = None, probe: Sequence[str] | None = None):
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.probe = list(probe) if probe is not None else None  # None: GPU_PROBE
        self.scratch_root = Path(scratch_root)
        self.slots = []
        for i, gpu in enumerate(gpus):
            name = f"w{i}" + ("" if gpu is None else f"/gpu{gpu}" if gpu.isdigit() else f"/{gpu[:12]}")
            self.slots.append(_LocalSlot(i, LocalTrainer(name, gpu, self.scratch_root, self.base_env, wrap=wrap)))
        self.queue: list[Handle] = []
        self.unclaimed: list[Handle] = []
        self._ids = 0
        self._changed = threading.Condition()

    # -- the interface the coordinator uses ------------------------------------------------------

    @property
    def size(self) -> int:
        """Workers still in the pool (a GPU that went away is out)."""
        return sum(not s.gone for s in self.slots)

    @property
    def free(self) -> int:
        with self._changed:
            return max(0, sum(s.idle for s in self.slots) - len(self.queue))

    def submit(self, job: TrainJob) -> Handle:
        with self._changed:
            self._ids += 1
            handle = Handle(self._ids, job)
            self.queue.append(handle)
            self.unclaimed.append(handle)
            self._dispatch()
        return handle

    def wait(self, handles: list[Handle] | None = None, timeout: float | None = None) -> list[Handle]:
        """Block until one of `handles` (default: all not yet claimed) is done or `timeout` passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while True:
                watched = list(handles) if handles is not None else list(self.unclaimed)
                finished = [h for h in watched if h.done]
                if finished or not any(not h.done for h in watched):
                    return finished
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return []
                self._changed.wait(left)

    def result(self, handle: Handle, timeout: float | None = None) -> TrainOutput:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not handle.done:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"experiment {handle.job.experiment} trial {handle.job.trial} still running")
            self.wait([handle], left)
        with self._changed:
            if handle in self.unclaimed:
                self.unclaimed.remove(handle)
        if handle.error is not None:
            raise handle.error
        return handle.output

    def cancel(self, handle: Handle) -> None:
        """Dequeue it, or kill its training and return once it has ended."""
        with self._changed:
            if handle.done:
                return
            if handle in self.queue:
                self.queue.remove(handle)
                handle.output = cancelled_output("")
                self._changed.notify_all()
                return
            slot = handle.slot
        slot.trainer.cancel(handle.job.key)
        self.wait([handle], timeout=60)

    def pending(self) -> list[Handle]:
        with self._changed:
            return list(self.queue) + [s.running for s in self.slots if s.running is not None]

    def workers(self) -> list[dict]:
        return [{"worker": s.trainer.worker_id, "gpu": s.trainer.gpu, "uid": s.trainer.uid,
                 "folder": str(s.trainer.folder), "gone": s.gone} for s in self.slots]

    def close(self) -> None:
        for handle in self.pending():
            self.cancel(handle)

    @contextmanager
    def reserve(self, prefer: str | None = None):
        """Hold an idle worker (`prefer`'s GPU if it is idle) for work of the loop's own, so that
        no training shares its GPU meanwhile; waits for one. Yields its GPU (None: no pinning)."""
        with self._changed:
            while not any(s.idle for s in self.slots) and any(not s.gone for s in self.slots):
                self._changed.wait()
            idle = [s for s in self.slots if s.idle]
            slot = next((s for s in idle if s.trainer.gpu == prefer), idle[0] if idle else None)
            if slot is not None:
                slot.held = True
        try:
            yield slot.trainer.gpu if slot is not None else prefer
        finally:
            if slot is not None:
                with self._changed:
                    slot.held = False
                    self._dispatch()
                    self._changed.notify_all()

    # -- threads ---------------------------------------------------------------------------------

    def _dispatch(self) -> None:  # with self._changed held
        for slot in self.slots:
            if not self.queue:
                return
            if slot.idle:
                handle = self.queue.pop(0)
                handle.slot, slot.running = slot, handle
                threading.Thread(target=self._run, args=(slot, handle), daemon=True,
                                 name=f"train-{handle.job.experiment}-{handle.job.trial}").start()

    def _run(self, slot: _LocalSlot, handle: Handle) -> None:
        try:
            output = slot.trainer.run(handle.job)
            gpu = slot.trainer.gpu
            status = output.result.status
            if status in ("crash", "timeout") and gpu is not None and not probe_gpu(gpu, self.base_env, self.probe):
                slot.gone = f"GPU {gpu} does not answer after a {status}; the worker is out of the pool"
                output = lost_output(slot.trainer.worker_id, slot.gone, output.log)
        except BaseException as exc:  # a bug in the worker code: the coordinator raises it
            output = None
            handle.error = exc
        with self._changed:
            if output is not None:
                handle.output = output
            slot.running = None
            self._dispatch()
            self._changed.notify_all()

