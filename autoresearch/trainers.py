"""Training execution away from the run's git worktree: one job in, one output back.

The coordinator (git, results.tsv, the keep rule) stays with the harness. A worker gets a
TrainJob that carries everything a training run needs as plain data (train.py's text, the other
lab files, the lab's variables), runs it in a scratch folder of its own with the runner's
supervision, and hands back a TrainOutput: the RunResult, the whole run.log, the files the run
left in its output folder and what it changed that it should not have. Nothing in a job or an
output is a path on the coordinator's machine, so the same pair travels to a Ray actor on
another node (autoresearch/ray_pool.py) unchanged.

A worker marks every training it starts with two variables, inherited by everything train.py
spawns: WORKER_ENV (the worker) and JOB_ENV (this one run). `cancel` kills by the run's mark;
`reap_worker` kills by the worker's mark and the runner's pid files, for a worker process that
died (SIGKILL, a lost Ray actor) while its training, in a session of its own, lived on.
"""

import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Mapping

from autoresearch.gpus import pin_env
from autoresearch.process import kill_marked, kill_orphan
from autoresearch.runner import RunResult, is_secret, run_training, training_env

OUTPUT_ENV = "AUTORESEARCH_OUTPUT_DIR"  # where train.py may write files to send back (a model handoff)
WORKER_ENV = "AUTORESEARCH_WORKER_ID"  # marks every training a worker starts
JOB_ENV = "AUTORESEARCH_JOB_ID"  # marks one training run; cancel kills by it
MAX_LOG_BYTES = 32 << 20  # a chattier log keeps its first MiB and the rest of this from its end
LOG_HEAD_BYTES = 1 << 20
MAX_ARTEFACT_BYTES = 4 << 30  # in all, per run; files past it are named in left_out, not sent
CANCEL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL when a run is cancelled
# Set by a worker framework for its own process, wrong for train.py: Ray pins OMP_NUM_THREADS to 1
# (torch on the CPU would use one core) and points breakpoint() at its remote debugger.
WORKER_NOISE = ("OMP_NUM_THREADS", "PYTHONBREAKPOINT")


@dataclass
class TrainJob:
    experiment: int
    trial: int  # 0 for the first attempt; the coordinator numbers fixes and reruns
    train_py: str | None  # full text; None for a declared target (its files are all in `files`)
    # Other files by relative path: the lab's {"prepare.py": text}; a declared target's whole tree
    # (text or bytes), its edit files as the candidate has them and the fixed files of its base.
    files: dict[str, str | bytes] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # lab variables only (AUTORESEARCH_*), not a whole environment
    timeout: float = 600.0  # hard limit of the run, seconds
    command: list[str] | None = None  # default: python train.py (the worker's python); a target's argv
    # Variables naming a file in the run's output folder: {"AUTORESEARCH_HANDOFF": "model.pt2"}
    # becomes the absolute path there on the worker, so the file comes back as an artefact.
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[int, int]:
        return self.experiment, self.trial


