"""The Ledger: the one owner of a run's record (results/<tag>/results.tsv).

It is the only code that appends rows, it hands out experiment numbers, and it answers "what is
the best commit, and on what evidence". Rows are trials; an experiment is every row with one
experiment number. Its last row decides it: `keep`, `discard` or `crash`; `trial` rows are
measurements that did not decide (a baseline repeat, a first trial waiting for its confirm).

    ledger = Ledger(Path("results/mar5"))
    n = ledger.new_number()          # atomic across processes (flock on ledger.lock)
    ledger.append(row)               # fsynced; the commit point of a trial
    ledger.best(base_commit)         # Best(commit, experiment, values, mean)
    ledger.noise()                   # pooled sigma over every repeated commit

The grouping and the definition of "best" are module functions over anything with
`experiment`, `status`, `commit` and `val_bpb`, so the report (analysis.py) uses the same ones on
its own rows, upstream's five-column files included.
"""

import fcntl
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Iterable, Sequence

from autoresearch.keep_rule import Noise, pooled_noise
from autoresearch.records import DECIDING, ResultsFile, Row, RunState, read_bytes, restore_bytes


HIDDEN_FROM_PROPOSER = ("heldout_bpb",)  # the audit's held-out number: the user's, not the proposer's


@dataclass
class Experiment:
    """The trials of one experiment number, in the order they were recorded."""

    number: int
    rows: list = field(default_factory=list)

    @property
    def last(self):
        return self.rows[-1]

    @property
    def decided(self) -> bool:
        return self.last.status in DECIDING

    @property
    def status(self) -> str:
        return self.last.status

    @property
    def commit(self) -> str:
        return self.last.commit

    @property
    def values(self) -> list[float]:
        """The measured val_bpb of each trial of the deciding commit (crashes excluded)."""
        return [float(r.val_bpb) for r in self.rows if r.commit == self.commit and _measured(r)]

    @property
    def mean(self) -> float | None:
        values = self.values
        return fmean(values) if values else None

    @property
    def first(self):
        return self.rows[0]


@dataclass(frozen=True)
class Best:
    """The commit the branch tip sits on and the trials that put it there."""

    commit: str
    experiment: int | None  # None before the baseline is decided
    values: tuple[float, ...] = ()

    @property
    def mean(self) -> float | None:
        return fmean(self.values) if self.values else None

    @property
    def spread(self) -> float | None:
        """Half the range of its trials (0 for one trial)."""
        return (max(self.values) - min(self.values)) / 2 if self.values else None


def _measured(row) -> bool:
    value = row.val_bpb
    return row.status != "crash" and value is not None  # a declared metric may be <= 0


def group(rows: Iterable) -> list[Experiment]:
    """Rows grouped by experiment number, in order of each experiment's first row."""
    by_number: dict[int, Experiment] = {}
    for row in rows:
        by_number.setdefault(row.experiment, Experiment(row.experiment)).rows.append(row)
    return list(by_number.values())


def best_of(experiments: Sequence[Experiment], base_commit: str = "") -> Best:
    """The latest kept experiment (every keep beat the best before it, so it is the best);
    before any keep, the run's base commit with no evidence."""
    for exp in reversed(experiments):
        if exp.decided and exp.status == "keep":
            return Best(exp.commit, exp.number, tuple(exp.values))
    return Best(base_commit, None, ())


def noise_of(experiments: Sequence[Experiment]) -> Noise:
    """Pooled over every experiment whose deciding commit was measured more than once."""
    return pooled_noise([exp.values for exp in experiments])


