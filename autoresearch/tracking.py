"""The trackers researchers already use: every row of results.tsv also goes to MLflow or to
Weights & Biases.

    autoresearch run --tag mar5 --track mlflow    # results/mar5/mlflow.db, or MLFLOW_TRACKING_URI
    autoresearch run --tag mar5 --track wandb     # WANDB_MODE=offline: no network, `wandb sync` later
    autoresearch export --tag mar5 --to mlflow    # a finished run, through the same code

One tracker run per experiment; its trials (a baseline repeat, a confirm) are steps 1, 2, ... of
that run. Every number of a row is a metric at its trial's step, under its column's name (so
the metric is val_bpb today, and whatever a lab declares once results.tsv names it), its text
(verdict, reason, hypothesis, description) tags or summary, the fixed facts of the experiment
(commit, parent, proposer, model) params or config, runs/NNNN/diff.patch a file.

Idempotent by (tag, base commit, experiment, trial), so a resumed run, a catch-up after the
tracker was down and an export never log a trial twice:
- MLflow: the tracker is the record. The experiment's run is found by its tags, a trial by its
  `autoresearch.trial.K` tag, which is set last; a trial logged again after a kill -9 before
  that tag repeats the same metrics with the same timestamps (the row's started_at), which
  MLflow's store keeps once (its key is run, name, step, timestamp, value).
- W&B: the run id is fixed per experiment and the trial is the step; results/<tag>/wandb.json
  names the trials logged, written after each is flushed. A kill -9 between the two logs that
  trial again at the same step of the same run, in a new offline folder.

The loop sees only Tracking: log_row() never raises and never waits (a thread does the
logging), a tracker that fails costs one warning line, and what it missed is logged when it
answers again, on the next resume, or by export.
"""

import hashlib
import importlib
import logging
import math
import os
import queue
import re
import shutil
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from autoresearch.errors import AutoresearchError
from autoresearch.records import COLUMNS, SCHEMA, ResultsFile, RunLock, RunState, parse_metrics

PLACEHOLDERS = COLUMNS[1:3]  # the metric and memory_gb: a crash reads 0 there (upstream), not a measurement
IDENTITY = ("experiment", "trial", "seed")  # which run and which step, not measurements
PARAMS = ("commit", "parent", "proposer", "model")  # fixed for an experiment
LONG_TEXT = 5000  # MLflow keeps 8000 characters of a tag
WAIT_SECONDS = 30.0  # the most a finished run waits for its tracker to catch up


# ---------------------------------------------------------------------------
# Rows as trackers see them
# ---------------------------------------------------------------------------


def recorded(row: dict) -> dict:
    """The row as results.tsv writes it and reads it back, so that a row logged live and the
    same row logged again from the file are the same values (MLflow dedups on them)."""
    out = dict(row)
    for column in SCHEMA:
        value = out.get(column.name)
        if column.digits is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[column.name] = float(f"{value:.{column.digits}f}")
    if out.get("status") == "crash":
        out.update({name: 0.0 for name in PLACEHOLDERS if name in out})
    return out


def measurements(row: dict) -> dict[str, float]:
    """Every finite number of the row but its identity (and a crash's placeholder zeros)."""
    crash = row.get("status") == "crash"
    out = {key: float(value) for key, value in row.items()
           if key not in IDENTITY and not (crash and key in PLACEHOLDERS)
           and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}
    others = parse_metrics(row.get("metrics") or "")  # a declared target's other metrics, as numbers
    return {**{k: v for k, v in others.items() if k not in out and math.isfinite(v)}, **out}


def texts(row: dict) -> dict[str, str]:
    """The row's non-empty text (status, reason, hypothesis, ...), clipped for tag limits."""
    return {key: _clip(value) for key, value in row.items()
            if isinstance(value, str) and value and key not in PARAMS and key != "metrics"}


def params(row: dict, tag: str, base: str) -> dict[str, str]:
    return {"tag": tag, "base": base, "experiment": str(row["experiment"]),
            **{key: str(row.get(key) or "") for key in PARAMS}}


def trial_of(row: dict) -> int:
    return int(row.get("trial") or 1)  # upstream's rows have no trial column: one trial each


def run_name(row: dict) -> str:
    return f"{int(row['experiment']):04d} {_clip(row.get('description') or '', 80)}".strip()


