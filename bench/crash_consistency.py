"""Crash consistency: kill -9 the harness at random moments of a real run, resume, check.

A throwaway repository holds the stand-in lab (tests/standin.py: a train.py that prints its
summary after a short sleep). The proposer is `--proposer command` with a small agent that
thinks for a moment and sets VAL (the stand-in's val_bpb) to a random value, so the run never
runs out of ideas and a kill can land while the agent works. At each of N points, seeded: start
`python -m autoresearch run` (a real subprocess, with fake API keys in its environment), wait a
random time, SIGKILL it (the harness alone, which orphans its training or agent, or its whole
process group, which kills git mid-write), then recover: the same run is started again with the
limit at the rows already logged, so it only does what a resume does on start (stop an orphaned
training or agent, clear stale git locks, move the branch back to the best kept commit, clean
the worktree), and every invariant of issue #5 is checked (tests/invariants.py). The next
point's harness resumes the run.

A point "recovered cleanly" when the recovery exits 0 and every invariant holds, no row that was
complete before the kill is lost, none is written twice, every row a harness printed is in
results.tsv, no git lock file is left, and an orphaned training process or agent is gone.

    python bench/crash_consistency.py                  # 50 points, seed 0
    python bench/crash_consistency.py --points 200 --seed 7 --window 4

Prints a table: points, recovered cleanly, rows lost, rows duplicated, orphans (training runs
and agents) found and killed, kills that left a git lock file, median resume seconds (the
recovery run's wall clock, interpreter start included).
"""

import argparse
import random
import re
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import git
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from invariants import UserCheckout, check_invariants, check_rows  # noqa: E402
from reliability import Harness, make_user_lab, read_json, secret_env  # noqa: E402

from autoresearch.records import ResultsFile  # noqa: E402

PRINTED_ROW = re.compile(r"^\[(\d{4})\] (keep|discard|crash)\b", re.M)


@dataclass
class Stats:
    points: int = 0
    clean: int = 0
    rows_lost: int = 0
    rows_duplicated: int = 0
    orphans_found: int = 0
    orphans_killed: int = 0
    git_locks: int = 0  # kills that left a git lock file behind (cleared by the recovery)
    resume_seconds: list = field(default_factory=list)
    rows: int = 0
    failures: list = field(default_factory=list)  # (point, what went wrong)
    kill_modes: dict = field(default_factory=lambda: {"pid": 0, "group": 0})

    def table(self) -> str:
        median = statistics.median(self.resume_seconds) if self.resume_seconds else float("nan")
        lines = [
            "| points | recovered cleanly | rows lost | rows duplicated | orphans found | orphans killed "
            "| git locks left | median resume s | rows at the end |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {self.points} | {self.clean} | {self.rows_lost} | {self.rows_duplicated} | {self.orphans_found} "
            f"| {self.orphans_killed} | {self.git_locks} | {median:.2f} | {self.rows} |",
        ]
        return "\n".join(lines)


def new_lab(folder: Path) -> tuple[Path, UserCheckout]:
    repo = git.Repo.init(folder / "repo", initial_branch="main")
    with repo.config_writer() as cfg:
        cfg.set_value("user", "name", "Bench User")
        cfg.set_value("user", "email", "bench@example.com")
    return make_user_lab(repo)


def raw_experiments(results: Path) -> list[int]:
    """Experiment numbers of every complete line, duplicates included."""
    try:
        lines = results.read_text().split("\n")[1:-1]
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        fields = line.split("\t")
        if len(fields) > 5 and fields[5].isdigit():
            out.append(int(fields[5]))
    return out


AGENT = """\
import os, random, re, time
time.sleep(float(os.environ.get("AGENT_SLEEP", "0.2")))  # thinking
text = open("train.py").read()
val = random.uniform(0.5, 1.5)
open("train.py", "w").write(re.sub(r"^VAL = .*$", f"VAL = {val:.6f}  # random", text, count=1, flags=re.M))
print(f"DESCRIPTION: VAL -> {val:.6f}")
"""


