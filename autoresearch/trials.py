"""What the loop trains and records, as plain values: a Change (one commit to measure), a Launch
(one trial of it, on its way through a worker), the run's paths, and the row a trial becomes.

Nothing here touches git, a process or the record; `make_row` is a pure function of its values.
"""

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from autoresearch.lab import SEED
from autoresearch.keep_rule import Verdict
from autoresearch.proposers import Proposal, Usage
from autoresearch.records import Row, format_metrics, utc_now
from autoresearch.runner import RunResult

BASELINE_DESCRIPTION = "baseline"
BASELINE_HYPOTHESIS = "the unmodified train.py sets the bar"
METRIC_COLUMNS = ("training_seconds", "total_seconds", "mfu_percent")  # copied from the summary as they are


class RunPaths:
    """results/<tag>/ and what lives in it."""

    def __init__(self, repo_root: Path, tag: str):
        self.dir = Path(repo_root) / "results" / tag
        self.results = self.dir / "results.tsv"
        self.state = self.dir / "run.json"
        self.lock = self.dir / "run.lock"
        self.training = self.dir / "training.json"

    def run_dir(self, experiment: int) -> Path:
        return self.dir / "runs" / f"{experiment:04d}"

    def log(self, experiment: int, trial: int) -> Path:
        """run.log for an experiment's first trial, run.trialK.log for trial K."""
        name = "run.log" if trial <= 1 else f"run.trial{trial}.log"
        return self.run_dir(experiment) / name


@dataclass
class Change:
    """What one experiment trains, as its rows describe it."""

    number: int
    commit: str
    parent: str  # the best commit it was built on; it is judged against that commit's trials
    description: str
    hypothesis: str
    proposer: str
    model: str = ""
    baseline: bool = False
    combines: int | None = None  # a combination: that experiment's change re-applied on a newer best

    def role(self, trial: int) -> str:
        if self.baseline:
            return "baseline" if trial == 1 else "repeat"
        if trial > 1:
            return "confirm"
        return "combine" if self.combines is not None else "candidate"

    def entry(self) -> dict:
        """As a history entry for the proposer while it trains (status `running`)."""
        return {"experiment": self.number, "commit": self.commit, "parent": self.parent, "status": "running",
                "description": self.description, "hypothesis": self.hypothesis, "proposer": self.proposer,
                "val_bpb": None, "trials": 0}


def baseline_change(number: int, base: str) -> Change:
    return Change(number, base, base, BASELINE_DESCRIPTION, BASELINE_HYPOTHESIS, "baseline", baseline=True)


@dataclass
class Launch:
    """One trial to train: what, which trial, and what its row will carry."""

    change: Change
    trial: int
    usage: Usage = field(default_factory=Usage)  # the proposal's cost (first trial of a candidate)
    started_at: str = field(default_factory=utc_now)
    t0: float = field(default_factory=time.monotonic)
    record: dict | None = None  # proposal.json of a candidate (its attempts and fixes)
    proposal: Proposal | None = None  # the proposal (or fix) it trains, for a fix ask
    fixes: int = 0
    reruns: int = 0
    gpu: str | None = None  # the local GPU that trained it
    timing: tuple[float, float] | None = None  # (seconds trained, seconds its worker idled before)

    @property
    def key(self) -> tuple[int, int]:
        return self.change.number, self.trial


def running_entries(launches, ideas, recorded: set[int], proposer: str) -> list[dict]:
    """What trains now or waits for a worker (launches, then asking.Idea), as history entries
    with status `running`: the proposer sees what is being tried."""
    entries, seen = [], set(recorded)
    for launch in launches:
        c = launch.change
        if c.number not in seen:  # the baseline too: the proposer learns what is being measured
            seen.add(c.number)
            entries.append(c.entry())
    for idea in ideas:
        p = idea.prepared.proposal
        entries.append(Change(idea.number, "", idea.prepared.base, p.description, p.hypothesis, proposer).entry())
    return entries


def make_row(change: Change, trial: int, status: str, reason: str, result: RunResult, usage: Usage,
             started_at: str, wall_seconds: float, verdict: Verdict | None, recorded: tuple[str, ...] = ()) -> Row:
    """A trial's row. train.py is the proposer's to edit: a summary value that is not a finite
    number (say `training_seconds: 300s`) is left empty instead of breaking results.tsv.
    `recorded`: a declared target's other metrics (secondary, constraints'), for the metrics column."""
    m = {key: _finite(value) for key, value in result.metrics.items()} if status != "crash" else {}
    steps = m.get("num_steps")
    decided = verdict is not None
    return Row(
        commit=change.commit, val_bpb=m.get("val_bpb") or 0.0, memory_gb=(m.get("peak_vram_mb") or 0.0) / 1024,
        status=status, description=change.description, experiment=change.number,
        hypothesis=change.hypothesis, proposer=change.proposer, model=change.model, reason=reason,
        **{name: m.get(name) for name in METRIC_COLUMNS},
        num_steps=int(steps) if steps is not None and steps.is_integer() else None,
        input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, cost_usd=usage.cost_usd,
        started_at=started_at, wall_seconds=wall_seconds, parent=change.parent, role=change.role(trial),
        trial=trial, seed=SEED + trial - 1,
        mean_val_bpb=round(verdict.mean, 6) if decided else None,
        delta=round(verdict.delta, 6) if decided and not change.baseline else None,
        sigma=verdict.sigma if decided else None,
        metrics=format_metrics({name: v for name in recorded if (v := _finite(result.metrics.get(name))) is not None}),
    )


def baseline_crashed(reason: str, log: Path, tag: str, declared: bool) -> str:
    """The one line that stops a run whose unmodified baseline crashed: where to look (the
    audit's log when the audit failed) and how to go on. A declared target's run keeps its base
    commit's files, so a fix to them needs a new tag; a fix to the machine needs only a resume."""
    where = Path(log).parent / "audit.log" if reason.startswith("audit:") else log
    resume = f"autoresearch run --tag {tag} --resume"
    if declared:
        return (f"the unmodified baseline crashed ({reason}); see {where}. A fix to the program's files: commit "
                f"it and start a new --tag (this run keeps its base commit's files); a fix to the machine: {resume}")
    return f"the unmodified baseline crashed ({reason}); see {where}, fix the lab, then resume with: {resume}"


def commit_message(description: str, hypothesis: str, number: int, extra: str = "") -> str:
    return f"{one_line(description)}\n\n{hypothesis}\n\nExperiment: {number}\n{extra}"


def one_line(text: str) -> str:
    return " ".join(str(text).split()) or "(no description)"


def _finite(value) -> float | None:
    """A summary value as a finite float, or None (text, nan, inf)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)
