"""A stand-in lab for the trainer tests: train.py reads VAL from prepare.py (so the job's files
must travel), writes an artefact, and behaves as STANDIN_MODE says. With STANDIN_PIDS set it
writes `pid child_pid ppid` to a file there as soon as it starts, so a test can see it running
(and which actor runs it: the actor is train.py's parent)."""

import os
import time
from pathlib import Path

import psutil

from autoresearch.trainers import TrainJob

TRAIN_PY = '''\
import os, subprocess, sys, time
import prepare

mode = os.environ.get("STANDIN_MODE", "ok")  # ok | hang | write | barrier
# The process that supervises this run: the parent of our parent, the reaper (process.py).
with open(f"/proc/{os.getppid()}/stat") as f:
    supervisor = int(f.read().rsplit(")", 1)[1].split()[1])
child = None
if mode == "hang":  # a child in a session of its own: only marks and pid files find it
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"], start_new_session=True)
folder = os.environ.get("STANDIN_PIDS")
if folder:
    tmp = os.path.join(folder, f".{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()} {child.pid if child else 0} {supervisor}\\n")
    os.replace(tmp, os.path.join(folder, f"{os.getpid()}.pid"))
print("ppid", supervisor)
print("cuda", os.environ.get("CUDA_VISIBLE_DEVICES"))
print("order", os.environ.get("CUDA_DEVICE_ORDER"))
print("omp", os.environ.get("OMP_NUM_THREADS"))
print("secrets", [k for k in os.environ if "KEY" in k or "TOKEN" in k])
with open(os.path.join(os.environ["AUTORESEARCH_OUTPUT_DIR"], "model.bin"), "wb") as f:
    f.write(b"weights" + bytes([0, 255]))
if mode == "hang":
    time.sleep(3600)
if mode == "write":
    with open("stray.txt", "w") as f:
        f.write("x")
    with open("prepare.py", "a") as f:
        f.write("# tampered")
if mode == "barrier":  # finish only once `need` runs have started: proof that they overlap
    need, deadline = int(os.environ["STANDIN_NEED"]), time.monotonic() + 120
    while len([n for n in os.listdir(folder) if n.endswith(".pid")]) < need:
        if time.monotonic() > deadline:
            print("barrier timed out")
            sys.exit(3)
        time.sleep(0.05)
    print("barrier passed")
print("---")
print(f"val_bpb:          {prepare.VAL:.6f}")
print("num_steps:        7")
'''

PREPARE_PY = "VAL = 0.987654  # the val_bpb the stand-in reports\n"


def job(experiment=1, trial=0, timeout=60.0, **env) -> TrainJob:
    return TrainJob(experiment, trial, TRAIN_PY, {"prepare.py": PREPARE_PY}, dict(env), timeout)


def wait_for_pids(folder: Path, count: int = 1, limit: float = 120.0) -> list[tuple[int, int, int]]:
    """The `pid child ppid` triples of the first `count` runs that started (waits for them)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        files = sorted(folder.glob("*.pid"))
        if len(files) >= count:
            return [tuple(int(x) for x in f.read_text().split()) for f in files]
        time.sleep(0.05)
    raise AssertionError(f"{count} runs did not start within {limit} s")


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def gone(pids, limit: float = 30.0) -> bool:
    """True once none of `pids` is alive (killing is asynchronous across processes)."""
    deadline = time.monotonic() + limit
    while any(alive(p) for p in pids if p):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
