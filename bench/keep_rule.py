"""Keep rules under noise: greedy (upstream) against noise (our default), on a simulated lab.

The lab's train.py trains nothing: its true val_bpb is a known function of its constants (ten
that matter, forty that do nothing), and each run prints that value plus Gaussian noise of a
chosen sigma. Because the true function is known, every verdict can be graded:

    false keep   kept, but its true val_bpb is no better than the best it was judged against
    missed win   discarded, though truly better than that best by at least --min-delta
    final true   the true val_bpb of the commit the run ends on
    trials       training runs, baseline repeats and confirms included (the GPU time)

Two ways to drive it:

    simulated  (the default) the grid: sigma at 0.1x, 1x and 3x the typical real gain, 50 and 200
               experiments, 8 noise worlds each, greedy against the default rule. In-process: the
               SAME keep_rule.judge(), the SAME hparam proposer (its propose() on the same text,
               history and seed), the same noise stream and the loop's semantics (baseline
               repeats, confirm -> one more trial of the same commit, noise pooled over every
               experiment's trials, the best = the latest keep with all its trials).
    --real     the real loop, real git and training subprocesses, for a few worlds of one
               regime, printed next to the simulation of the same worlds: they must agree.

    python bench/keep_rule.py                              # the grid (a minute or two)
    python bench/keep_rule.py --real --worlds 2 --experiments 50 --sigma-x 1
"""

import argparse
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autoresearch.config import RunConfig  # noqa: E402
from autoresearch.ledger import Ledger  # noqa: E402
from autoresearch.live import View  # noqa: E402
from autoresearch.loop import run  # noqa: E402
from autoresearch.keep_rule import LEVELS, Levels, judge, pooled_noise  # noqa: E402
from autoresearch.proposers import ProposerError, ProposerOptions, get_proposer  # noqa: E402
from autoresearch.proposers.base import Context, Proposer  # noqa: E402

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


class Hparam(Proposer):
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
    # audit and sandbox off: the stand-in hands over no model, and its noise counter lives outside
    # the worktree, where the sandbox would not let it count (every run would draw the same noise).
    config = RunConfig(repo_root=root, tag="bench", profile="cpu", time_budget=1, timeout=60,
                       keep_rule=rule, baseline_repeats=repeats, min_delta=min_delta, audit="off", sandbox="off",
                       max_experiments=experiments, options=ProposerOptions(seed=seed))
    started = time.monotonic()
    run(config, proposer=Hparam(config.options), view=View("bench", quiet=True))
    result = grade(root, "bench", min_delta)
    result["wall_seconds"] = time.monotonic() - started
    return result


# ---------------------------------------------------------------------------
# The simulation: the loop's semantics in-process, the same judge() and proposer
# ---------------------------------------------------------------------------


def start_source() -> str:
    constants = "\n".join(f"{k} = {v!r}" for k, (v, _, _) in PARAMS.items())
    return TRAIN_PY.format(constants=constants, params=PARAMS, base=BASE)


_TRUTH: dict[str, float] = {}


def truth(source: str) -> float:
    if source not in _TRUTH:
        _TRUTH[source] = true_value(source)
    return _TRUTH[source]


def typical_gain() -> float:
    """The median true gain of the proposer's winning first moves: the scale of a real win."""
    from autoresearch.edits import apply_blocks
    from autoresearch.proposers.hparam import candidates, edit_for, find_params

    source = start_source()
    gains = [truth(source) - truth(apply_blocks(source, [edit_for(source, c)]))
             for p in find_params(source, "cpu") for c in candidates(p)]
    return statistics.median(g for g in gains if g > 0)


def simulate(rule: str, world: int, sigma: float, experiments: int, min_delta: float,
             levels: Levels = LEVELS) -> dict:
    """One night of the loop on the simulated lab, graded as grade() grades the real one."""
    proposer = get_proposer("hparam", ProposerOptions(seed=world))
    runs = 0

    def train(source: str) -> float:  # the lab's train.py: the same noise stream, printed to 6 places
        nonlocal runs
        rng = random.Random(f"{world}|{runs}")
        runs += 1
        return round(truth(source) + rng.gauss(0.0, sigma), 6)

    source = start_source()
    repeats = 1 if rule == "greedy" else 2  # as one_run() runs the real loop
    best_values = [train(source) for _ in range(repeats)]
    groups = [best_values]
    history = [{"experiment": 0, "description": "baseline", "status": "keep"}]
    kept = false_keeps = missed = extra = changed = 0
    for n in range(1, experiments):
        ctx = Context(program="", train_py=source, lab_contract="", history=list(history),
                      workdir=ROOT, experiment=n, profile="cpu")
        try:
            proposal = proposer.propose(ctx)
        except ProposerError:
            break  # every nearby value tried: the real bench ends the run here too
        values = [train(proposal.train_py)]
        while True:
            noise = pooled_noise([*groups, values])
            verdict = judge(rule, values, best_values, noise, min_delta, levels=levels)
            if verdict.decision != "confirm":
                break
            values.append(train(proposal.train_py))
        extra += len(values) - 1
        groups.append(values)
        history.append({"experiment": n, "description": proposal.description, "status": verdict.decision})
        gain = truth(source) - truth(proposal.train_py)
        first_keep = (sum(best_values) / len(best_values)) - values[0] >= max(min_delta, 1e-12)
        changed += len(values) > 1 and first_keep != (verdict.decision == "keep")
        if verdict.decision == "keep":
            kept += 1
            false_keeps += gain <= 0
            source, best_values = proposal.train_py, values
        else:
            missed += gain >= min_delta
    return {"kept": kept, "false_keeps": false_keeps, "missed_wins": missed, "final_true": truth(source),
            "trials": runs, "experiments": len(history), "extra": extra, "changed": changed}