def agent_args(folder: Path) -> list[str]:
    """`--proposer command` with the random agent, written into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "agent.py"
    script.write_text(AGENT)
    return ["--proposer", "command", "--command", f"{sys.executable} {script}"]


def harness_args(limit: int, proposer: list[str]) -> list[str]:
    return [*proposer, "--max-experiments", str(limit)]


def crash_points(lab: Path, user: UserCheckout, points: int, seed: int = 0, window: float = 4.0,
                 out: Path | None = None, train_sleep: float = 0.3, agent_sleep: float = 0.2, extra_env=None,
                 log=print) -> Stats:
    """Kill the harness at `points` random moments of a run in `lab`, recovering after each."""
    rng = random.Random(seed)
    out = out or Path(tempfile.mkdtemp(prefix="crash-out-"))
    env = secret_env(STANDIN_SLEEP=str(train_sleep), AGENT_SLEEP=str(agent_sleep), **(extra_env or {}))
    proposer = agent_args(out)
    stats = Stats()
    printed: dict[int, str] = {}
    results = lab / "results/t/results.tsv"
    for point in range(points):
        stats.points += 1
        harness = Harness(lab, harness_args(10**6, proposer), env, out, f"point{point:03d}")
        delay = rng.uniform(0.0, window)
        mode = rng.choice(["pid", "group"])
        stats.kill_modes[mode] += 1
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and harness.proc.poll() is None:
            time.sleep(0.01)
        if harness.proc.poll() is not None:
            stats.failures.append((point, f"the harness ended by itself: {harness.stderr()[-300:]}"))
        if mode == "pid":
            harness.signal(signal.SIGKILL)
        else:
            harness.kill_group()
        harness.wait(30)
        problems = []

        before = [r.experiment for r in ResultsFile(results).rows()] if results.exists() else []
        for exp, status in PRINTED_ROW.findall(harness.stdout()):
            printed[int(exp)] = status
        locks = [p for p in _git_locks(lab) if p.exists()]
        stats.git_locks += bool(locks)
        training = next((read_json(p) for p in sorted((lab / ".autoresearch/workers/t").glob("*/*/training.json"))), None)
        orphans = _agents(lab)  # an agent the kill left running, and its children
        if training and _alive(training.get("pid"), training.get("create_time")):
            orphans.append((training["pid"], training.get("create_time")))
        stats.orphans_found += len(orphans)

        # Recover: the same run with the limit at the rows it has. Only start() work happens.
        t0 = time.monotonic()
        recover = Harness(lab, harness_args(max(1, len(before)), proposer), env, out, f"recover{point:03d}")
        code = recover.wait(120)
        stats.resume_seconds.append(time.monotonic() - t0)
        if code != 0:
            problems.append(f"recovery exited {code}: {recover.stderr().strip()[-500:]}")
        for pid, create_time in orphans:
            if _alive(pid, create_time):
                problems.append(f"orphan {pid} still alive")
            else:
                stats.orphans_killed += 1

        for exp, status in PRINTED_ROW.findall(recover.stdout()):
            printed[int(exp)] = status
        raw = raw_experiments(results)
        duplicated = len(raw) - len(set(raw))
        after = {r.experiment: r.status for r in ResultsFile(results).rows()} if results.exists() else {}
        lost = [n for n in before if n not in after] + [n for n in printed if after.get(n) != printed[n]]
        stats.rows_lost += len(set(lost))
        stats.rows_duplicated += duplicated
        if lost:
            problems.append(f"rows lost: {sorted(set(lost))}")
        if duplicated:
            problems.append(f"{duplicated} rows duplicated")
        try:
            # With no row yet the recovery's limit of 1 makes it train the baseline.
            check_invariants(lab, "t", user, rows=None if lost else max(1, len(before)))
        except AssertionError as err:
            problems.append(f"invariant: {str(err).splitlines()[0][:300]}")
        if any(p.exists() for p in _git_locks(lab)):
            problems.append("a git lock file is still there")
        if problems:
            stats.failures.append((point, "; ".join(problems)))
        else:
            stats.clean += 1
        log(f"point {point:3d}: kill -9 ({mode:5s}) after {delay:4.2f} s, {len(before):3d} rows, "
            f"{len(orphans)} orphans, git lock {'yes' if locks else 'no '}, recovery {stats.resume_seconds[-1]:.2f} s"
            + (f"  PROBLEM: {'; '.join(problems)}" if problems else ""))
    stats.rows = len(check_rows(lab, "t")) if results.exists() else 0
    return stats


def _git_locks(lab: Path) -> list[Path]:
    git_dir = lab / ".git"
    return [git_dir / "worktrees/t/index.lock", git_dir / "worktrees/t/HEAD.lock",
            git_dir / "refs/heads/autoresearch/t.lock"]


def _agents(lab: Path) -> list[tuple[int, float]]:
    """Live processes carrying the command proposer's marker for this lab's worktree."""
    worktree = str((lab / ".autoresearch/worktrees/t").resolve())
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("AUTORESEARCH_AGENT_WORKTREE") == worktree and proc.status() != psutil.STATUS_ZOMBIE:
                found.append((proc.pid, proc.create_time()))
        except psutil.Error:
            continue
    return found


def _alive(pid, create_time) -> bool:
    try:
        proc = psutil.Process(int(pid))
        same = create_time is None or abs(proc.create_time() - float(create_time)) < 0.05
        return same and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, TypeError, ValueError):
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=50, help="kill -9 points (default 50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=float, default=4.0, help="seconds after start to pick the kill moment from")
    parser.add_argument("--train-sleep", type=float, default=0.3, help="seconds each stand-in training takes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="crash-consistency-") as tmp:
        lab, user = new_lab(Path(tmp))
        t0 = time.monotonic()
        stats = crash_points(lab, user, args.points, args.seed, args.window, Path(tmp) / "out", args.train_sleep)
        wall = time.monotonic() - t0
    print()
    print(stats.table())
    print(f"\nkills: {stats.kill_modes['pid']} of the harness alone, {stats.kill_modes['group']} of its process group;"
          f" seed {args.seed}, window {args.window:g} s, {wall:.0f} s in all")
    for point, what in stats.failures:
        print(f"point {point}: {what}")
    sys.exit(0 if stats.clean == stats.points else 1)


if __name__ == "__main__":
    main()
