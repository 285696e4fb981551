"""`autoresearch demo`: the whole loop offline on CPU in a few minutes.

Prepares the `stdlib` corpus (the Python standard library's own source, so no download) with the
cpu profile if it is not there yet, then runs the unmodified baseline and 3 `hparam` experiments
with a short training budget on a new tag `demo-<YYYYmmdd-HHMMSS>`, and prints what happened.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from autoresearch.errors import AutoresearchError
from autoresearch.html_report import write_html_report
from autoresearch.lab import find_lab
from autoresearch.loop import RunConfig, RunOutcome, run
from autoresearch.proposers import ProposerOptions
from autoresearch.ledger import Ledger
from autoresearch.workspace import Workspace

SOURCE = "stdlib"
BUDGET = 15.0  # training seconds per experiment: 4 experiments of ~25 s fit in 5 minutes on 2 cores
EXPERIMENTS = 3  # after the baseline


def cache_root() -> Path:
    return Path(os.environ.get("AUTORESEARCH_CACHE") or Path.home() / ".cache" / "autoresearch").expanduser()


def corpus_ready(cache: Path) -> bool:
    """The files train.py needs from `prepare.py --profile cpu` (docs/architecture.md)."""
    source = cache / SOURCE
    return (source / "tokenizer" / "tokenizer.pkl").is_file() and (source / "data" / "val.parquet").is_file()


def prepare_corpus(root: Path) -> None:
    """Run the lab's own prepare.py for the cpu profile; it only redoes what is missing."""
    print(f"Preparing the '{SOURCE}' corpus for the cpu profile (once, about a minute) ...", flush=True)
    env = {**os.environ, "AUTORESEARCH_PROFILE": "cpu"}
    code = subprocess.call([sys.executable, "prepare.py", "--profile", "cpu", "--source", SOURCE], cwd=root, env=env)
    if code != 0:
        raise AutoresearchError(f"prepare.py --profile cpu --source {SOURCE} failed (exit {code}); see its output above")


def fresh_tag(root: Path) -> str:
    """demo-<YYYYmmdd-HHMMSS>, with -2, -3, ... if two demos start within the same second."""
    base = tag = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while (root / "results" / tag).exists() or Workspace.exists(root, tag):
        n += 1
        tag = f"{base}-{n}"
    return tag


def run_demo(repo: Path | None = None, budget: float = BUDGET, experiments: int = EXPERIMENTS,
             view=None, audit: str = "on") -> int:
    """Prepare if needed, run baseline + `experiments` hparam experiments, print a summary."""
    root = find_lab(Path(repo or Path.cwd()).resolve())
    if not corpus_ready(cache_root()):
        prepare_corpus(root)
    tag = fresh_tag(root)
    config = RunConfig(
        repo_root=root,
        tag=tag,
        proposer="hparam",
        options=ProposerOptions(seed=0),
        max_experiments=experiments + 1,
        profile="cpu",
        time_budget=budget,
        extra_env={"AUTORESEARCH_SOURCE": SOURCE},
        audit=audit,  # sandbox: auto, bubblewrap where it is installed
    )
    outcome = run(config, view=view)
    write_html_report(root / "results" / tag)  # once more with the final state (done, not running)
    summarize(root, tag, outcome)
    return outcome.exit_code


def decided_on(row, experiment) -> str:
    """What a verdict row was decided on: the experiment's mean and its number of trials
    (`2.709930 (2)`); nothing on a trial row, which decided nothing."""
    if row.status not in ("keep", "discard") or row != experiment.last:
        return ""
    values = experiment.values
    return f"{experiment.mean:.6f} ({len(values)})"


def summarize(root: Path, tag: str, outcome: RunOutcome, console: Console | None = None) -> None:
    console = console or Console()
    ledger = Ledger(root / "results" / tag)
    table = Table(title=f"demo run '{tag}'", header_style="bold")
    for name in ("#", "trial", "commit", "val_bpb", "status", "decided on (trials)", "description"):
        table.add_column(name, justify="left" if name in ("commit", "status", "description") else "right")
    means = {exp.number: exp for exp in ledger.experiments()}
    for row in ledger.rows():
        val = row.reason if row.status == "crash" else f"{row.val_bpb:.6f}"
        table.add_row(str(row.experiment), str(row.trial or 1), row.commit, val, row.status,
                      decided_on(row, means[row.experiment]), row.description)
    console.print(table)
    experiments = ledger.experiments()
    baseline = experiments[0].mean if experiments and experiments[0].status == "keep" else None
    if baseline is not None and outcome.best_val_bpb is not None:
        change = outcome.best_val_bpb - baseline
        console.print(f"best val_bpb {outcome.best_val_bpb:.6f} at {outcome.best_commit} "
                      f"({change:+.6f} vs the baseline {baseline:.6f}; noise sigma {ledger.noise()})",
                      highlight=False, soft_wrap=True)
    console.print(
        f"results:  {root / 'results' / tag}/ (results.tsv, runs/NNNN/run.log, diff.patch)\n"
        f"branch:   autoresearch/{tag} (its tip is the best commit)\n"
        f"report:   autoresearch report --tag {tag}   (or open {root / 'results' / tag / 'report.html'})\n"
        f"next:     autoresearch run --tag mar5 --proposer anthropic   (or openai, hparam, command)",
        highlight=False,
        soft_wrap=True,
    )