class Ledger:
    """results/<tag>/: results.tsv with its lock (ledger.lock) and number counter (numbers), and
    run.json (the run's state and what was spent outside any row)."""

    def __init__(self, folder: Path, metric: str = "val_bpb"):
        self.folder = Path(folder)
        self.file = ResultsFile(self.folder / "results.tsv", metric)  # a declared target's metric names column 2
        self.lock_path = self.folder / "ledger.lock"
        self.numbers_path = self.folder / "numbers"
        self.state_path = self.folder / "run.json"
        self.state: dict = RunState.load(self.state_path)  # run.json as last saved
        self._rows: list[Row] | None = None
        self._written: dict[Path, bytes | None] = {}  # the records as this process last wrote them

    @property
    def path(self) -> Path:
        return self.file.path

    @contextmanager
    def locked(self):
        """An exclusive flock for a read-modify-write of the record (any process, any thread
        that opens its own Ledger)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def open(self) -> None:
        """At the start of a session: upgrade an older header, and number the next experiment
        past every number ever handed out (one that never got a row stays unused: a row may name
        another experiment's number, as a combination's does)."""
        with self.locked():
            self.file.upgrade()
            self._rows = self.file.rows()
            self._write_next(max(self._next_from_rows(), self._read_next()))
        self.remember()

    # -- reading ---------------------------------------------------------------------------

    def rows(self) -> list[Row]:
        if self._rows is None:
            self._rows = self.file.rows()
        return list(self._rows)

    def reload(self) -> list[Row]:
        self._rows = None
        return self.rows()

    def experiments(self) -> list[Experiment]:
        return group(self.rows())

    def best(self, base_commit: str = "") -> Best:
        return best_of(self.experiments(), base_commit)

    def noise(self) -> Noise:
        return noise_of(self.experiments())

    def undecided(self) -> list[Experiment]:
        """The experiments with trials but no verdict yet (a confirm or baseline repeat to run)."""
        return [exp for exp in self.experiments() if not exp.decided]

    def history(self) -> list[dict]:
        """One dict per experiment for the proposer: its deciding (or latest) row, with val_bpb
        the mean over its trials and `trials` their number. Never the held-out numbers
        (HIDDEN_FROM_PROPOSER): a proposer that saw them could fit the held-out split too."""
        entries = []
        for exp in self.experiments():
            entry = {k: v for k, v in exp.last.as_dict().items() if k not in HIDDEN_FROM_PROPOSER}
            entry["trials"] = len(exp.rows)
            if exp.mean is not None and exp.status != "crash":
                entry["val_bpb"] = round(exp.mean, 6)
            entries.append(entry)
        return entries

    # -- writing ---------------------------------------------------------------------------

    def new_number(self) -> int:
        """The next experiment number, never handed out twice (flock + counter file)."""
        with self.locked():
            number = max(self._read_next(), self._next_from_rows(self.file.rows()))
            self._write_next(number + 1)
        self.remember()
        return number

    def append(self, row: Row) -> None:
        """Append one trial's row durably (the commit point of that trial)."""
        with self.locked():
            self.file.append(row)
        self._rows = None
        self.remember()

    # -- run.json ----------------------------------------------------------------------------

    def save_state(self, **fields) -> dict:
        self.state = RunState.save(self.state_path, **fields)
        self.remember()
        return self.state

    @property
    def spent_outside_rows(self) -> float:
        """USD spent on asks that no row carries: failed, thrown away, cancelled."""
        return float(self.state.get("proposal_cost_usd") or 0)

    def add_cost(self, usd: float) -> float:
        """Count what an ask cost that no row will carry; returns the new total outside rows."""
        if usd:
            self.save_state(proposal_cost_usd=self.spent_outside_rows + usd)
        return self.spent_outside_rows

    def count_failed_proposal(self, usd: float) -> float:
        self.save_state(failed_proposals=int(self.state.get("failed_proposals") or 0) + 1,
                        proposal_cost_usd=self.spent_outside_rows + usd)
        return self.spent_outside_rows

    def total_cost(self) -> float:
        """Every dollar of the run: the rows' and run.json's."""
        return sum(float(row.cost_usd or 0) for row in self.rows()) + self.spent_outside_rows

    # -- the records against untrusted code ---------------------------------------------------

    def remember(self) -> None:
        """Keep the records' bytes as written here (a training runs as the same user)."""
        for path in (self.path, self.state_path, self.numbers_path):
            self._written[path] = read_bytes(path)

    def restore(self) -> list[str]:
        """Put back any record changed since this process last wrote it; the names of those."""
        return [path.name for path, data in self._written.items() if restore_bytes(path, data)]

    # -- the counter -----------------------------------------------------------------------

    def _next_from_rows(self, rows: list[Row] | None = None) -> int:
        rows = self.rows() if rows is None else rows
        return max(r.experiment for r in rows) + 1 if rows else 0

    def _read_next(self) -> int:
        try:
            return int(self.numbers_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _write_next(self, number: int) -> None:
        tmp = self.numbers_path.with_name(f".numbers.{os.getpid()}.tmp")
        tmp.write_text(f"{number}\n")
        os.replace(tmp, self.numbers_path)