def summary(rs: list[dict]) -> dict:
    mean = lambda key: statistics.fmean(r[key] for r in rs)  # noqa: E731
    finals = [r["final_true"] for r in rs]
    return {"kept": mean("kept"), "false": mean("false_keeps"), "missed": mean("missed_wins"),
            "final": statistics.fmean(finals), "lo": min(finals), "hi": max(finals), "trials": mean("trials")}


def grid(args, gain: float) -> list[str]:
    """The table: per regime, greedy's row and the default's, with the goals checked."""
    lines = ["| σ (× typical gain) | experiments | rule | kept | false keeps | missed wins "
             "| final true val_bpb: mean (range) | trials | goals |", "|---|---|---|---|---|---|---|---|---|"]
    for experiments in args.experiments:
        for x in args.sigma_x:
            sigma = x * gain
            by_rule = {rule: summary([simulate(rule, w, sigma, experiments, args.min_delta)
                                      for w in worlds(args)]) for rule in ("greedy", "noise")}
            g, d = by_rule["greedy"], by_rule["noise"]
            misses = []
            if d["false"] > g["false"] / 4:
                misses.append(f"false keeps {d['false']:.2f} > {g['false'] / 4:.2f}")
            if d["final"] > g["final"]:
                misses.append(f"final {d['final'] - g['final']:+.6f} worse")
            if d["trials"] > 1.5 * g["trials"]:
                misses.append(f"trials {d['trials'] / g['trials']:.2f}x")
            for rule, r in by_rule.items():
                goals = "" if rule == "greedy" else ("all met" if not misses else "MISSED: " + "; ".join(misses))
                lines.append(f"| {x:g} ({sigma:.2e}) | {experiments} | {rule} | {r['kept']:.1f} | {r['false']:.2f} "
                             f"| {r['missed']:.1f} | {r['final']:.6f} ({r['lo']:.6f}–{r['hi']:.6f}) "
                             f"| {r['trials']:.1f} ({r['trials'] / g['trials']:.2f}×) | {goals} |")
            print(lines[-2] + "\n" + lines[-1], file=sys.stderr, flush=True)
    return lines


def real_check(args, gain: float) -> None:
    """The real loop against the simulation, world by world, for one regime."""
    sigma, experiments = args.sigma_x[0] * gain, args.experiments[0]
    print(f"| world | rule | real: kept / false / missed / final true / trials | simulated: the same |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="autoresearch-keep-rule-") as tmp:
        for world in worlds(args):
            for rule in ("greedy", "noise"):
                real = one_run(Path(tmp), rule, world, sigma, experiments, args.min_delta)
                sim = simulate(rule, world, sigma, experiments, args.min_delta)
                cells = [f"{r['kept']} / {r['false_keeps']} / {r['missed_wins']} / {r['final_true']:.6f} / {r['trials']}"
                         for r in (real, sim)]
                print(f"| {world} | {rule} | {cells[0]} | {cells[1]} |", flush=True)


def worlds(args) -> range:
    return range(args.first_world, args.first_world + args.worlds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=lambda s: [int(v) for v in s.split(",")], default=[50, 200])
    parser.add_argument("--sigma-x", type=lambda s: [float(v) for v in s.split(",")], default=[0.1, 1.0, 3.0],
                        help="noise as multiples of the typical real gain")
    parser.add_argument("--worlds", type=int, default=8, help="noise worlds (seeds of noise and proposer)")
    parser.add_argument("--first-world", type=int, default=1, help="e.g. 9: worlds the defaults were not tuned on")
    parser.add_argument("--min-delta", type=float, default=1e-4)
    parser.add_argument("--real", action="store_true", help="the real loop against the simulation, one regime")
    args = parser.parse_args()
    gain = typical_gain()
    print(f"simulated lab: baseline true {truth(start_source()):.6f}, optimum {BASE:.6f}, typical real gain "
          f"{gain:.2e} (median winning first move); min-delta {args.min_delta:g}; worlds {worlds(args).start}-{worlds(args).stop - 1}; "
          f"greedy with 1 baseline trial, noise with 2 (the defaults); rule constants {LEVELS}\n")
    if args.real:
        real_check(args, gain)
        return
    print("\n".join(grid(args, gain)))


if __name__ == "__main__":
    main()
