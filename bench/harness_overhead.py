"""Harness overhead: what an experiment costs besides its training.

Runs the real loop (real git, real subprocesses, real results.tsv) in a throwaway repo whose
train.py prints its summary at once, with an in-process proposer that answers at once, so the
time from one row to the next is the harness: asking (a scratch worktree, the proposer's
thread), committing, the job's scratch folder, starting the no-op training (the reaper and
Python), the checks, the row and the branch. Goal: <= 1 s median per experiment.

    python bench/harness_overhead.py                 # 30 experiments
    python bench/harness_overhead.py --experiments 100
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


class InstantProposer(Proposer):
    name = "instant"
    edits_files = False  # like hparam: text in, text out
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
    """Remembers when each row was shown."""

    def __init__(self):
        super().__init__("bench", quiet=True)
        self.rows: list[tuple[float, dict]] = []

    def row(self, row, delta, standing=None):
        self.rows.append((time.perf_counter(), row))
        super().row(row, delta, standing)


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
    overhead = [t - t_prev for (t_prev, _), (t, _) in zip(view.rows, view.rows[1:])]
    ms = [v * 1000 for v in overhead]
    print(f"{len(overhead)} experiments after the baseline, {wall:.1f} s in all\n")
    print(f"row to row: median {statistics.median(ms):.1f} ms, p90 {percentile(ms, 0.9):.1f} ms per experiment")
    print(f"reference: starting `{Path(sys.executable).name} -c pass` takes {statistics.median(python) * 1000:.1f} ms "
          f"(median of 10); the no-op training starts two (the reaper, then train.py).")
    goal = statistics.median(overhead) <= 1.0
    print(f"goal <= 1000 ms median: {'met' if goal else 'NOT met'}")


def _python_start() -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
