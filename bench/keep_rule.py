"""Keep rules under noise: greedy (upstream) against noise (our default), on a simulated lab.

The lab's train.py trains nothing: its true val_bpb is a known function of its hyperparameters
(three that matter, four that do nothing), and each run prints that value plus Gaussian noise of
a chosen sigma. The real loop drives it (real git, real training subprocesses, the hparam
proposer), 200 experiments per rule and seed. Because the true function is known, every verdict
can be graded:

    false keep   kept, but its true val_bpb is no better than the best it was judged against
    missed win   discarded, though truly better than that best by at least --min-delta
    final true   the true val_bpb of the commit the run ends on
    trials       training runs, baseline repeats and confirms included (the GPU time)

    python bench/keep_rule.py                      # 200 experiments x 3 seeds x 2 rules
    python bench/keep_rule.py --experiments 60 --seeds 1 --sigma 0.001
"""

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autoresearch import keep_rule  # noqa: E402
from autoresearch.config import RunConfig  # noqa: E402
from autoresearch.ledger import Ledger  # noqa: E402
from autoresearch.live import View  # noqa: E402
from autoresearch.loop import run  # noqa: E402
from autoresearch.proposers import ProposerError, ProposerOptions, get_proposer  # noqa: E402

# name: (start value, optimum, weight per squared octave). Weight 0: the knob does nothing. Fifty
# knobs, so that hparam (which never repeats a tried value) does not run out of moves in 200.
# A good first move gains 0.4e-3 to 3.5e-3 (1 to 7 sigma at the default 5e-4): upstream's kept
# changes averaged ~0.002 each (0.9979 -> 0.9697 in ~15 keeps), several times an H100's noise.
_REAL = [(0.04, 0.09, 4.8e-3), (0.2, 0.07, 3.2e-3), (0.3, 0.6, 2e-3), (0.004, 0.002, 1.6e-3),
         (0.9, 0.5, 1.2e-3), (6.0, 12.0, 8e-4), (0.02, 0.03, 8e-4), (3.0, 2.0, 4e-4),
         (0.5, 0.8, 1.2e-3), (1.5, 1.0, 8e-4)]
PARAMS = {f"KNOB_{i:02d}": spec for i, spec in enumerate(_REAL)}
PARAMS.update({f"NULL_{i:02d}": (round(0.05 + 0.37 * i, 2), round(0.05 + 0.37 * i, 2), 0.0) for i in range(40)})
BASE = 1.0

TRAIN_PY = '''"""Simulated lab: the true val_bpb is a function of the constants below, plus Gaussian noise."""
import math
import os
import random

{constants}

PARAMS = {params!r}
true = {base!r} + sum(w * math.log2(globals()[k] / opt) ** 2 for k, (_, opt, w) in PARAMS.items())
counter = os.environ["BENCH_COUNTER"]
n = int(open(counter).read() or 0) if os.path.exists(counter) else 0
open(counter, "w").write(str(n + 1))
rng = random.Random(f"{{os.environ['BENCH_NOISE_SEED']}}|{{n}}")
val = true + rng.gauss(0.0, float(os.environ["BENCH_SIGMA"]))
print("---")
print(f"val_bpb:          {{val:.6f}}")
print(f"true_bpb:         {{true:.6f}}")
print("training_seconds: 300.0")
print("total_seconds:    325.0")
print("peak_vram_mb:     1024.0")
print("num_steps:        950")
'''

PREPARE_PY = '"""Stub prepare.py of the simulated lab."""\nTIME_BUDGET = 300  # seconds\n'


def true_value(source: str) -> float:
    values = {}
    exec(compile(source.split("PARAMS = ")[0], "train.py", "exec"), {}, values)  # the constants only
    return BASE + sum(w * math.log2(values[k] / opt) ** 2 for k, (_, opt, w) in PARAMS.items())


def make_lab(folder: Path) -> Path:
    root = folder / "lab"
    root.mkdir(parents=True)
    constants = "\n".join(f"{k} = {v!r}" for k, (v, _, _) in PARAMS.items())
    (root / "train.py").write_text(TRAIN_PY.format(constants=constants, params=PARAMS, base=BASE))
    (root / "prepare.py").write_text(PREPARE_PY)
    (root / "program.md").write_text("# Simulated lab\n")
    (root / ".gitignore").write_text("results/\n.autoresearch/\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@b",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "b@b"}
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "lab"]):
        subprocess.run(cmd, cwd=root, env=env, check=True)
    return root


def show(root: Path, commit: str) -> str:
    return subprocess.run(["git", "show", f"{commit}:train.py"], cwd=root, capture_output=True,
                          text=True, check=True).stdout


