"""How the loop scales with workers: `autoresearch run --workers N`, locally and on local Ray.

This measures the loop, not ML. The real CLI (`python -m autoresearch run`, a subprocess) runs
on a throwaway repository that holds the stand-in lab of tests/standin.py, with real git and
real training processes. Each training sleeps T seconds and then reports val_bpb = VAL (+0.003
on a second trial, so the baseline's repeat gives the noise rule a sigma and some candidates get
a confirm). `--proposer command` runs tests/standin_agent.py, which answers at once with the
next step of a seeded script: VAL around 1.0, drifting down 0.001 a step, so that keeps keep
coming and the best moves under ideas in flight. Every N gets the same load per worker:
K = per-worker x N experiments (the baseline included), with the default keep rule (noise) and
speculation.
For each N and each pool (local workers, then `--ray local` if Ray can be imported):

    wall s        the whole run, interpreter and Ray start included
    exp/hour      experiments / wall; speedup against the fewest workers measured (N=1 by
                  default), efficiency = speedup / (N / that N)
    rows lost     trainings whose log is in runs/NNNN but whose (experiment, trial) has no row,
                  plus experiments short of K; a row written twice is reported below the table
    frontier ok   branch autoresearch/scale is at the last keep's commit, and each keep's parent
                  (its row's and its git commit's) is the keep before it
    workers busy  the trainings' run_seconds / (N x wall): how much of the time the loop kept
                  its workers training. Read it next to efficiency: how many confirms an
                  experiment needs depends on the order its verdicts come in, so trials per
                  experiment vary with N (1.2 to 1.7) and move exp/hour by as much

    python bench/scale.py                                # N in 1,2,4,8; T = 4 s; 6 per worker
    python bench/scale.py --workers 1,2,4 --per-worker 3 --no-ray

The goal: efficiency >= 0.9 for every N <= 8, with no row lost and the frontier consistent.
A local Ray on a machine without GPUs works because RayTrainerPool gives each actor 0 GPUs
when the cluster has none and --workers is given.
"""

import argparse
import importlib.util
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from standin import GITIGNORE, PREPARE_PY, PROGRAM_MD, TRAIN_PY, set_constants  # noqa: E402

from autoresearch.records import ResultsFile  # noqa: E402

AGENT = ROOT / "tests" / "standin_agent.py"
TAG = "scale"
GOAL = 0.9  # efficiency every N <= 8 should reach


@dataclass
class Measured:
    workers: int
    pool: str  # local | ray
    experiments: int = 0
    trials: int = 0
    wall: float = 0.0
    lost: int = 0
    frontier_ok: bool = False
    busy: float = 0.0  # seconds the training processes ran, all workers together
    problems: list = field(default_factory=list)

    @property
    def per_hour(self) -> float:
        return self.experiments / self.wall * 3600 if self.wall else 0.0

    @property
    def utilisation(self) -> float:
        return self.busy / (self.workers * self.wall) if self.wall else 0.0


