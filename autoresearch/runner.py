"""Run one training subprocess with a hard wall-clock limit and leave no process behind.

train.py runs in its own session (so its own process group), with its output going straight to
run.log (a file, never a pipe: a chatty run cannot block on a full pipe). When it ends, for any
reason, everything it started dies with it: its process group, descendants that left the group
with setsid (seen while it ran), any process still carrying the run's marker variable, and (on
Linux, where the harness is a child subreaper) orphans the kernel handed back to the harness,
such as a daemon that double-forked and dropped its environment.
While it runs, training.json names it so that a resumed harness can kill an orphan left behind
by a harness that was killed with SIGKILL.

A crash, a timeout or a diverged loss is a RunResult status, never an exception.
"""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import psutil

from autoresearch.summary import diverged, parse_summary

MARKER = "AUTORESEARCH_TRAINING_ID"  # set in every training process; inherited by its children
KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL on timeout
TAIL_BYTES = 1 << 20  # the summary, FAIL and the traceback are at the end of the log

# What the training process must not see. Names are matched upper-cased.
SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH")
SECRET_PREFIXES = ("OPENAI_", "ANTHROPIC_", "AWS_", "AZURE_", "HF_", "HUGGING_FACE_", "OPENROUTER_")
# Hugging Face cache and offline switches are paths and flags, not secrets.
KEEP = frozenset({
    "HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
    # The lab's own settings (docs/architecture.md); EVAL_TOKENS would otherwise read as a token.
    "AUTORESEARCH_PROFILE", "AUTORESEARCH_TIME_BUDGET", "AUTORESEARCH_CACHE",
    "AUTORESEARCH_SOURCE", "AUTORESEARCH_EVAL_TOKENS",
})
# Values that look like a key whatever the variable is called (OpenAI/Anthropic, HF, GitHub, AWS, Slack, GitLab).
SECRET_VALUE = re.compile(r"^(sk-|sk_|hf_|ghp_|gho_|ghs_|github_pat_|AKIA|xox[abpr]-|glpat-)")


@dataclass
class RunResult:
    status: str  # "ok" | "crash" | "timeout" | "diverged"
    metrics: dict  # parse_summary output (may be {})
    log_path: Path
    seconds: float
    returncode: int | None
    reason: str  # one line for results.tsv; "" when ok
    children_killed: int = field(default=0)  # processes still alive after train.py ended


def is_secret(name: str, value: str = "") -> bool:
    upper = name.upper()
    if upper in KEEP:
        return False
    if any(word in upper for word in SECRET_WORDS) or upper.startswith(SECRET_PREFIXES):
        return True
    return bool(SECRET_VALUE.match(value))


