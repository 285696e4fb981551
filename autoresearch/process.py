"""One supervised-process type, used for training runs and for external agents.

    proc = Supervised(argv, cwd=..., env=..., stdout=log, marker=("AUTORESEARCH_TRAINING_ID", id),
                      pid_file=results/<tag>/training.json)
    proc.start()                      # its own session (so its own group), under the reaper
    timed_out = proc.wait(deadline)   # scans its descendants while it runs
    proc.stop(grace)                  # SIGTERM everything it started, then SIGKILL; reaped
    describe_exit(proc.returncode)    # "exit 1", "killed by SIGKILL"

What a supervised command starts goes with it, found four ways: its process group; the reaper
(reaper.py), its first process, which is a child subreaper and kills its own descendants when the
command ends; the descendants seen while it ran (also those that left the group with setsid);
and any process still carrying its marker variable. The harness itself is a subreaper too, so
when even the reaper is SIGKILLed its orphans come back to the harness, where the marker and the
recorded pids identify them; nothing assumes that a child of the harness belongs to a command.

While it runs, the pid file names it, so that a resumed harness can stop an orphan left by a
harness that was killed with SIGKILL (kill_orphan); kill_marked stops processes by marker.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import psutil

KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
# Set to the folder a proposer's process works in (inherited by what it starts), so a resumed
# harness can stop an agent that a `kill -9` of the previous one left running.
AGENT_MARKER = "AUTORESEARCH_AGENT_WORKTREE"
REAPER = Path(__file__).with_name("reaper.py")


def describe_exit(returncode: int | None) -> str:
    """`exit 1`, `killed by SIGKILL`, or `still running`."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit {returncode}"


# ---------------------------------------------------------------------------
# Finding and signalling processes


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def same_process(pid, create_time) -> psutil.Process | None:
    """The live process `pid` if it is the one that started at `create_time` (pids get reused)."""
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) < 0.05 and alive(proc):
            return proc
    except (psutil.Error, TypeError, ValueError):
        pass
    return None


def marked(name: str, value: str) -> list[psutil.Process]:
    """Live processes (not this one) whose environment carries name=value."""
    me = os.getpid()
    found = []
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            if proc.environ().get(name) == value and alive(proc):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def signal_all(procs: Iterable[psutil.Process], pgid: int | None, sig: int) -> None:
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


def stop_all(procs: list[psutil.Process], pgid: int | None, grace: float) -> int:
    """SIGTERM, up to `grace` seconds, then SIGKILL; returns how many were alive to stop."""
    procs = [p for p in procs if alive(p)]
    signal_all(procs, pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in procs):
        time.sleep(0.05)
    signal_all([p for p in procs if alive(p)], pgid, signal.SIGKILL)
    return len(procs)


_subreaper = False


def become_subreaper() -> None:
    """Linux: orphans of our descendants come back to us instead of init (see the module doc)."""
    global _subreaper
    if _subreaper or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        _subreaper = ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


# ---------------------------------------------------------------------------
# The supervised process