@dataclass
class TrainOutput:
    result: RunResult  # status "cancelled" when cancelled; log_path is a placeholder until save_log
    log: bytes  # the whole run.log (cut in the middle past MAX_LOG_BYTES)
    artefacts: dict[str, bytes]  # files under the run's OUTPUT_ENV folder, by relative path
    worker: str  # which worker ran it ("gpu1@host" or the pool's name)
    lost: bool = False  # the worker died or could not run it: no verdict, the coordinator may rerun
    lost_reason: str = ""
    changed: list[str] = field(default_factory=list)  # lab files the run wrote, created or removed
    left_out: list[str] = field(default_factory=list)  # artefacts not sent (over MAX_ARTEFACT_BYTES, not regular files)

    def save_log(self, path: Path) -> RunResult:
        """Write the log to `path` (runs/NNNN/run.log) and point the result at it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.log)
        self.result.log_path = path
        return self.result


@dataclass(eq=False)
class Handle:
    """One job submitted to a pool (local_pool, ray_pool): queued, running on a slot, or
    finished (output or error set)."""

    id: int
    job: TrainJob
    slot: object = None  # the pool's slot that runs it
    ref: object = None  # Ray: the ObjectRef of the actor call
    output: TrainOutput | None = None
    error: BaseException | None = None  # a bug in the worker code, raised by the pool's result()
    submitted: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> bool:
        return self.output is not None or self.error is not None


def lost_output(worker: str, reason: str, log: bytes = b"") -> TrainOutput:
    return TrainOutput(RunResult("lost", {}, Path("run.log"), 0.0, None, reason), log, {}, worker,
                       lost=True, lost_reason=reason)


def cancelled_output(worker: str, log: bytes = b"") -> TrainOutput:
    return TrainOutput(RunResult("cancelled", {}, Path("run.log"), 0.0, None, "cancelled"), log, {}, worker)


def lab_files(root: Path, exclude: tuple[str, ...] = ("train.py",)) -> dict[str, str]:
    """The lab files a job needs besides train.py: the Python files at the top of the lab."""
    return {p.name: p.read_text() for p in sorted(Path(root).glob("*.py")) if p.name not in exclude}


def _check_relative(name: str, train_py: bool = True) -> None:
    parts = PurePosixPath(name).parts
    if not parts or name.startswith("/") or ".." in parts or name == "." or (train_py and name == "train.py"):
        raise ValueError(f"job file {name!r}: must be a relative path inside the lab, not train.py")


def job_files(job: TrainJob) -> dict[str, bytes]:
    """Every file the job writes into its folder, as bytes."""
    named = {} if job.train_py is None else {"train.py": job.train_py}
    return {name: text if isinstance(text, bytes) else text.encode("utf-8")
            for name, text in {**named, **job.files}.items()}


class LocalTrainer:
    """Runs TrainJobs one at a time in its own scratch folder, on one GPU (or none).

    `gpu` becomes CUDA_VISIBLE_DEVICES for the run (an index, GPU-... or MIG-..., as gpus.py
    resolved it), with CUDA_DEVICE_ORDER=PCI_BUS_ID unless set; None leaves the worker's own setting.
    `base_env` is the environment the training env is built from (credentials dropped by the
    runner's filter): this process's by default. One LocalTrainer per process: the runner's
    orphan handling assumes one training at a time per harness process (see docs/ray.md).
    """

    def __init__(self, worker_id: str, gpu: str | None = None, scratch_root: Path | None = None,
                 base_env: Mapping[str, str] | None = None, keep_scratch: bool = False,
                 wrap: Callable[[list[str], Path, Path], list[str]] | None = None):
        self.worker_id = worker_id
        self.gpu = gpu
        self.wrap = wrap  # (argv, lab folder, output folder) -> argv: the coordinator's sandbox
        self.uid = uuid.uuid4().hex[:16]
        root = Path(scratch_root) if scratch_root else Path(tempfile.gettempdir()) / "autoresearch-workers"
        self.folder = root / self.uid
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.keep_scratch = keep_scratch
        self._lock = threading.Lock()
        self._current: tuple[int, int] | None = None
        self._token = ""
        self._cancelled = threading.Event()
        self._done = threading.Event()
        self._done.set()

    def run(self, job: TrainJob) -> TrainOutput:
        """Train `job` here; a crash or timeout is a status, a cancel is status "cancelled", a
        broken scratch folder (disk full) is a lost output."""
        for name in job.files:
            _check_relative(name, job.train_py is not None)
        with self._lock:
            if self._current is not None:
                raise RuntimeError(f"worker {self.worker_id} is already running {self._current}")
            self._current, self._token = job.key, uuid.uuid4().hex
            self._cancelled.clear()
            self._done.clear()
        folder = self.folder / f"{job.experiment:04d}-{job.trial}-{self._token[:8]}"
        try:
            try:
                lab, out = self._materialise(folder, job)
            except OSError as exc:
                return lost_output(self.worker_id, f"could not prepare the scratch folder: {exc}")
            if self._cancelled.is_set():
                return cancelled_output(self.worker_id)
            command = job.command or [sys.executable, "train.py"]
            if self.wrap is not None:
                command = self.wrap(list(command), lab, out)
            result = run_training(lab, folder / "run.log", job.timeout, self._env(job, out),
                                  command=command, pid_file=folder / "training.json")
            if self._cancelled.is_set():
                result.status, result.reason = "cancelled", "cancelled"
            try:
                return self._collect(folder, lab, out, job, result)
            except OSError as exc:
                return lost_output(self.worker_id, f"could not read the run's files: {exc}")
        finally:
            if not self.keep_scratch:
                shutil.rmtree(folder, ignore_errors=True)
            with self._lock:
                self._current = None
                self._done.set()

    def cancel(self, key: tuple[int, int] | None = None, wait: float = 60.0) -> bool:
        """Stop the running job (only if it is `key`, when given) and wait until it has ended:
        its whole process tree is killed by the run's mark, then the runner's own cleanup runs.
        True if a run was cancelled. Safe to call from another thread."""
        with self._lock:
            if self._current is None or (key is not None and tuple(key) != self._current):
                return False
            self._cancelled.set()
            token = self._token
        # Repeated: the run may not have started its process yet when we are called.
        waited = 0.0
        while not self._done.wait(0.2) and waited < wait:
            kill_marked(JOB_ENV, token, CANCEL_GRACE)
            waited += 0.2
        return True

    @property
    def busy(self) -> bool:
        return not self._done.is_set()

    # -- one run's folder ---------------------------------------------------------------------

    def _materialise(self, folder: Path, job: TrainJob) -> tuple[Path, Path]:
        lab, out = folder / "lab", folder / "out"
        out.mkdir(parents=True)
        lab.mkdir()
        for name, data in job_files(job).items():
            path = lab / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return lab, out

    def _env(self, job: TrainJob, out: Path) -> dict[str, str]:
        base = {k: v for k, v in self.base_env.items() if k not in WORKER_NOISE}
        # A job crosses machines: nothing shaped like a credential rides along, whatever it is called.
        extra = {k: v for k, v in job.env.items() if not is_secret(k, v) and k != "CUDA_VISIBLE_DEVICES"}
        for name, relative in job.outputs.items():
            _check_relative(relative)
            extra[name] = str(out / relative)
        extra.update({OUTPUT_ENV: str(out), WORKER_ENV: self.uid, JOB_ENV: self._token})
        # The scratch folder may sit inside the user's repository (.autoresearch/workers/): git run
        # by the training must not find that repository above it and commit to the user's branch.
        extra["GIT_CEILING_DIRECTORIES"] = str(self.folder.resolve())
        if self.gpu is not None:  # and CUDA_DEVICE_ORDER: an index means nvidia-smi's GPU of that index
            extra.update(pin_env(self.gpu, base))
        return training_env(base, extra)

    def _collect(self, folder: Path, lab: Path, out: Path, job: TrainJob, result: RunResult) -> TrainOutput:
        expected = job_files(job)
        changed = []
        for path in sorted(lab.rglob("*")):
            name = path.relative_to(lab).as_posix()
            if path.is_dir() and not path.is_symlink():
                continue
            # is_file first: a FIFO in place of prepare.py must not block the read
            if (name not in expected or path.is_symlink() or not path.is_file()
                    or path.read_bytes() != expected[name]):
                changed.append(name)
        changed += sorted(name for name in expected if not (lab / name).exists())
        artefacts, left_out, total = {}, [], 0
        for path in sorted(out.rglob("*")):
            name = path.relative_to(out).as_posix()
            if path.is_symlink() or not path.is_file():
                if not path.is_dir() or path.is_symlink():
                    left_out.append(name)
                continue
            size = path.stat().st_size
            if total + size > MAX_ARTEFACT_BYTES:
                left_out.append(name)
                continue
            artefacts[name] = path.read_bytes()
            total += size
        result.log_path = Path("run.log")  # the scratch folder is gone after this; see save_log
        return TrainOutput(result, _read_log(folder / "run.log"), artefacts, self.worker_id,
                           changed=changed, left_out=left_out)


def _read_log(path: Path) -> bytes:
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        if size <= MAX_LOG_BYTES:
            return f.read()
        head = f.read(LOG_HEAD_BYTES)
        tail_size = MAX_LOG_BYTES - LOG_HEAD_BYTES
        f.seek(size - tail_size)
        cut = f"\n[... {size - LOG_HEAD_BYTES - tail_size} bytes of the log left out ...]\n".encode()
        return head + cut + f.read()


def reap_worker(folder: Path, uid: str) -> int:
    """Kill what a dead worker's trainings left running: the runs recorded in its pid files and
    every process carrying its mark. Removes its scratch folder. Returns how many runs or
    processes were found alive."""
    folder = Path(folder)
    found = sum(kill_orphan(pid_file) for pid_file in folder.glob("*/training.json"))
    found += kill_marked(WORKER_ENV, uid)
    shutil.rmtree(folder, ignore_errors=True)
    return found
