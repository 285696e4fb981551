"""The first process of every supervised command: `python reaper.py [--oom-first] -- CMD ...`.

It makes itself a child subreaper (Linux), runs CMD as its child in the same process group, and
when CMD ends kills and reaps whatever CMD left behind, then exits as CMD did (same status, or
the same signal). Because it is a subreaper, a daemon that double-forked, called setsid and
dropped its environment is still its descendant, so what a supervised command starts is found
by structure, never by guessing which of the harness's children belong to whom (the harness
also runs git, other trainings and a proposer at the same time).

A signal sent to the group reaches CMD directly; the reaper survives it (a handler, not
SIG_IGN, so CMD does not inherit an ignored signal) and cleans up after CMD. A SIGKILL of the
group ends the reaper too: the harness then falls back to the marker variable and the pids it
saw (process.py).

Standard library only, and run by path, so it starts in ~20 ms whatever the environment.
"""

import os
import signal
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _descendants(root: int) -> list[int]:
    """Every live descendant of `root`, read from /proc (children before their children)."""
    parents: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode("ascii", "replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # the name may hold spaces and ')'
        if len(fields) > 1 and fields[0] != "Z":
            parents.setdefault(int(fields[1]), []).append(int(entry))
    found, queue = [], [root]
    while queue:
        for kid in parents.get(queue.pop(), []):
            found.append(kid)
            queue.append(kid)
    return found


def _reap_all() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def clean_up(rounds: int = 20) -> None:
    """SIGKILL every descendant and reap them; a few rounds, for forks racing the kill."""
    me = os.getpid()
    for _ in range(rounds):
        left = _descendants(me)
        if not left:
            break
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.01)
        _reap_all()
    _reap_all()


def main(argv: list[str]) -> int:
    oom_first = False
    if argv and argv[0] == "--oom-first":
        oom_first, argv = True, argv[1:]
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print("usage: reaper.py [--oom-first] -- CMD ...", file=sys.stderr)
        return 2
    _become_subreaper()
    if oom_first:  # inherited by CMD and all it forks: the OOM killer picks them, not the harness
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("1000")
        except OSError:
            pass
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)
    try:
        child = subprocess.Popen(argv)
    except OSError as exc:
        print(f"could not start {os.path.basename(argv[0])}: {exc.strerror or exc} ({argv[0]})",
              file=sys.stderr, flush=True)
        return 127
    code = child.wait()
    clean_up()
    if code < 0:  # die of the same signal, so the harness reads the same exit
        try:
            signal.signal(-code, signal.SIG_DFL)
        except (OSError, ValueError):  # SIGKILL and SIGSTOP have no handler to reset
            pass
        os.kill(os.getpid(), -code)
        time.sleep(1)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