def epoch_ms(started_at: str) -> int:
    """The row's start (ISO 8601 UTC) in ms: a fixed timestamp for the trial's metrics."""
    try:
        moment = datetime.strptime(started_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except (TypeError, ValueError):
        return 0
    return int(moment.timestamp() * 1000)


def run_base(run_dir: Path) -> str:
    """The run's start commit (short): with the tag, it tells two runs of one tag apart."""
    return str(RunState.load(Path(run_dir) / "run.json").get("base_commit") or "")[:7]


# ---------------------------------------------------------------------------
# The interface and its two backends
# ---------------------------------------------------------------------------


class Tracker:
    """A tracker store: knows which trials it holds, logs the trials of one experiment."""

    name = ""
    package = ""  # imported to check the extra is installed
    title = ""

    def __init__(self, run_dir: Path, tag: str, base: str):
        self.run_dir, self.tag, self.base = Path(run_dir), tag, base

    def logged(self, experiment: int, trial: int) -> bool:
        raise NotImplementedError

    def log(self, rows: list[dict]) -> None:
        """Trials of one experiment, in order, none of them logged yet."""
        raise NotImplementedError

    def where(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def diff(self, row: dict) -> Path | None:
        path = self.run_dir / "runs" / f"{int(row['experiment']):04d}" / "diff.patch"
        return path if path.is_file() and path.stat().st_size else None


class MLflowTracker(Tracker):
    name, package, title = "mlflow", "mlflow", "MLflow"

    def __init__(self, run_dir: Path, tag: str, base: str):
        super().__init__(run_dir, tag, base)
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its "creating tables" lines are not ours
        own = not os.environ.get("MLFLOW_TRACKING_URI")
        self.uri = f"sqlite:///{(self.run_dir / 'mlflow.db').resolve()}" if own else os.environ["MLFLOW_TRACKING_URI"]
        self.client = MlflowClient(tracking_uri=self.uri)
        name = f"autoresearch/{tag}"
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            self.experiment_id = found.experiment_id
        else:  # our own store keeps its files beside it; a server decides for itself
            location = (self.run_dir / "mlflow-artifacts").resolve().as_uri() if own else None
            self.experiment_id = self.client.create_experiment(name, artifact_location=location)
        self.runs: dict[int, str] = {}  # experiment -> run id
        self.trials: dict[int, set[int]] = {}  # experiment -> trials logged
        self.with_params: set[int] = set()
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], f"tags.`autoresearch.tag` = '{tag}'",
                                           max_results=1000, page_token=token)
            for run in page:
                tags = run.data.tags
                if tags.get("autoresearch.base", "") != base or "autoresearch.experiment" not in tags:
                    continue
                n = int(tags["autoresearch.experiment"])
                self.runs[n] = run.info.run_id
                self.trials[n] = {int(k.rsplit(".", 1)[1]) for k in tags if re.fullmatch(r"autoresearch\.trial\.\d+", k)}
                if run.data.params:
                    self.with_params.add(n)
            token = page.token
            if not token:
                break

    def logged(self, experiment: int, trial: int) -> bool:
        return trial in self.trials.get(experiment, ())

    def log(self, rows: list[dict]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        first = rows[0]
        n = int(first["experiment"])
        if n not in self.runs:  # created with its identity tags in one call: findable from then on
            run = self.client.create_run(
                self.experiment_id, start_time=epoch_ms(first.get("started_at", "")) or None,
                run_name=run_name(first), tags={"autoresearch.tag": self.tag, "autoresearch.base": self.base,
                                                "autoresearch.experiment": str(n)})
            self.runs[n], self.trials[n] = run.info.run_id, set()
        run_id = self.runs[n]
        if n not in self.with_params:
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in params(first, self.tag, self.base).items()])
            self.with_params.add(n)
        diff = self.diff(first)
        if diff is not None:
            self.client.log_artifact(run_id, str(diff))  # the same path again overwrites it
        for row in rows:
            trial, at = trial_of(row), epoch_ms(row.get("started_at", ""))
            if row.get("status") in ("keep", "discard", "crash"):
                end = at + int(1000 * float(row.get("wall_seconds") or 0))
                self.client.set_terminated(run_id, "FAILED" if row["status"] == "crash" else "FINISHED", end or None)
            text = texts(row)
            tags = {**text, "autoresearch.commit": str(row.get("commit") or ""),
                    "mlflow.source.git.commit": str(row.get("commit") or ""),
                    "mlflow.note.content": _note(row)}
            self.client.log_batch(run_id, metrics=[Metric(k, v, at, trial) for k, v in measurements(row).items()],
                                  tags=[RunTag(k, v) for k, v in tags.items()])
            # Last: the trial counts as logged only once all of it is in the store.
            self.client.set_tag(run_id, f"autoresearch.trial.{trial}", str(row.get("status") or ""))
            self.trials[n].add(trial)

    def where(self) -> str:
        return self.uri