def grade(root: Path, tag: str, min_delta: float) -> dict:
    ledger = Ledger(root / "results" / tag)
    cache: dict[str, float] = {}

    def truth(commit: str) -> float:
        if commit not in cache:
            cache[commit] = true_value(show(root, commit))
        return cache[commit]

    false_keeps = missed = kept = 0
    for exp in ledger.experiments()[1:]:  # the baseline is kept by definition
        gain = truth(exp.first.parent) - truth(exp.commit)
        if exp.status == "keep":
            kept += 1
            false_keeps += gain <= 0
        elif exp.status == "discard":
            missed += gain >= min_delta
    best = ledger.best()
    return {"kept": kept, "false_keeps": false_keeps, "missed_wins": missed,
            "final_true": truth(best.commit), "trials": len(ledger.rows()),
            "experiments": len(ledger.experiments())}


class Hparam:
    """The hparam proposer, but a run that has tried every nearby value ends (as a Ctrl-C would)
    instead of pausing, so the table can say how far it got."""

    name, can_fix = "hparam", False

    def __init__(self, options):
        self.inner = get_proposer("hparam", options)

    def propose(self, ctx):
        try:
            return self.inner.propose(ctx)
        except ProposerError as err:
            if "already tried" in str(err):
                raise KeyboardInterrupt("hparam exhausted") from None
            raise


def one_run(folder: Path, rule: str, seed: int, sigma: float, experiments: int, min_delta: float) -> dict:
    root = make_lab(folder / f"{rule}-{seed}")
    os.environ.update(BENCH_COUNTER=str(folder / f"{rule}-{seed}.count"), BENCH_NOISE_SEED=str(seed),
                      BENCH_SIGMA=str(sigma))
    repeats = 1 if rule == "greedy" else 2  # greedy as upstream runs it: one baseline trial
    config = RunConfig(repo_root=root, tag="bench", profile="cpu", time_budget=1, timeout=60,
                       keep_rule=rule, baseline_repeats=repeats, min_delta=min_delta,
                       max_experiments=experiments, options=ProposerOptions(seed=seed))
    started = time.monotonic()
    run(config, proposer=Hparam(config.options), view=View("bench", quiet=True))
    result = grade(root, "bench", min_delta)
    result["wall_seconds"] = time.monotonic() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--sigma", type=float, default=5e-4, help="run-to-run noise of val_bpb (H100: a few 1e-4)")
    parser.add_argument("--min-delta", type=float, default=1e-4)
    parser.add_argument("--rules", default="greedy,noise")
    # For tuning the noise rule's constants (autoresearch/keep_rule.py); the defaults are its own.
    parser.add_argument("--low-level", type=float, default=keep_rule.LOW_LEVEL)
    parser.add_argument("--keep-level", type=float, default=keep_rule.KEEP_LEVEL)
    parser.add_argument("--clear-level", type=float, default=keep_rule.CLEAR_LEVEL)
    args = parser.parse_args()
    keep_rule.LOW_LEVEL, keep_rule.KEEP_LEVEL, keep_rule.CLEAR_LEVEL = args.low_level, args.keep_level, args.clear_level
    results: dict[str, list[dict]] = {rule: [] for rule in args.rules.split(",")}
    with tempfile.TemporaryDirectory(prefix="autoresearch-keep-rule-") as tmp:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for rule in results:
                r = one_run(Path(tmp), rule, seed, args.sigma, args.experiments, args.min_delta)
                results[rule].append(r)
                print(f"seed {seed} {rule:6s}: {r}", file=sys.stderr, flush=True)
    print(f"\nsimulated lab: sigma {args.sigma:g}, baseline true {BASE + sum(w * math.log2(v / o) ** 2 for v, o, w in PARAMS.values()):.6f}, "
          f"optimum {BASE:.6f}; {args.experiments} experiments x {args.seeds} seeds per rule; min-delta {args.min_delta:g}\n")
    print("| rule | experiments | kept | false keeps | missed wins | final true val_bpb | trials (GPU time) |")
    print("|---|---|---|---|---|---|---|")
    greedy_trials = statistics.fmean(r["trials"] for r in results.get("greedy") or next(iter(results.values())))
    for rule, rs in results.items():
        mean = lambda key: statistics.fmean(r[key] for r in rs)  # noqa: E731
        finals = [r["final_true"] for r in rs]
        print(f"| {rule} | {mean('experiments'):.0f} | {mean('kept'):.1f} | {mean('false_keeps'):.1f} | {mean('missed_wins'):.1f} "
              f"| {statistics.fmean(finals):.6f} (range {min(finals):.6f}-{max(finals):.6f}) "
              f"| {mean('trials'):.0f} ({100 * (mean('trials') / greedy_trials - 1):+.0f}%) |")


if __name__ == "__main__":
    main()
