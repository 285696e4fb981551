"""What the loop shows while it runs: a rich live view on a terminal, plain log lines otherwise.

The loop reports events (`phase`, `row`, `note`) to a View. The view folds them into a
ViewState; pure functions below turn that state into renderables. `Live(auto_refresh=False)` is
redrawn on every event, and once a second while a phase has a clock worth watching (training,
a pause). Without a terminal, every event is one plain line:

    [0003] training (budget 300 s, limit 600 s) ...
    [0003] keep val_bpb=0.991234 (-0.001200) MATRIX_LR 0.04 -> 0.056
"""

import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from autoresearch.keep_rule import Noise
from autoresearch.ledger import Best

STATUS_STYLE = {"keep": "bold green", "discard": "dim", "crash": "bold red", "trial": "cyan"}
TICKING_PHASES = ("proposing", "training", "paused", "auditing")


@dataclass(frozen=True)
class Standing:
    """Where the run stands, as the Ledger says: the best and its evidence, the noise, the count."""

    best: Best = field(default_factory=lambda: Best("", None))
    noise: Noise = field(default_factory=lambda: Noise(None))
    experiments: int = 0


@dataclass
class ViewState:
    """Everything the live view shows; changed only by View's event methods."""

    tag: str
    proposer: str = ""
    model: str = ""
    experiment: int | None = None
    phase: str = "starting"
    phase_since: float = field(default_factory=time.monotonic)
    budget: float | None = None  # training budget of the current run, seconds
    timeout: float | None = None  # its hard wall-clock limit, seconds
    standing: Standing = field(default_factory=Standing)
    counts: dict = field(default_factory=lambda: {"keep": 0, "discard": 0, "crash": 0, "trial": 0})
    rows: deque = field(default_factory=lambda: deque(maxlen=8))
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0  # of the logged rows
    failed_cost_usd: float = 0.0  # of proposals that never became a row (run.json keeps it)
    message: str = ""
    started: float = field(default_factory=time.monotonic)
    metric: str = "val_bpb"  # a declared target's metric name
    higher_is_better: bool = False

    def add_row(self, row: dict) -> None:
        self.rows.append(row)
        status = row["status"]
        if status == "keep" and (row.get("role") in ("baseline", "repeat") or row.get("proposer") == "baseline"):
            status = "baseline"  # the bar, not a kept change
        self.counts[status] = self.counts.get(status, 0) + 1
        self.input_tokens += int(row.get("input_tokens") or 0)
        self.output_tokens += int(row.get("output_tokens") or 0)
        self.cost_usd += float(row.get("cost_usd") or 0.0)


# ---------------------------------------------------------------------------
# Pure functions: state -> text / renderables
# ---------------------------------------------------------------------------


def clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def row_line(row: dict, delta: float | None, metric: str = "val_bpb") -> str:
    """One finished trial as a log line, e.g. `[0003] keep val_bpb=0.991234 (-0.001200) ...`. The
    change shown is the one the verdict used: the row's `delta` (the experiment's mean minus the
    best's mean) where the loop logged it, else `delta` as given (this trial against the best)."""
    trial = row.get("trial") or 1
    head = f"[{int(row['experiment']):04d}] {row['status']}" + (f" (trial {trial})" if trial > 1 else "")
    if row["status"] == "crash":
        return f"{head} ({row['reason']}) {row['description']}"
    mean = row.get("mean_val_bpb")
    judged = row.get("delta")
    if judged is not None:
        on = f"the mean of {trial} trials" if mean is not None and trial > 1 else "1 trial"
        change = f" ({float(judged):+.6f} vs the best, on {on})"
    else:
        change = f" ({delta:+.6f})" if delta is not None else ""
    means = f" mean={float(mean):.6f}" if mean is not None and trial > 1 else ""
    return f"{head} {metric}={float(row['val_bpb']):.6f}{means}{change} {row['description']}"


def phase_line(state: ViewState, now: float) -> str:
    """What is happening now, with the clock of the phase. Past its budget a training is
    evaluating (train.py's final eval; or still starting up, which the budget does not count
    either), so that is what it says rather than a frozen `0:00 left`."""
    number = f"[{state.experiment:04d}] " if state.experiment is not None else ""
    elapsed = now - state.phase_since
    if state.phase == "training" and state.budget:
        left = state.budget - elapsed
        limit = f"(hard limit {clock(state.timeout or 0)})"
        if left <= 0:
            # the budget counts training steps only: start-up came before it, evaluation after
            return (f"{number}evaluating: {clock(elapsed)} elapsed, past the {clock(state.budget)} "
                    f"training budget, which start-up and evaluation are not part of {limit}")
        return f"{number}training {clock(elapsed)} elapsed, ~{clock(left)} of budget left {limit}"
    if state.phase == "paused" and state.timeout:
        return f"{number}paused, retrying in {clock(state.timeout - elapsed)}"
    return f"{number}{state.phase} {clock(elapsed)}"


def best_text(best: Best) -> str:
    """`0.991234 ± 0.000150 over 2 trials (abc1234)`, or `-` before the baseline."""
    if best.mean is None:
        return "-"
    spread = f" ± {best.spread:.6f}" if len(best.values) > 1 else ""
    trials = "1 trial" if len(best.values) == 1 else f"{len(best.values)} trials"
    return f"{best.mean:.6f}{spread} over {trials} ({best.commit})"


