"""Harness overhead: time per experiment spent outside training and outside the proposer.

Runs the real loop (real git worktree, real subprocess, real results.tsv) in a throwaway repo
whose train.py prints its summary at once, with an in-process proposer that answers at once,
and times each phase the loop reports. Goal: <= 1 s median per experiment.

    python bench/harness_overhead.py                 # 30 experiments
    python bench/harness_overhead.py --experiments 100

Phases: start (limit checks, next number, run folder), context (program.md, train.py, lab
contract, rows), commit (write + git commit), train (spawn python, run, wait, parse, sweep for
leftover processes), check (git status of the worktree), log (diff.patch, proposal.json, row
append + fsync, branch reset). `propose` is shown but not counted. `train` includes starting a
Python interpreter for the stand-in, shown separately as a reference.
"""

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import git

from autoresearch.live import View
from autoresearch.loop import RunConfig, run
from autoresearch.proposers import Proposal
from autoresearch.proposers.base import Proposer

TRAIN_PY = '''\
VAL = 1.000000  # reported as val_bpb
print("---")
print(f"val_bpb:          {VAL:.6f}")
print("training_seconds: 0.0")
print("peak_vram_mb:     0.0")
print("num_steps:        1")
'''
PREPARE_PY = "TIME_BUDGET = 1  # seconds\n\ndef evaluate_bpb(model, tokenizer, batch_size):\n    return 1.0\n"
PHASES = ("start", "context", "propose", "commit", "train", "check", "log")
MAP = {"context": "context", "proposing": "propose", "committing": "commit", "training": "train",
       "checking": "check", "logging": "log"}


class InstantProposer(Proposer):
    name = "instant"
    can_fix = False

    def __init__(self, seed: int = 0):
        self.random = random.Random(seed)

    def propose(self, ctx):
        val = self.random.uniform(0.9, 1.1)
        text = "\n".join(
            f"VAL = {val:.6f}  # reported as val_bpb" if line.startswith("VAL = ") else line
            for line in ctx.train_py.splitlines()
        ) + "\n"
        return Proposal("instant", f"VAL -> {val:.6f}", text)


class TimingView(View):
    """Remembers when each phase began and when each row was shown."""

    def __init__(self):
        super().__init__("bench", quiet=True)
        self.events: list[tuple[float, str]] = []

    def phase(self, experiment, name, budget=None, timeout=None):
        self.events.append((time.perf_counter(), name))
        super().phase(experiment, name, budget, timeout)

    def row(self, row, delta, standing=None):
        self.events.append((time.perf_counter(), "row"))
        super().row(row, delta, standing)


def per_experiment(events: list[tuple[float, str]]) -> list[dict[str, float]]:
    """Seconds per phase for every experiment after the baseline."""
    rows_at = [i for i, (_, name) in enumerate(events) if name == "row"]
    out = []
    for prev, end in zip(rows_at, rows_at[1:]):
        span = events[prev : end + 1]
        times = dict.fromkeys(PHASES, 0.0)
        times["start"] = span[1][0] - span[0][0]
        for (t, name), (t_next, _) in zip(span[1:], span[2:]):
            times[MAP.get(name, name)] += t_next - t
        out.append(times)
    return out


def make_repo(folder: Path) -> Path:
    repo = git.Repo.init(folder / "repo", initial_branch="main")
    with repo.config_writer() as cfg:
        cfg.set_value("user", "name", "bench")
        cfg.set_value("user", "email", "bench@localhost")
    root = Path(repo.working_tree_dir)
    files = {"train.py": TRAIN_PY, "prepare.py": PREPARE_PY, "program.md": "# bench\n", ".gitignore": "results/\n"}
    for name, text in files.items():
        (root / name).write_text(text)
    repo.index.add(list(files))
    repo.index.commit("bench lab")
    return root


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="autoresearch-bench-") as tmp:
        root = make_repo(Path(tmp))
        view = TimingView()
        config = RunConfig(repo_root=root, tag="bench", profile="cpu", time_budget=1, timeout=60,
                           max_experiments=args.experiments + 1, keep_rule="greedy", baseline_repeats=1, audit="off")
        start = time.perf_counter()
        run(config, proposer=InstantProposer(), view=view)
        wall = time.perf_counter() - start
        python = [_python_start() for _ in range(10)]
    times = per_experiment(view.events)
    overhead = [sum(t[p] for p in PHASES if p != "propose") for t in times]
    print(f"{len(times)} experiments after the baseline, {wall:.1f} s in all\n")
    print(f"{'phase':<10} {'median ms':>10} {'p90 ms':>10}")
    for phase in PHASES:
        values = [t[phase] * 1000 for t in times]
        mark = "  (not counted)" if phase == "propose" else ""
        print(f"{phase:<10} {statistics.median(values):>10.1f} {percentile(values, 0.9):>10.1f}{mark}")
    print(f"{'overhead':<10} {statistics.median(overhead) * 1000:>10.1f} {percentile(overhead, 0.9) * 1000:>10.1f}")
    print(f"\nreference: starting `{Path(sys.executable).name} -c pass` takes {statistics.median(python) * 1000:.1f} ms "
          f"(median of 10); it is part of `train`.")
    goal = statistics.median(overhead) <= 1.0
    print(f"goal <= 1000 ms median: {'met' if goal else 'NOT met'}")


def _python_start() -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