def training_env(base: Mapping[str, str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` without anything that looks like a credential, plus unbuffered output and `extra`.

    Dropped: names containing KEY, TOKEN, SECRET, PASSWORD, PASSWD, CREDENTIAL or AUTH (the
    last also drops SSH_AUTH_SOCK: training has no business using the user's SSH agent); names
    starting with OPENAI_, ANTHROPIC_, AWS_, AZURE_, HF_, HUGGING_FACE_, OPENROUTER_, except
    the Hugging Face cache/offline settings in KEEP; and any value shaped like a known key
    (sk-..., hf_..., ghp_..., AKIA...). `extra` is trusted and added last.
    """
    env = {k: v for k, v in base.items() if not is_secret(k, v)}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ in the worktree
    env["PYTHONUNBUFFERED"] = "1"  # the log is current when we kill a hung run
    env.update(extra or {})
    return env


# ---------------------------------------------------------------------------
# Finding and killing processes

def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _same_process(pid: int, create_time: float) -> psutil.Process | None:
    """The live process `pid` if it is the one that started at `create_time` (pids get reused)."""
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) < 0.05 and _alive(proc):
            return proc
    except (psutil.Error, TypeError, ValueError):
        pass
    return None


def _marked(marker: str, name: str = MARKER) -> list[psutil.Process]:
    """Live processes whose environment carries name=marker (MARKER is inherited from train.py)."""
    me = os.getpid()
    found = []
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            if proc.environ().get(name) == marker and _alive(proc):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _signal_all(procs: Iterable[psutil.Process], pgid: int | None, sig: int) -> None:
    if pgid is not None:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.Error:
            pass


def _stop(procs: list[psutil.Process], pgid: int | None, grace: float) -> int:
    """SIGTERM, up to `grace` seconds, then SIGKILL; returns how many were alive to stop."""
    procs = [p for p in procs if _alive(p)]
    _signal_all(procs, pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in procs):
        time.sleep(0.05)
    _signal_all([p for p in procs if _alive(p)], pgid, signal.SIGKILL)
    return len(procs)


class _Tracker:
    """train.py's process and what it spawned; mirrors itself into the pid file."""

    def __init__(self, popen: subprocess.Popen, marker: str, pid_file: Path | None):
        self.popen = popen
        self.pgid = popen.pid  # start_new_session: the leader's pid is the group id
        self.marker = marker
        self.pid_file = pid_file
        self.children: dict[int, float] = {}
        try:
            self.create_time = psutil.Process(popen.pid).create_time()
        except psutil.Error:
            self.create_time = 0.0
        self._save()

    def _save(self) -> None:
        if self.pid_file is None:
            return
        data = {
            "pid": self.popen.pid,
            "pgid": self.pgid,
            "create_time": self.create_time,
            "marker": self.marker,
            "children": [[pid, ct] for pid, ct in sorted(self.children.items())],
        }
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.pid_file.with_name(f".{self.pid_file.name}.tmp")
        tmp.write_text(json.dumps(data) + "\n")
        os.replace(tmp, self.pid_file)

    def adopted(self) -> list[psutil.Process]:
        """Orphans of the training tree handed to us by the kernel (we are a subreaper): our
        children started after train.py, with their descendants. Zombies included, to reap."""
        if not self.create_time:
            return []
        found = []
        try:
            kids = psutil.Process().children()
        except psutil.Error:
            return []
        for kid in kids:
            try:
                # After train.py, on the same clock: nothing but its descendants (the harness
                # starts no process while it waits for training).
                if kid.pid != self.popen.pid and kid.create_time() > self.create_time:
                    found += [kid, *kid.children(recursive=True)]
            except psutil.Error:
                continue
        return found

    def scan(self) -> None:
        """Record descendants (also those that left the group with setsid) while they are visible."""
        try:
            kids = psutil.Process(self.popen.pid).children(recursive=True)
        except psutil.Error:
            kids = []
        kids += self.adopted()
        new = False
        for kid in kids:
            try:
                if kid.pid not in self.children:
                    self.children[kid.pid] = kid.create_time()
                    new = True
            except psutil.Error:
                continue
        if new:
            self._save()

    def leftovers(self) -> list[psutil.Process]:
        procs = [p for pid, ct in self.children.items() if (p := _same_process(pid, ct))]
        seen = {p.pid for p in procs}
        procs += [p for p in _marked(self.marker) if p.pid not in seen]
        seen = {p.pid for p in procs}
        procs += [p for p in self.adopted() if p.pid not in seen and _alive(p)]
        return procs

    def kill_everything(self) -> int:
        """SIGKILL the group, recorded descendants, marked and adopted processes; reap train.py
        and the adopted ones."""
        procs = self.leftovers()
        _signal_all(procs, self.pgid, signal.SIGKILL)
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:  # unkillable (D state): nothing more we can do
            pass
        for proc in self.adopted():  # our children now: reap them, or they stay zombies
            try:
                proc.wait(timeout=5)
            except psutil.Error:
                pass
        return len(procs)

    def remove_pid_file(self) -> None:
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)


# ---------------------------------------------------------------------------
# Running and judging one training run

def run_training(
    cwd: Path,
    log_path: Path,
    timeout: float,
    env: Mapping[str, str],
    command: Sequence[str] | None = None,
    pid_file: Path | None = None,
    *,
    kill_grace: float = KILL_GRACE,
) -> RunResult:
    """Run `command` (default: python train.py) in `cwd` for at most `timeout` seconds.

    stdout and stderr go to `log_path`. On timeout the process group gets SIGTERM, then SIGKILL
    after `kill_grace` seconds. Whatever happens, nothing it started outlives this call. An
    exception while waiting (Ctrl-C) kills everything, removes `pid_file` and propagates.
    """
    command = list(command) if command else [sys.executable, "train.py"]
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    marker = uuid.uuid4().hex
    child_env = {**env, MARKER: marker}
    _become_subreaper()
    start = time.monotonic()
    tracker = None
    timed_out = False
    with open(log_path, "wb", buffering=0) as log:
        try:
            try:
                popen = subprocess.Popen(
                    command,
                    cwd=cwd,
                    env=child_env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                log.write(f"could not start {command[0]}: {exc}\n".encode())
                reason = f"could not start {Path(command[0]).name}: {exc.strerror or exc}"
                return RunResult("crash", {}, log_path, time.monotonic() - start, None, reason)
            _oom_first(popen.pid)
            tracker = _Tracker(popen, marker, pid_file)
            timed_out = _wait(tracker, start + timeout, kill_grace)
            killed = tracker.kill_everything()
        except BaseException:
            if tracker is not None:
                tracker.kill_everything()
                tracker.remove_pid_file()
            raise
    tracker.remove_pid_file()
    seconds = time.monotonic() - start
    result = judge(_tail(log_path), popen.returncode, timed_out, timeout)
    result.log_path, result.seconds, result.children_killed = log_path, seconds, killed
    return result


_subreaper = False


def _become_subreaper() -> None:
    """Linux: have orphans of our descendants reparented to us instead of init, so a daemon
    that left train.py's group, session and environment (double fork, setsid, empty env) is
    still found and killed after the run."""
    global _subreaper
    if _subreaper or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        _subreaper = ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _oom_first(pid: int) -> None:
    """Make the kernel's OOM killer pick train.py (and what it forks later), not the harness."""
    try:
        with open(f"/proc/{pid}/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:  # not Linux, or already gone
        pass


def _wait(tracker: _Tracker, deadline: float, kill_grace: float) -> bool:
    """Wait for train.py to exit; on the deadline TERM then KILL it. True if it timed out."""
    popen = tracker.popen
    interval = 0.1  # descendants are scanned often at first, then once a second
    next_scan = time.monotonic() + interval
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        try:
            popen.wait(timeout=max(0.0, min(next_scan, deadline) - now))
            return False
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() >= next_scan:
            tracker.scan()
            interval = min(interval * 2, 1.0)
            next_scan = time.monotonic() + interval
    tracker.scan()
    _signal_all(tracker.leftovers(), tracker.pgid, signal.SIGTERM)
    try:
        popen.wait(timeout=kill_grace)
    except subprocess.TimeoutExpired:
        pass
    return True


def _tail(path: Path) -> str:
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - TAIL_BYTES))
        return f.read().decode("utf-8", "replace")


def judge(text: str, returncode: int | None, timed_out: bool, timeout: float) -> RunResult:
    """Status and reason from the log text and exit status (log_path/seconds left for the caller)."""
    metrics = parse_summary(text)

    def result(status: str, reason: str = "") -> RunResult:
        return RunResult(status, metrics, Path(), 0.0, returncode, reason)

    if timed_out:
        return result("timeout", f"timeout after {timeout:.0f} s")
    fail = diverged(text)
    if fail is not None:
        return result("diverged", f"diverged: {fail}")
    if returncode:
        return result("crash", crash_reason(text, returncode))
    if "val_bpb" not in metrics:
        return result("crash", f"no summary (exit {returncode})")
    val_bpb = metrics["val_bpb"]
    # Bits per byte is positive; 0.000000 is also results.tsv's mark of a crash.
    if not isinstance(val_bpb, float) or not math.isfinite(val_bpb) or val_bpb <= 0:
        return result("crash", f"val_bpb is {val_bpb}")
    return result("ok")


_TRACEBACK = "Traceback (most recent call last):"
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*$")


def last_exception(text: str) -> str | None:
    """The `SomeError: message` line that ends the last traceback in `text`, if any."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(_TRACEBACK)]
    if starts:
        for line in lines[starts[-1] + 1 :]:
            if line.strip() and not line[0].isspace():
                return line.strip()
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line.strip()):
            return line.strip()
    return None


def crash_reason(text: str, returncode: int) -> str:
    """One line: `exit 1: RuntimeError: CUDA out of memory...`, `killed by SIGKILL` or `exit N`."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    line = last_exception(text)
    reason = f"exit {returncode}: {line}" if line else f"exit {returncode}"
    return reason if len(reason) <= 200 else reason[:197] + "..."


# ---------------------------------------------------------------------------
# Resume: a training process orphaned by a killed harness

def kill_orphan(pid_file: Path, grace: float = KILL_GRACE) -> bool:
    """Stop what a previous harness's training left running, as recorded in `pid_file`.

    The recorded leader is only trusted if its create_time matches (its pid may have been
    reused); its group is then killed. Recorded descendants with matching create_time and any
    process carrying the recorded marker are killed too. The file is removed. True if anything
    was alive to kill.
    """
    pid_file = Path(pid_file)
    try:
        info = json.loads(pid_file.read_text())
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        pid_file.unlink(missing_ok=True)
        return False
    if not isinstance(info, dict):
        pid_file.unlink(missing_ok=True)
        return False
    procs: dict[int, psutil.Process] = {}
    leader = _same_process(info.get("pid"), info.get("create_time"))
    if leader is not None:
        procs[leader.pid] = leader
    for pid, ct in info.get("children") or []:
        if (proc := _same_process(pid, ct)) is not None:
            procs[proc.pid] = proc
    if info.get("marker"):
        for proc in _marked(str(info["marker"])):
            procs.setdefault(proc.pid, proc)
    pgid = info.get("pgid") if leader is not None else None
    killed = _stop(list(procs.values()), pgid, grace) if procs else 0
    pid_file.unlink(missing_ok=True)
    return killed > 0


def kill_marked(name: str, value: str, grace: float = KILL_GRACE) -> int:
    """Stop every process whose environment carries name=value (e.g. an external agent a killed
    harness left running: proposers/command.py marks it with its worktree). Returns how many."""
    procs = _marked(value, name)
    return _stop(procs, None, grace) if procs else 0