def header(state: ViewState, now: float) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    best = best_text(state.standing.best)
    counts = state.counts
    grid.add_row("run", f"{state.tag}  ({state.proposer}{' ' + state.model if state.model else ''})")
    grid.add_row("now", phase_line(state, now))
    grid.add_row(f"best {state.metric}" + (" (higher is better)" if state.higher_is_better else ""), best)
    grid.add_row("noise (sigma)", str(state.standing.noise))
    grid.add_row(
        "experiments",
        f"{state.standing.experiments}: {counts.get('keep', 0)} kept, {counts.get('discard', 0)} discarded, "
        f"{counts.get('crash', 0)} crashed{' besides the baseline' if counts.get('baseline') else ''}; "
        f"{sum(counts.values())} trials   (running {clock(now - state.started)})",
    )
    grid.add_row(
        "tokens / cost",
        f"{state.input_tokens:,} in, {state.output_tokens:,} out, ${state.cost_usd + state.failed_cost_usd:.4f}"
        + (f" (${state.failed_cost_usd:.4f} on failed proposals)" if state.failed_cost_usd else ""),
    )
    if state.message:
        grid.add_row("note", Text(state.message, style="yellow"))
    return grid


def rows_table(state: ViewState) -> Table:
    table = Table(expand=True, box=None, header_style="bold")
    for name, justify in [("#", "right"), ("commit", "left"), (state.metric, "right"), ("status", "left")]:
        table.add_column(name, justify=justify, no_wrap=True)
    table.add_column("description", ratio=1, overflow="ellipsis", no_wrap=True)
    for row in state.rows:
        status = row["status"]
        val = row["reason"] if status == "crash" else f"{float(row['val_bpb']):.6f}"
        table.add_row(
            str(row["experiment"]), row["commit"], val, Text(status, style=STATUS_STYLE.get(status, "")),
            row["description"],
        )
    return table


def render(state: ViewState, now: float) -> Panel:
    return Panel(
        Group(header(state, now), Text(""), rows_table(state)),
        title=f"autoresearch · {state.tag}",
        border_style="blue",
    )


# ---------------------------------------------------------------------------
# Views: the loop calls these on events
# ---------------------------------------------------------------------------


class View:
    """Plain lines on a stream; the base for LiveView. Silent views pass quiet=True."""

    def __init__(self, tag: str, stream=None, quiet: bool = False):
        self.state = ViewState(tag=tag)
        self.stream = stream or sys.stdout
        self.quiet = quiet

    def start(self, proposer: str, model: str, rows: list[dict], standing: Standing | None = None) -> None:
        self.state.proposer, self.state.model = proposer, model
        for row in rows:
            self.state.add_row(row)
        self.state.standing = standing or Standing()
        self.show(None)

    def phase(self, experiment: int | None, name: str, budget: float | None = None,
              timeout: float | None = None) -> None:
        state = self.state
        state.experiment, state.phase, state.phase_since = experiment, name, time.monotonic()
        state.budget, state.timeout = budget, timeout
        line = None
        if name == "training":
            line = f"[{experiment:04d}] training (budget {budget:g} s, limit {timeout:g} s) ..."
        elif name in ("proposing", "fixing"):
            line = f"[{experiment:04d}] {name} ..."
        self.show(line)

    def row(self, row: dict, delta: float | None, standing: Standing | None = None) -> None:
        self.state.add_row(row)
        if standing is not None:
            self.state.standing = standing
        self.state.message = ""
        self.show(row_line(row, delta, self.state.metric))

    def target(self, metric: str, higher_is_better: bool) -> None:
        """A declared target: its metric's name where val_bpb stands, and its direction."""
        self.state.metric, self.state.higher_is_better = metric, higher_is_better
        if higher_is_better:
            self.show(f"target: {metric}, higher is better")

    def note(self, text: str) -> None:
        self.state.message = text
        self.show(text)

    def failed_cost(self, cost_usd: float) -> None:
        """What failed proposals have cost so far: it counts towards --max-cost too."""
        self.state.failed_cost_usd = cost_usd
        self.show(None)

    def show(self, line: str | None) -> None:
        if line and not self.quiet:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        pass


class LiveView(View):
    """A rich panel redrawn on events, with the finished rows scrolling above it."""

    def __init__(self, tag: str, console: Console | None = None):
        super().__init__(tag)
        self.console = console or Console()
        self.live = Live(console=self.console, auto_refresh=False, transient=False)
        self.live.start()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, daemon=True)
        self._ticker.start()

    def show(self, line: str | None) -> None:
        if line and not line.endswith("..."):
            self.live.console.print(line, highlight=False, markup=False)
        self.live.update(render(self.state, time.monotonic()), refresh=True)

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            if self.state.phase in TICKING_PHASES:
                self.live.update(render(self.state, time.monotonic()), refresh=True)

    def close(self) -> None:
        self._stop.set()
        self.live.stop()


def make_view(tag: str, quiet: bool = False) -> View:
    """A live view on a terminal, plain lines otherwise."""
    console = Console()
    if console.is_terminal and not quiet:
        return LiveView(tag, console)
    return View(tag, quiet=quiet)