def make_lab(folder: Path, train_seconds: float) -> Path:
    """The stand-in lab, committed on main, with its training time set in train.py itself
    (an environment variable might not reach a Ray actor's trainings)."""
    root = folder / "lab"
    root.mkdir(parents=True)
    files = {"train.py": set_constants(TRAIN_PY, SLEEP=train_seconds, JITTER={43: 0.003}), "prepare.py": PREPARE_PY,
             "program.md": PROGRAM_MD, ".gitignore": GITIGNORE}
    for name, text in files.items():
        (root / name).write_text(text)
    for args in (["init", "-q", "-b", "main"], ["add", "."],
                 ["-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "stand-in lab"]):
        subprocess.run(["git", *args], cwd=root, check=True)
    return root


def write_script(path: Path, steps: int, train_seconds: float, seed: int) -> None:
    """The agent's steps. More than K: an idea whose VAL line clashes with a newer best is
    dropped and asked for again, which takes another step."""
    rng = random.Random(seed)
    path.write_text(json.dumps([{"VAL": round(1.0 - 0.001 * i + rng.gauss(0, 0.005), 6), "SLEEP": train_seconds}
                                for i in range(steps)]))


def measure(workers: int, pool: str, per_worker: int, train_seconds: float, seed: int) -> Measured:
    m = Measured(workers, pool)
    limit = per_worker * workers
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        lab = make_lab(Path(tmp), train_seconds)
        script = Path(tmp) / "steps.json"
        write_script(script, 20 * limit + 50, train_seconds, seed)
        command = [sys.executable, "-m", "autoresearch", "run", "--tag", TAG, "--profile", "cpu",
                   "--time-budget", "5", "--timeout", "60", "--keep-rule", "noise", "--audit", "off",
                   "--max-experiments", str(limit), "--workers", str(workers),
                   *(["--ray", "local"] if pool == "ray" else []),
                   "--proposer", "command", "--command", shlex.join([sys.executable, str(AGENT)])]
        env = {**os.environ, "STANDIN_SCRIPT": str(script)}
        out, err = Path(tmp) / "harness.out", Path(tmp) / "harness.err"
        deadline = 120 + 3 * limit * (train_seconds + 5)  # confirms and baseline repeats included
        with open(out, "w") as stdout, open(err, "w") as stderr:
            t0 = time.monotonic()
            proc = subprocess.Popen(command, cwd=lab, env=env, stdout=stdout, stderr=stderr,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                code = proc.wait(timeout=deadline)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the harness and what it started
                code = proc.wait()
                m.problems.append(f"still running after {deadline:.0f} s: killed")
            m.wall = time.monotonic() - t0
        if code != 0:
            tail = (err.read_text(errors="replace").strip() or out.read_text(errors="replace").strip())[-2000:]
            m.problems.append(f"exit {code}:\n{tail}")
        check(lab, limit, m)
    return m


def check(lab: Path, limit: int, m: Measured) -> None:
    """Fill in experiments, trials, rows lost and the frontier from results/scale/ and git."""
    results = lab / "results" / TAG
    rows = ResultsFile(results / "results.tsv").rows() if (results / "results.tsv").exists() else []
    keys = [(r.experiment, r.trial or 1) for r in rows]
    m.trials, m.experiments = len(rows), len({r.experiment for r in rows})
    m.busy = sum(r.run_seconds or 0.0 for r in rows)
    if len(keys) != len(set(keys)):
        m.problems.append(f"{len(keys) - len(set(keys))} (experiment, trial) rows written twice")
    trained = set()
    for log in sorted(results.glob("runs/*/run*.log")):  # run.crashN.log: a fixed attempt, no row of its own
        name = log.name.removeprefix("run.").removesuffix(".log")
        if name == "log" or name.startswith("trial"):
            trained.add((int(log.parent.name), int(name[5:]) if name.startswith("trial") else 1))
    missing = sorted(trained - set(keys))
    m.lost = len(missing) + max(0, limit - m.experiments)
    if missing:
        m.problems.append(f"trained without a row: {missing[:10]}")
    if m.experiments != limit:
        m.problems.append(f"{m.experiments} experiments recorded, not {limit}")
    frontier = frontier_problems(lab, [r for r in rows if r.status == "keep"])
    m.frontier_ok = not frontier
    m.problems += frontier


def frontier_problems(lab: Path, keeps: list) -> list[str]:
    def full(rev: str) -> str | None:
        done = subprocess.run(["git", "rev-parse", "--verify", "-q", f"{rev}^{{commit}}"], cwd=lab,
                              capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else None

    if not keeps:
        return ["no keep at all (not even the baseline)"]
    problems = []
    tip, last = full(f"autoresearch/{TAG}"), full(keeps[-1].commit)
    if tip is None or tip != last:
        problems.append(f"branch autoresearch/{TAG} at {tip and tip[:7]}, the last keep is {keeps[-1].commit}")
    for before, keep in zip(keeps, keeps[1:]):
        if keep.parent != before.commit:
            problems.append(f"keep {keep.experiment}'s row has parent {keep.parent}, not {before.commit}")
        elif full(f"{keep.commit}^") != full(before.commit):
            problems.append(f"keep {keep.experiment}'s git commit {keep.commit} is not a child of {before.commit}")
    return problems


def table(measured: list[Measured]) -> str:
    lines = ["| workers | pool | experiments | trials | wall s | exp/hour | speedup | efficiency | rows lost "
             "| frontier ok | workers busy |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for m in measured:
        speedup, efficiency = scaling(m, measured)
        lines.append(f"| {m.workers} | {m.pool} | {m.experiments} | {m.trials} | {m.wall:.1f} | {m.per_hour:.0f} "
                     f"| {speedup:.2f} | {efficiency:.2f} | {m.lost} | {'yes' if m.frontier_ok else 'no'} "
                     f"| {100 * m.utilisation:.0f}% |")
    return "\n".join(lines)


def scaling(m: Measured, measured: list[Measured]) -> tuple[float, float]:
    """Speedup and efficiency against the run with the fewest workers on the same pool."""
    base = min((b for b in measured if b.pool == m.pool), key=lambda b: b.workers)
    if not base.per_hour:
        return float("nan"), float("nan")
    speedup = m.per_hour / base.per_hour
    return speedup, speedup / (m.workers / base.workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2,4,8", help="comma-separated N (default 1,2,4,8)")
    parser.add_argument("--train-seconds", type=float, default=4.0, help="each training's sleep (keep it >= 3)")
    parser.add_argument("--per-worker", type=int, default=6, help="experiments per worker (default 6)")
    parser.add_argument("--no-ray", action="store_true", help="local workers only")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    counts = sorted({int(n) for n in args.workers.split(",")})
    pools = ["local"] + ([] if args.no_ray or importlib.util.find_spec("ray") is None else ["ray"])
    measured = []
    for pool in pools:
        for n in counts:
            m = measure(n, pool, args.per_worker, args.train_seconds, args.seed)
            measured.append(m)
            print(f"{pool} x{n}: {m.experiments} experiments, {m.trials} trials in {m.wall:.1f} s"
                  + ("" if m.problems else ", ok"), file=sys.stderr, flush=True)
    print(table(measured))
    print(f"\nT = {args.train_seconds:g} s per training, {args.per_worker} experiments per worker, seed {args.seed}, "
          f"{os.cpu_count()} CPU cores")
    checked = [m for m in measured if m.workers <= 8]
    held = all(scaling(m, measured)[1] >= GOAL and not m.lost and m.frontier_ok and not m.problems for m in checked)
    print(f"goal (efficiency >= {GOAL} for N <= 8, no row lost, frontier consistent): "
          f"{'holds' if held else 'does not hold'}")
    for m in measured:
        for problem in m.problems:
            print(f"{m.pool} x{m.workers}: {problem}")
    sys.exit(0 if held else 1)


if __name__ == "__main__":
    main()