class Supervised:
    """A command in its own session under the reaper, with a marker variable and a pid file."""

    def __init__(self, argv: Sequence[str], *, cwd, env: Mapping[str, str], stdout, marker: tuple[str, str],
                 stdin=subprocess.DEVNULL, pid_file: Path | None = None, oom_first: bool = False):
        self.argv = list(argv)
        self.cwd, self.stdin, self.stdout = cwd, stdin, stdout
        self.marker_name, self.marker = marker
        self.env = {**env, self.marker_name: self.marker}
        self.pid_file = Path(pid_file) if pid_file else None
        self.oom_first = oom_first
        self.popen: subprocess.Popen | None = None
        self.create_time = 0.0
        self.children: dict[int, float] = {}  # pid -> create_time, every descendant seen

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode if self.popen else None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def start(self) -> None:
        """Start it (OSError if the reaper itself cannot start)."""
        become_subreaper()
        reaper = [sys.executable, str(REAPER), *(["--oom-first"] if self.oom_first else []), "--"]
        self.popen = subprocess.Popen(
            reaper + self.argv, cwd=self.cwd, env=self.env, stdin=self.stdin, stdout=self.stdout,
            stderr=subprocess.STDOUT, start_new_session=True,  # its own group: we can signal all of it
        )
        try:
            self.create_time = psutil.Process(self.popen.pid).create_time()
        except psutil.Error:
            self.create_time = 0.0
        self._save()

    def wait(self, deadline: float | None = None) -> bool:
        """Wait for it to exit, scanning its descendants; True if `deadline` (monotonic) came first."""
        interval = 0.1  # scanned often at first, then once a second
        next_scan = time.monotonic() + interval
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                self.scan()
                return True
            until = next_scan if deadline is None else min(next_scan, deadline)
            try:
                self.popen.wait(timeout=max(0.0, until - now))
                return False
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() >= next_scan:
                self.scan()
                interval = min(interval * 2, 1.0)
                next_scan = time.monotonic() + interval

    def terminate(self, grace: float = KILL_GRACE) -> None:
        """SIGTERM to all of it; wait up to `grace` seconds for the command to end."""
        self.scan()
        signal_all(self.leftovers(), self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass

    def stop(self, grace: float = KILL_GRACE) -> int:
        """However it is doing: TERM (if still running) with `grace`, then SIGKILL everything it
        started, reap, remove the pid file. Returns how many processes were still alive."""
        if self.popen is None:
            return 0
        if self.popen.poll() is None and grace > 0:
            self.terminate(grace)
        killed = self.kill_everything()
        self.remove_pid_file()
        return killed

    def scan(self) -> None:
        """Record descendants (also those that left the group with setsid) while they are visible."""
        try:
            kids = psutil.Process(self.popen.pid).children(recursive=True)
        except psutil.Error:
            kids = []
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
        procs = [p for pid, ct in self.children.items() if (p := same_process(pid, ct))]
        seen = {p.pid for p in procs}
        return procs + [p for p in marked(self.marker_name, self.marker) if p.pid not in seen]

    def kill_everything(self) -> int:
        """SIGKILL the group, the recorded descendants and the marked processes; reap ours."""
        procs = self.leftovers()
        signal_all(procs, self.popen.pid, signal.SIGKILL)
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:  # unkillable (D state): nothing more we can do
            pass
        mine = {p.pid for p in _own_children()}
        for proc in procs:  # orphans handed to us as subreaper: reap them, or they stay zombies
            if proc.pid in mine:
                try:
                    proc.wait(timeout=5)
                except psutil.Error:
                    pass
        return len(procs)

    def _save(self) -> None:
        if self.pid_file is None or self.popen is None:
            return
        data = {
            "pid": self.popen.pid,
            "pgid": self.popen.pid,  # start_new_session: the leader's pid is the group id
            "create_time": self.create_time,
            "marker_name": self.marker_name,
            "marker": self.marker,
            "children": [[pid, ct] for pid, ct in sorted(self.children.items())],
        }
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.pid_file.with_name(f".{self.pid_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data) + "\n")
        os.replace(tmp, self.pid_file)

    def remove_pid_file(self) -> None:
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)


def _own_children() -> list[psutil.Process]:
    try:
        return psutil.Process().children()
    except psutil.Error:
        return []


# ---------------------------------------------------------------------------
# Resume: what a killed harness left running


def kill_orphan(pid_file: Path, grace: float = KILL_GRACE, marker_name: str = "AUTORESEARCH_TRAINING_ID") -> bool:
    """Stop what a previous harness's supervised process left running, as recorded in `pid_file`.

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
    leader = same_process(info.get("pid"), info.get("create_time"))
    if leader is not None:
        procs[leader.pid] = leader
    for pid, ct in info.get("children") or []:
        if (proc := same_process(pid, ct)) is not None:
            procs[proc.pid] = proc
    if info.get("marker"):
        for proc in marked(str(info.get("marker_name") or marker_name), str(info["marker"])):
            procs.setdefault(proc.pid, proc)
    pgid = info.get("pgid") if leader is not None else None
    killed = stop_all(list(procs.values()), pgid, grace) if procs else 0
    pid_file.unlink(missing_ok=True)
    return killed > 0


def kill_marked(name: str, value: str, grace: float = KILL_GRACE) -> int:
    """Stop every process whose environment carries name=value. Returns how many."""
    procs = marked(value=value, name=name)
    return stop_all(procs, None, grace) if procs else 0