class WandbTracker(Tracker):
    name, package, title = "wandb", "wandb", "Weights & Biases"

    def __init__(self, run_dir: Path, tag: str, base: str):
        super().__init__(run_dir, tag, base)
        import wandb

        self.wandb = wandb
        self.dir = Path(os.environ.get("WANDB_DIR") or self.run_dir)
        self.project = os.environ.get("WANDB_PROJECT") or "autoresearch"
        self.state_path = self.run_dir / "wandb.json"
        saved = RunState.load(self.state_path).get("trials", {})
        self.trials = {int(n): set(trials) for n, trials in saved.items()}

    def run_id(self, experiment: int) -> str:
        """Fixed per (tag, base, experiment): a resume and an export add to the same W&B run."""
        key = hashlib.sha1(f"{self.tag}\0{self.base}".encode()).hexdigest()[:8]
        return f"{re.sub(r'[^A-Za-z0-9_-]', '-', self.tag)[:40]}-{key}-{experiment:04d}"

    def logged(self, experiment: int, trial: int) -> bool:
        return trial in self.trials.get(experiment, ())

    def log(self, rows: list[dict]) -> None:
        first, last = rows[0], rows[-1]
        n = int(first["experiment"])
        settings = self.wandb.Settings(console="off", silent=True, save_code=False, disable_git=True,
                                       x_save_requirements=False, x_disable_stats=True,
                                       x_disable_machine_info=True)
        run = self.wandb.init(project=self.project, id=self.run_id(n), resume="allow", group=self.tag,
                              name=run_name(first), notes=_note(first), config=params(first, self.tag, self.base),
                              tags=[self.tag[:64]], dir=str(self.dir), settings=settings, reinit="create_new")
        crashed = False
        try:
            for row in rows:
                run.log(measurements(row), step=trial_of(row))
            run.summary.update({**texts(last), **measurements(last), "trial": trial_of(last)})
            diff = self.diff(first)
            if diff is not None:  # a copy in the run's folder: a link to it would be a W&B warning line
                copy = Path(run.dir) / "diff.patch"
                shutil.copyfile(diff, copy)
                run.save(str(copy), base_path=run.dir, policy="now")
            crashed = last.get("status") == "crash"
        finally:
            run.finish(exit_code=1 if crashed else 0)
        self.trials.setdefault(n, set()).update(trial_of(row) for row in rows)
        RunState.save(self.state_path, trials={str(k): sorted(v) for k, v in sorted(self.trials.items())})

    def where(self) -> str:
        mode = os.environ.get("WANDB_MODE") or "online"
        if mode in ("offline", "dryrun"):
            return f"offline runs under {self.dir / 'wandb'} (upload them with `wandb sync {self.dir / 'wandb'}/offline-run-*`)"
        return f"project {self.project}"


TRACKERS: dict[str, type[Tracker]] = {"mlflow": MLflowTracker, "wandb": WandbTracker}


def tracker_class(name: str, option: str = "--track") -> type[Tracker]:
    """The backend for `name`; a one-line error for an unknown one or a missing extra."""
    cls = TRACKERS.get(name)
    if cls is None:
        raise AutoresearchError(f"bad {option} {name!r}: use {' or '.join(TRACKERS)}")
    try:
        importlib.import_module(cls.package)
    except ImportError as exc:
        raise AutoresearchError(f"{option} {name} needs {cls.title} ({exc}): "
                                f"pip install 'autoresearch[{name}]'") from None
    return cls


def send(tracker: Tracker, pending: list[dict]) -> int:
    """Log what `pending` holds that the tracker does not, an experiment's consecutive trials
    at a time; each group leaves `pending` once logged. Returns the trials logged."""
    count = 0
    while pending:
        n = int(pending[0]["experiment"])
        size = next((i for i, row in enumerate(pending) if int(row["experiment"]) != n), len(pending))
        fresh, seen = [], set()
        for row in pending[:size]:
            trial = trial_of(row)
            if not tracker.logged(n, trial) and trial not in seen:
                fresh.append(row)
                seen.add(trial)
        if fresh:
            tracker.log(fresh)
            count += len(fresh)
        del pending[:size]
    return count


# ---------------------------------------------------------------------------
# The loop's observer
# ---------------------------------------------------------------------------


class NoTracking:
    """No --track: the loop's calls cost nothing."""

    def log_row(self, row: dict) -> None:
        pass

    def close(self) -> None:
        pass


class Tracking(NoTracking):
    """Rows go to the tracker from a thread. The tracker is opened at the first row (run.json
    holds the base commit by then), and then also gets the rows recorded before (a resume).
    A failure keeps the rows for the next try; it is reported once, from the caller's thread."""

    def __init__(self, tracker: type[Tracker], run_dir: Path, tag: str, note: Callable[[str], None],
                 wait: float = WAIT_SECONDS):
        self.tracker, self.run_dir, self.tag, self.note, self.wait = tracker, Path(run_dir), tag, note, wait
        self.failure: str | None = None
        self.warned = False
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._work, name=f"{tracker.name}-tracking", daemon=True)
        self.thread.start()

    def log_row(self, row: dict) -> None:
        try:
            self._warn()
            self.queue.put(recorded(row))
        except Exception:  # an observer: nothing here may cost a row
            pass

    def close(self) -> None:
        try:
            self.queue.put(None)
            self.thread.join(self.wait)
            if self.thread.is_alive() and self.failure is None:
                self.failure = f"still logging after {self.wait:g} s"
            self._warn()
        except BaseException:  # a second Ctrl-C while waiting: stop waiting
            pass

    def _warn(self) -> None:
        if self.failure and not self.warned:
            self.warned = True
            self.note(f"warning: {self.tracker.name} tracking failed ({self.failure}); the run goes on without it; "
                      f"`autoresearch export --tag {self.tag} --to {self.tracker.name}` logs what it missed")

    def _work(self) -> None:
        tracker, pending, caught_up, closing = None, [], False, False
        while not closing:
            item = self.queue.get()
            while True:  # what else has arrived: one try for all of it
                if item is None:
                    closing = True
                else:
                    pending.append(item)
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
            if not pending:  # closing, nothing left
                continue
            try:
                if tracker is None:
                    tracker = self.tracker(self.run_dir, self.tag, run_base(self.run_dir))
                if not caught_up:  # rows recorded before this session (a resume); skipped if logged
                    rows = ResultsFile(self.run_dir / "results.tsv").rows()
                    pending[:0] = [recorded(r.as_dict()) for r in rows]
                    caught_up = True
                send(tracker, pending)
            except Exception as exc:
                self.failure = self.failure or _one_line(exc)
                _close_quietly(tracker)
                tracker = None
        _close_quietly(tracker)


def open_tracking(name: str | None, run_dir: Path, tag: str, note: Callable[[str], None]) -> NoTracking:
    """The loop's tracker for `--track NAME` (None: none)."""
    if name is None:
        return NoTracking()
    return Tracking(tracker_class(name), run_dir, tag, note)


# ---------------------------------------------------------------------------
# autoresearch export
# ---------------------------------------------------------------------------


def export(root: Path | None, tag: str, to: str) -> str:
    """Log a run's rows to a tracker (what it holds already is skipped); one line saying what
    was done. Refused while the run is running (its lock is held)."""
    from autoresearch.analysis import find_root, tag_folder

    cls = tracker_class(to, "--to")
    folder = tag_folder(Path(root) if root else find_root(Path.cwd()), tag)
    rows = [recorded(r.as_dict()) for r in ResultsFile(folder / "results.tsv").rows()]
    if not rows:
        raise AutoresearchError(f"results/{tag} has no rows to export yet")
    with RunLock(folder / "run.lock"):
        tracker = None
        try:
            tracker = cls(folder, tag, run_base(folder))
            logged = send(tracker, list(rows))
            where = tracker.where()
        except Exception as exc:
            raise AutoresearchError(f"export to {to} failed: {_one_line(exc)}") from None
        finally:
            _close_quietly(tracker)
    experiments = len({int(r["experiment"]) for r in rows})
    return (f"exported {logged} trials of {experiments} experiments to {cls.title} "
            f"({len(rows) - logged} already there): {where}")


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _note(row: dict) -> str:
    """The run's description in the tracker's UI: the hypothesis, then the change."""
    parts = [str(row.get(key) or "").strip() for key in ("hypothesis", "description")]
    return _clip("\n\n".join(p for p in parts if p))


def _clip(text: str, limit: int = LONG_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return _clip(f"{type(exc).__name__}: {text}", 200)


def _close_quietly(tracker: Tracker | None) -> None:
    if tracker is not None:
        try:
            tracker.close()
        except Exception:
            pass


__all__ = ["TRACKERS", "Tracker", "Tracking", "NoTracking", "export", "open_tracking", "send"]
