"""The experiment loop: propose one change to train.py, train it, keep it if it is better
beyond the noise (docs/keep_rule.md).

    lock results/<tag>/; open the run branch and its worktree (create them for a new tag)
    stop any training a killed harness left behind; move the branch to the best kept commit
    until a limit is reached:                                  (Session.loop)
        an experiment with trials but no verdict -> one more trial of its commit
                                                    (a baseline repeat, a confirm; also on resume)
        no baseline yet  -> train the unmodified train.py (--baseline-repeats times in all)
        otherwise        -> fresh context (program.md from the user's checkout, best train.py,
                            lab contract, one history entry per experiment) -> propose ONE
                            change -> commit -> train -> on a crash, up to 2 fix attempts
        judge the trials so far against the best's (keep_rule.judge): keep, discard, or
        confirm (one more trial); append the row (fsynced); move the branch back to the best
        commit unless the change was kept or waits for its confirm

Crash consistency: results.tsv is the only record that counts
---------------------------------------------------------------
The Ledger (ledger.py) owns it; the branch, the worktree and runs/NNNN are rebuilt from its
rows, so a `kill -9` at any moment loses no finished trial and writes none twice:

- A trial's artefacts (runs/NNNN/diff.patch, proposal.json, its log) are written first, then
  its row is appended and fsynced: the append is the commit point. Only then does the branch
  move back to the best commit (for a discard or crash).
- On every start the branch is reset to the best kept commit named by the rows, which also
  drops an experiment commit or an edit in the worktree that never got its row, and stops a
  training process left running by the dead harness (training.json).
- An experiment whose rows have no verdict yet (a confirm interrupted) gets its next trial on
  its own commit; the next new experiment is numbered one past the last row, so one that died
  before its first row is simply run again under the same number (its runs/NNNN is emptied).
- A row torn by a kill mid-write is ignored by ResultsFile, so that trial is redone too.
- Only the counters in run.json (failed proposals and their cost) can lose the last increment.

Ctrl-C and SIGTERM stop the run the same way: the runner kills the training process group, the
worktree goes back to the best commit, run.json says `stopped`, and `--resume` continues.
"""

import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from git.exc import GitCommandError

from autoresearch.config import LAB_VARIABLES, SEED, RunConfig, check_tag, from_cli
from autoresearch.errors import AutoresearchError
from autoresearch.keep_rule import Noise, Verdict, judge, pooled_noise
from autoresearch.lab import detect_profile, lab_contract, lab_time_budget
from autoresearch.ledger import Best, Experiment, Ledger
from autoresearch.live import Standing, View, make_view
from autoresearch.process import kill_marked, kill_orphan
from autoresearch.proposers import Context, Proposal, ProposerError, Usage
from autoresearch.proposers.command import AGENT_MARKER
from autoresearch.results import Row, RunLock, RunState, read_bytes, restore_bytes, utc_now
from autoresearch.runner import RunResult, run_training, training_env
from autoresearch.tracking import NoTracking, open_tracking
from autoresearch.trust import HANDOFF_ENV, Audited, Trust, drop_models, model_path, rebuild_hint
from autoresearch.scheduler import Speculator, rebase_train_py, speculates
from autoresearch.workspace import Workspace

__all__ = ["RunConfig", "RunOutcome", "run", "run_from_cli"]

LOG_TAIL_LINES = 50


pause_sleep = time.sleep  # a module attribute, so tests can count the pauses


@dataclass
class RunOutcome:
    state: str  # "done" | "stopped"
    exit_code: int  # 0 done, 130 stopped
    message: str
    rows: int  # trials recorded in all
    best_val_bpb: float | None  # the best's mean over its trials
    best_commit: str
    experiments: int = 0


@dataclass
class Trained:
    """A training run as the loop judges it."""

    result: RunResult
    status: str  # "ok" (finished, to be judged against the best) or "crash"
    reason: str
    fixable: bool = False  # a crash the proposer may be shown (not a timeout, not a tampering)
    val_bpb: float = 0.0
    cache_changed: bool = False  # the lab's cache changed: the run stops after this row
    model: Path | None = None  # the model train.py handed over (when the audit is on)


@dataclass
class Change:
    """What one experiment trains, as its rows describe it."""

    number: int
    commit: str
    parent: str
    description: str
    hypothesis: str
    proposer: str
    model: str = ""
    baseline: bool = False
    combines: int | None = None  # a combination: this experiment's idea re-applied on a newer best

    def role(self, trial: int) -> str:
        if self.baseline:
            return "baseline" if trial == 1 else "repeat"
        if trial > 1:
            return "confirm"
        return "combine" if self.combines is not None else "candidate"


class RunPaths:
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


def run(config: RunConfig, proposer=None, view: View | None = None) -> RunOutcome:
    """Run experiments until a limit is reached or the user stops it. Bad setup raises
    AutoresearchError. `proposer` and `view` default to the configured backend and make_view()."""
    paths = RunPaths(config.repo_root, config.tag)
    check_start(config, RunState.load(paths.state))  # before results/<tag>/ is created
    if proposer is None:
        from autoresearch.proposers import get_proposer

        proposer = get_proposer(config.proposer, config.options)
        built = True
    else:
        built = False
    if config.preflight:  # one line naming the fix, before results/<tag>/ exists or anything trains
        from autoresearch.doctor import preflight

        profile = config.profile or os.environ.get("AUTORESEARCH_PROFILE") or detect_profile()
        preflight(config.repo_root, profile, config.proposer if built else None, config.options,
                  {**os.environ, **config.extra_env})
    view = view or make_view(config.tag)
    paths.dir.mkdir(parents=True, exist_ok=True)
    tracking = open_tracking(config.track, paths.dir, config.tag, view.note)  # --track: an observer, never raises
    try:
        with stop_signals_as_interrupt(), RunLock(paths.lock):
            session = session_class(config, RunState.load(paths.state))(config, proposer, view, paths)
            session.tracking = tracking
            try:
                session.start()
                return session.loop()
            except KeyboardInterrupt:
                return session.stop()
            except BaseException:
                session.clean_up()  # a bug or a bad setup: still leave no training, no half change
                raise
    finally:
        tracking.close()  # waits a little for the last rows; a failure was one warning line
        view.close()


def session_class(config: RunConfig, state: dict | None = None) -> type:
    """The single-GPU loop, or the coordinator of many workers (--workers N>1, --gpus, --ray).
    A run the coordinator started stays with it (on one worker when resumed without options):
    its candidates are judged against their own bases, which the single loop does not know."""
    many = (config.workers or 1) > 1 or config.gpus is not None or config.ray is not None
    if many or (state or {}).get("coordinator"):
        from autoresearch.coordinator import Coordinator

        return Coordinator
    return Session


def check_start(config: RunConfig, state: dict) -> bool:
    """Refuse what cannot start: a bad tag, --resume of a run that never started, or a new tag
    whose branch exists. A tag is new until results/<tag>/run.json exists. Returns whether the
    run's branch exists."""
    tag = check_tag(config.tag)
    has_branch = Workspace.exists(Path(config.repo_root), tag)
    if not state:
        if config.resume:
            raise AutoresearchError(f"no run '{tag}' to resume (no results/{tag}/run.json); drop --resume to start it")
        if has_branch:
            raise AutoresearchError(
                f"branch autoresearch/{tag} already exists but was not started here; "
                f"pick another --tag (or delete the branch)"
            )
    return has_branch


class Session:
    """One invocation of `autoresearch run` on one tag: sequencing only. The record and the
    best are the Ledger's, the verdicts keep_rule's, git the Workspace's, processes the runner's."""

    reuses_numbers = True  # an experiment killed before its first row runs again under its number
    tracking = NoTracking()  # run() sets the --track observer (tracking.py)

    def __init__(self, config: RunConfig, proposer, view: View, paths: RunPaths):
        self.config, self.proposer, self.view, self.paths = config, proposer, view, paths
        self.ledger = Ledger(paths.dir)
        self.state: dict = {}  # run.json as last saved
        self.workspace: Workspace | None = None
        self.trust: Trust | None = None  # set in start(): sandbox, held-out watch, cache guard, audit
        self.best = Best("", None)
        self.failures_in_a_row = 0
        self.pauses = 0
        self.started = time.monotonic()
        self._profile = ""
        self._base_short = ""
        # Speculation (scheduler.py): the next idea is asked for while one trains.
        self.speculator = Speculator(proposer, Path(config.repo_root) / ".autoresearch" / "scratch" / config.tag)
        self.speculating = config.speculate and speculates(proposer)
        self.speculation: dict[int, str] = {}  # experiment -> how its idea came (results column)
        self.gpu_free_since = self.started  # when the last training ended: the GPU idles from then
        self.last_run: tuple[float, float] | None = None  # (seconds trained, seconds idle before it)

    # -- the algorithm -------------------------------------------------------------------------

    def loop(self) -> RunOutcome:
        while True:
            pending = self.ledger.pending()
            why = self.limit_reached(pending)
            if why:
                return self.finish(why)
            if pending is not None:
                self.next_trial(pending)  # a baseline repeat or a confirm
            elif self.best.experiment is None:
                self.baseline()
            else:
                self.experiment()

    def baseline(self) -> None:
        """Train the run's start commit unchanged; its trials set the bar and the first noise."""
        n = self.ledger.new_number()
        folder = self.fresh_run_dir(n)
        base = self.workspace.short(self.state["base_commit"])
        (folder / "diff.patch").write_text("")
        _write_json(folder / "proposal.json", {"experiment": n, "proposer": "baseline", "attempts": []})
        change = Change(n, base, base, "baseline", "the unmodified train.py sets the bar", "baseline", baseline=True)
        self.speculate(change)
        self.trial(change, [], utc_now(), time.monotonic())

    def experiment(self) -> None:
        """One idea: propose, commit, train (and fix a crash up to twice), then judge."""
        n = self.ledger.new_number()
        folder = self.fresh_run_dir(n)
        started_at, t0 = utc_now(), time.monotonic()
        parent = self.best.commit
        record = {"experiment": n, "proposer": self.proposer_name, "attempts": [], "failures": []}
        idea, how = self.prepared_idea(n, record, folder)
        if idea is None:
            if self.limit_reached():  # a thrown-away or failed speculation may have used the budget
                return
            idea = self.propose_until_usable(self.context(n), record, folder)
        if idea is None:  # a limit was reached while the proposer kept failing
            return
        self.speculation[n] = how
        record["speculation"] = how
        proposal, usage = idea, idea.usage
        commit = self.apply(n, proposal)
        self.speculate(Change(n, commit, parent, idea.description, idea.hypothesis, self.proposer_name),
                       spent=idea.usage.cost_usd)
        trained = self.train_and_check(n, 1, folder)
        for attempt in range(1, self.config.max_fix_attempts + 1):
            if not trained.fixable or not getattr(self.proposer, "can_fix", True):
                break
            fix, spent = self.propose_fix(n, attempt, proposal, trained, record, folder)
            usage = usage + spent
            if fix is None:
                break
            proposal = fix
            commit = self.apply(n, proposal)
            trained = self.train_and_check(n, 1, folder)
        self.view.phase(n, "logging")
        (folder / "diff.patch").write_text(self.workspace.diff(parent, commit))
        _write_json(folder / "proposal.json", record)
        change = Change(n, commit, parent, idea.description, idea.hypothesis, self.proposer_name,
                        proposal.model or idea.model)
        self.settle(change, [], trained, usage, started_at, t0)

    def next_trial(self, pending: Experiment) -> None:
        """One more trial of an experiment that has no verdict yet, on its own commit."""
        first = pending.first
        change = Change(pending.number, pending.commit, first.parent, first.description, first.hypothesis,
                        first.proposer, first.model, baseline=first.role == "baseline")
        if not self.workspace.at(change.commit):
            self.workspace.revert_to(change.commit)
        self.trial(change, pending.rows, utc_now(), time.monotonic())

    def trial(self, change: Change, earlier: list[Row], started_at: str, t0: float) -> None:
        trained = self.train_and_check(change.number, len(earlier) + 1, self.paths.run_dir(change.number))
        self.settle(change, earlier, trained, Usage(), started_at, t0)

    def settle(self, change: Change, earlier: list[Row], trained: Trained, usage: Usage,
               started_at: str, t0: float) -> None:
        """Judge the trials so far, write the row, and move the branch as the verdict says."""
        trial = len(earlier) + 1
        status, reason, verdict = self.verdict(change, earlier, trained)
        audited = None
        if status == "keep":
            status, reason, verdict, audited = self.audit_keep(change, earlier, trained, (status, reason, verdict))
        row = self.make_row(change, trial, change.role(trial), status, reason, trained.result, usage, started_at, t0, verdict)
        self.mark_trust(row, audited)
        self.record(row, previous=self.best)
        drop_models(self.paths.run_dir(change.number), keep=trained.model if status == "keep" else None)
        if trained.cache_changed:
            raise AutoresearchError(
                f"the lab's cache changed during experiment {change.number} ({trained.reason}); "
                f"{rebuild_hint(self.trust.lab)}")
        if change.baseline and status == "crash":
            raise AutoresearchError(
                f"the unmodified baseline crashed ({reason}); see {self.paths.log(change.number, trial)}, "
                f"fix the lab, then resume with: autoresearch run --tag {self.config.tag} --resume"
            )

    def verdict(self, change: Change, earlier: list[Row], trained: Trained,
                against: tuple[float, ...] | None = None) -> tuple[str, str, Verdict | None]:
        """(status, reason, verdict): crash; the baseline's trial/keep; or the keep rule's call
        against the best's trials (`against`: another commit's)."""
        if trained.status == "crash":
            reason = trained.reason if not earlier else f"trial {len(earlier) + 1} crashed: {trained.reason}"
            return "crash", reason, None
        values = [float(r.val_bpb) for r in earlier if r.measured] + [trained.val_bpb]
        noise = self.noise(change.number, values)
        if change.baseline:
            done = len(values) >= self.config.baseline_repeats
            mean = sum(values) / len(values)
            return ("keep" if done else "trial"), "", Verdict("keep", mean, 0.0, None, "baseline", noise.sigma)
        base = self.best.values if against is None else against
        verdict = judge(self.config.keep_rule, values, base, noise, self.config.min_delta)
        status = {"keep": "keep", "discard": "discard", "confirm": "trial"}[verdict.decision]
        return status, verdict.why, verdict

    def audit_keep(self, change: Change, earlier: list[Row], trained: Trained,
                   decided: tuple) -> tuple[str, str, Verdict | None, Audited | None]:
        """A row about to be kept: the cache re-hashed, then its model re-evaluated by the base
        commit's prepare.py (trust.py). A failure makes the row a crash: its number is not a
        measurement the record can use (not in the noise, not the best's). A pass judges again
        with the audited number, so nothing is gained inside the tolerance."""
        changes = self.trust.cache_changes(full=True)
        if changes:
            trained.cache_changed, trained.reason = True, "; ".join(changes)
            return "crash", trained.reason, None, None
        if not self.trust.audit:
            return (*decided, None)
        self.view.phase(change.number, "auditing")
        audited = self.trust.audit_keep(trained.model, trained.val_bpb, self.training_env(len(earlier) + 1))
        if not audited.ok:
            return "crash", audited.reason, None, audited
        trained.val_bpb = round(audited.result.val_bpb, 6)
        trained.result.metrics["val_bpb"] = trained.val_bpb
        status, reason, verdict = self.verdict(change, earlier, trained)
        return status, reason, verdict, audited

    def mark_trust(self, row: Row, audited: Audited | None) -> None:
        row.sandbox = self.trust.isolation
        if not self.trust.audit:
            row.audit = "off"
        elif audited is not None:
            row.audit = "pass" if audited.ok else "fail"
            row.audit_val_bpb, row.heldout_bpb = audited.result.val_bpb, audited.result.heldout_bpb
            row.audit_seconds = round(audited.result.seconds, 1)

    def noise(self, number: int, values: list[float]) -> Noise:
        """Pooled over every experiment recorded, this one counted with its newest trial."""
        groups = [exp.values for exp in self.ledger.experiments() if exp.number != number]
        return pooled_noise([*groups, values])

    def record(self, row: Row, previous: Best) -> None:
        """Append the row (the commit point), then move the branch back unless it was kept or
        waits for another trial."""
        row.speculation = self.speculation.get(row.experiment, "") if row.trial == 1 else ""
        if self.last_run is not None:
            row.run_seconds, row.gpu_idle_seconds = (round(v, 1) for v in self.last_run)
        self.ledger.append(row)
        self.best = self.ledger.best(self.base_short)
        if row.status in ("discard", "crash"):
            self.workspace.revert_to(self.best.commit)
        delta = None if previous.mean is None or not row.measured else float(row.val_bpb) - previous.mean
        self.view.row(row.as_dict(), delta, self.standing())
        self.tracking.log_row(row.as_dict())  # MLflow / W&B (--track): queued, never raises

    # -- start and stop ----------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.config
        self.ledger.open(reuse=self.reuses_numbers)
        self.workspace, self.state = self.open_workspace()
        kill_orphan(self.paths.training)
        kill_marked(AGENT_MARKER, str(self.workspace.path.resolve()))  # an agent of a killed harness
        self.speculator.clear_scratch(self.workspace.path)  # and its speculative agent, scratch worktree
        self.best = self.ledger.best(self.base_short)
        try:
            self.workspace.revert_to(self.best.commit)
        except GitCommandError as exc:
            raise AutoresearchError(
                f"cannot move branch autoresearch/{cfg.tag} to its best commit {self.best.commit}: {exc.stderr.strip()}"
            ) from None
        self.save_state(
            state="running", pid=os.getpid(), proposer=self.proposer_name,
            model=cfg.options.model or "", max_experiments=cfg.max_experiments,
            keep_rule=cfg.keep_rule, min_delta=cfg.min_delta, baseline_repeats=cfg.baseline_repeats,
        )
        self.view.start(self.proposer_name, cfg.options.model or "", [r.as_dict() for r in self.ledger.rows()],
                        self.standing())
        self.view.failed_cost(float(self.state.get("proposal_cost_usd") or 0))
        self.trust = self.open_trust()

    def open_trust(self) -> Trust:
        """The audit, sandbox and cache guard of this session, from the base commit's prepare.py
        (the code the proposer cannot edit)."""
        try:
            prepare_py = self.workspace.repo.git.show(f"{self.state['base_commit']}:prepare.py")
        except GitCommandError:
            raise AutoresearchError("the run's base commit has no prepare.py; this is not an autoresearch lab") from None
        scratch = Path(self.config.repo_root) / ".autoresearch" / "scratch" / self.config.tag
        return Trust.open(self.config.audit, self.config.sandbox, prepare_py, self.training_env(),
                          scratch, self.view.note)

    def open_workspace(self) -> tuple[Workspace, dict]:
        """Create the run for a new tag, or continue it. A tag is new until results/<tag>/run.json
        exists; with run.json, the same command (or --resume) continues the run."""
        cfg = self.config
        root, tag = Path(cfg.repo_root), cfg.tag
        state = RunState.load(self.paths.state)
        has_branch = check_start(cfg, state)
        if not state:
            # Saved first, so a kill before the branch exists leaves a resumable run.
            state = RunState.save(
                self.paths.state, tag=tag, branch=f"autoresearch/{tag}", started_at=utc_now(),
                failed_proposals=0, proposal_cost_usd=0.0, base_commit="",
            )
        if not has_branch:
            if self.ledger.rows():
                raise AutoresearchError(
                    f"results/{tag} has rows but branch autoresearch/{tag} is gone; start a new --tag"
                )
            workspace = Workspace.create(root, tag)
            base = workspace.head()
        else:
            workspace = Workspace.open(root, tag)
            # Before the first row nothing is committed on the branch, so its tip is the base
            # (this covers a kill between creating the branch and saving run.json).
            base = state.get("base_commit") or workspace.head()
        state = RunState.save(self.paths.state, base_commit=base, worktree=str(workspace.path))
        return workspace, state

    @property
    def base_short(self) -> str:
        """The run's start commit, short; read once (git's helper processes may be gone by the
        time a Ctrl-C clean-up asks, as the terminal's SIGINT reaches them too)."""
        if not self._base_short and self.workspace is not None:
            self._base_short = self.workspace.short(self.state["base_commit"])
        return self._base_short

    def standing(self) -> Standing:
        experiments = self.ledger.experiments()
        return Standing(self.best, self.ledger.noise(), len(experiments))

    def stop(self) -> RunOutcome:
        """Ctrl-C / SIGTERM: no training left behind, no half-applied change, state `stopped`."""
        self.clean_up()
        message = f"stopped; resume with: autoresearch run --tag {self.config.tag} --resume"
        self.view.phase(None, "stopped")
        self.view.note(message)
        return self.outcome("stopped", 130, message)

    def clean_up(self) -> None:
        previous = _ignore_stop_signals()  # a second Ctrl-C must not interrupt the clean-up
        try:
            kill_orphan(self.paths.training)
            self.drop_speculation()
            if self.workspace is not None:
                self.ledger.reload()  # the row of an interrupted record() counts
                self.best = self.ledger.best(self.base_short)
                self.workspace.revert_to(self.best.commit)
            if self.state:
                self.save_state(state="stopped")
        finally:
            _restore_signals(previous)

    def finish(self, why: str) -> RunOutcome:
        self.drop_speculation()
        self.save_state(state="done")
        best = f"best val_bpb {self.best.mean:.6f} at {self.best.commit}" if self.best.mean is not None else "no baseline yet"
        count = len(self.ledger.experiments())
        message = (f"done ({why}): {count} experiments, {best} ({len(self.ledger.rows())} trials in all); "
                   f"results in {self.paths.results}")
        self.view.phase(None, "done")
        self.view.note(message)
        return self.outcome("done", 0, message)

    def outcome(self, state: str, code: int, message: str) -> RunOutcome:
        return RunOutcome(state, code, message, len(self.ledger.rows()), self.best.mean, self.best.commit,
                          len(self.ledger.experiments()))

    def save_state(self, **fields) -> None:
        self.state = RunState.save(self.paths.state, **fields)

    @property
    def proposer_name(self) -> str:
        return getattr(self.proposer, "name", self.config.proposer)

    def limit_reached(self, pending: Experiment | None = None) -> str | None:
        """A limit that stops the run before its next trial. --max-experiments counts
        experiments, so an experiment waiting for its confirm still gets it."""
        cfg = self.config
        if pending is None and cfg.max_experiments is not None and len(self.ledger.experiments()) >= cfg.max_experiments:
            return f"--max-experiments {cfg.max_experiments}"
        if cfg.max_hours is not None and time.monotonic() - self.started >= cfg.max_hours * 3600:
            return f"--max-hours {cfg.max_hours:g}"
        if cfg.max_cost is not None and self.total_cost() >= cfg.max_cost:
            return f"--max-cost {cfg.max_cost:g} (spent ${self.total_cost():.4f})"
        return None

    def total_cost(self) -> float:
        return sum(float(row.cost_usd or 0) for row in self.ledger.rows()) + float(self.state.get("proposal_cost_usd") or 0)

    def propose_fix(self, n: int, attempt: int, crashed: Proposal, trained: "Trained", record: dict,
                    folder: Path) -> tuple[Proposal | None, Usage]:
        """Show the proposer why its change crashed; (a usable fix or None, what the ask cost)."""
        ctx = self.context(n, train_py=crashed.train_py, feedback=_feedback(trained.reason, self.paths.log(n, 1)))
        self.view.phase(n, "fixing")
        base = self.workspace.head()  # the crashed commit
        try:
            fix = self.proposer.propose(ctx)
            self.only_train_py_changed(fix, base)
            if fix.train_py == crashed.train_py:
                raise ProposerError("the fix leaves train.py unchanged", fix.usage, fix.raw)
        except ProposerError as err:
            self.workspace.revert_to(base)  # undo what an agent left half-done (commits too)
            record["attempts"].append({"fix": attempt, "error": str(err), "raw": _clip(err.raw),
                                       "usage": asdict(err.usage)})
            return None, err.usage
        # run.log is always the attempt the row describes: the crashed one, unless a fix runs.
        self.paths.log(n, 1).rename(folder / f"run.crash{attempt}.log")
        record["attempts"].append(_proposal_record(fix, ctx, fix=attempt))
        return fix, fix.usage

    # -- the steps -----------------------------------------------------------------------------

    def context(self, n: int, train_py: str | None = None, feedback: str | None = None,
                phase: bool = True) -> Context:
        """A fresh context: nothing carries over from the last call but the rows."""
        if phase:
            self.view.phase(n, "context")
        program = Path(self.config.repo_root) / "program.md"
        return Context(
            program=program.read_text() if program.is_file() else "",
            train_py=train_py if train_py is not None else self.workspace.read(),
            lab_contract=lab_contract((self.workspace.path / "prepare.py").read_text()),
            history=self.ledger.history(),
            best={"commit": self.best.commit, "experiment": self.best.experiment, "val_bpb": self.best.mean,
                  "trials": len(self.best.values)},
            noise=self.ledger.noise().sigma,
            workdir=self.workspace.path,
            experiment=n,
            profile=self.profile(),
            feedback=feedback,
        )

    def propose_until_usable(self, ctx: Context, record: dict, folder: Path) -> Proposal | None:
        """Ask until the proposer gives a usable change; pause after too many failures in a row.
        Returns None when a limit (hours, cost) is reached meanwhile."""
        cfg = self.config
        while True:
            self.view.phase(ctx.experiment, "proposing")
            try:
                proposal = self.proposer.propose(ctx)
                self.view.phase(ctx.experiment, "checking")
                self.only_train_py_changed(proposal, self.best.commit)
                if proposal.train_py == ctx.train_py:
                    raise ProposerError("the proposal leaves train.py unchanged", proposal.usage, proposal.raw)
            except ProposerError as err:
                self.workspace.revert_to(self.best.commit)
                self.proposal_failed(ctx.experiment, err, record, folder)
                if self.limit_reached():
                    return None
                if self.failures_in_a_row >= cfg.max_consecutive_proposer_failures:
                    self.pause()
                continue
            self.failures_in_a_row = 0
            self.pauses = 0
            record["attempts"].append(_proposal_record(proposal, ctx))
            return proposal

    def proposal_failed(self, n: int, err: ProposerError, record: dict, folder: Path) -> None:
        """A failed ask: counted (in a row, and its cost in run.json) and kept in proposal.json."""
        self.failures_in_a_row += 1
        self.save_state(
            failed_proposals=int(self.state.get("failed_proposals") or 0) + 1,
            proposal_cost_usd=float(self.state.get("proposal_cost_usd") or 0) + err.usage.cost_usd,
        )
        record["failures"].append({"error": str(err), "raw": _clip(err.raw), "usage": asdict(err.usage)})
        self.view.failed_cost(float(self.state.get("proposal_cost_usd") or 0))
        _write_json(folder / "proposal.json", record)
        self.view.note(f"[{n:04d}] proposer failed ({self.failures_in_a_row} in a row): {err}")

    # -- speculation (scheduler.py) ------------------------------------------------------------

    def speculate(self, running: Change, spent: float = 0.0) -> None:
        """While `running` trains, ask for the next idea against the current best, unless a
        limit would keep it from being trained (no proposal is asked past --max-experiments).
        `spent`: what the running idea cost, not in a row yet."""
        cfg = self.config
        if not self.speculating or self.speculator.busy or self.limit_reached():
            return
        if cfg.max_cost is not None and self.total_cost() + spent >= cfg.max_cost:
            return
        if cfg.max_experiments is not None and len(self.ledger.experiments()) + 2 > cfg.max_experiments:
            return  # the running one and the next would pass the limit
        base = self.best.commit or self.base_short
        entry = {"experiment": running.number, "commit": running.commit, "parent": running.parent,
                 "status": "running", "description": running.description, "hypothesis": running.hypothesis,
                 "proposer": running.proposer, "val_bpb": None, "trials": 0}
        ctx = self.context(running.number + 1, train_py=self.workspace.read_at(base), phase=False)
        ctx.history = [*ctx.history, entry]
        try:
            self.speculator.start(ctx, base, ctx.train_py, self.workspace.path)
        except ProposerError as err:  # git could not make the scratch worktree: just ask later
            self.view.note(f"[{running.number + 1:04d}] no speculative proposal: {err}")

    def prepared_idea(self, n: int, record: dict, folder: Path) -> tuple[Proposal | None, str]:
        """The idea asked for while the last experiment trained, fit for the current best:
        (proposal, how) or (None, how) when the proposer must be asked now (scheduler.py)."""
        if not self.speculator.busy:
            return None, "fresh"
        self.view.phase(n, "proposing")
        prepared = self.speculator.take()
        if prepared.error is not None:
            self.proposal_failed(n, prepared.error, record, folder)
            if self.failures_in_a_row >= self.config.max_consecutive_proposer_failures:
                self.pause()
            return None, "failed-asked-again"
        proposal = prepared.proposal
        entry = {**_proposal_record(proposal, prepared.ctx), "speculative": True, "base": prepared.base}
        best = self.best.commit or self.base_short
        if prepared.base == best:
            self.failures_in_a_row = self.pauses = 0
            record["attempts"].append(entry)
            return proposal, "used"
        best_py = self.workspace.read_at(best)
        merged = rebase_train_py(prepared.base_train_py, best_py, proposal.train_py)
        if merged is not None and merged != best_py:
            self.failures_in_a_row = self.pauses = 0
            record["attempts"].append({**entry, "rebased_onto": best, "train_py": merged})
            proposal.train_py = merged
            return proposal, "rebased"
        record["discarded"] = {**entry, "why": f"built on {prepared.base}; its change overlaps or does not "
                                               f"merge with the new best {best}"}
        self.save_state(proposal_cost_usd=float(self.state.get("proposal_cost_usd") or 0) + proposal.usage.cost_usd)
        self.view.failed_cost(float(self.state.get("proposal_cost_usd") or 0))
        _write_json(folder / "proposal.json", record)
        return None, "discarded-asked-again"

    def drop_speculation(self) -> None:
        """The run ends (a limit, Ctrl-C): stop the ask in flight; its cost still counts."""
        spent = self.speculator.cancel()
        if spent.cost_usd and self.state:
            self.save_state(proposal_cost_usd=float(self.state.get("proposal_cost_usd") or 0) + spent.cost_usd)

    def pause(self) -> None:
        """Too many proposer failures in a row (API down, out of credit): wait, then try again."""
        cfg = self.config
        seconds = min(cfg.pause_max_seconds, cfg.pause_seconds * 2**self.pauses)
        self.pauses += 1
        self.failures_in_a_row = 0
        self.save_state(state="paused")
        self.view.note(
            f"paused: the proposer failed {cfg.max_consecutive_proposer_failures} times in a row; "
            f"trying again in {seconds:g} s (Ctrl-C stops; resume later with --resume)"
        )
        self.view.phase(None, "paused", timeout=seconds)
        pause_sleep(seconds)
        self.save_state(state="running")

    def only_train_py_changed(self, proposal: Proposal | None, base: str) -> None:
        """A proposer (an external agent) that touched any other path, or made train.py a link,
        is a failed proposal. Commits it made on the branch (`base` before it ran) are undone
        first, keeping the files, so that they cannot hide what it changed."""
        usage = proposal.usage if proposal else Usage()
        self.workspace.rewind(base)
        train = self.workspace.path / "train.py"
        if train.is_symlink() or not train.is_file():
            raise ProposerError("the proposer replaced train.py with a symlink or a non-file; it must stay a file", usage)
        stray = self.workspace.stray_changes(allow=("train.py",))
        if stray:
            raise ProposerError("the proposer changed files other than train.py: " + _names(stray), usage)

    def apply(self, n: int, proposal: Proposal) -> str:
        self.view.phase(n, "committing")
        self.workspace.write_train_py(proposal.train_py)
        message = f"{_one_line(proposal.description)}\n\n{proposal.hypothesis}\n\nExperiment: {n}\n"
        return self.workspace.short(self.workspace.commit(message))

    def train(self, n: int, trial: int, model: Path | None = None) -> RunResult:
        """One training run: sandboxed when the session has a sandbox, told where to hand its
        model over when the audit is on."""
        budget, timeout = self.budget_and_timeout()
        self.view.phase(n, "training", budget=budget, timeout=timeout)
        env = self.training_env(trial)
        if model is not None:
            env[HANDOFF_ENV] = str(model.resolve())
        for name, folder in compile_cache_dirs(env).items():  # a sandbox's own setting wins
            env.setdefault(name, folder)
        command = self.trust.command(self.config.training_command or [sys.executable, "train.py"],
                                     self.workspace.path, self.paths.run_dir(n))
        started = time.monotonic()
        try:
            return run_training(self.workspace.path, self.paths.log(n, trial), timeout, env,
                                command=command, pid_file=self.paths.training)
        finally:
            self.last_run = (time.monotonic() - started, started - self.gpu_free_since)
            self.gpu_free_since = time.monotonic()

    def train_and_check(self, n: int, trial: int, folder: Path) -> "Trained":
        """Train the worktree's commit; anything the run wrote or changed besides train.py (a
        file, a commit or checkout on the run branch, the run's own records) makes it a crash
        and is undone."""
        folder.mkdir(parents=True, exist_ok=True)
        trained = self.workspace.head()
        # train.py runs as the user and can reach ../../../results/<tag>/: keep what we wrote.
        guarded = (self.ledger.path, self.paths.state, self.ledger.numbers_path)
        records = {path: read_bytes(path) for path in guarded}
        model = model_path(folder, trial) if self.trust.audit else None
        self.trust.before_run(model)
        try:
            result = self.train(n, trial, model)
        finally:
            watched, cache_changed = self.trust.after_run()  # also ends the held-out watch
        self.view.phase(n, "checking")
        reasons = [f"modified {path.name} (restored)" for path, data in records.items() if restore_bytes(path, data)]
        reasons += watched  # a held-out read (unsandboxed), a changed cache file
        if not self.workspace.at(trained):
            reasons.append("changed the run branch (a git commit or checkout in the worktree)")
        elif stray := self.workspace.stray_changes():
            reasons.append(_stray_reason(stray, self.workspace))
        if reasons:
            self.workspace.revert_to(trained)
        return judge_run(result, reasons, cache_changed, model)

    def make_row(self, change: Change, trial: int, role: str, status: str, reason: str, result: RunResult,
                 usage: Usage, started_at: str, t0: float, verdict: Verdict | None) -> Row:
        # train.py is the proposer's to edit: a summary value that is not a finite number (say
        # `training_seconds: 300s`) is left empty instead of breaking results.tsv.
        m = {key: _finite(value) for key, value in result.metrics.items()} if status != "crash" else {}
        steps = m.get("num_steps")
        decided = verdict is not None
        return Row(
            commit=change.commit,
            val_bpb=m.get("val_bpb") or 0.0,
            memory_gb=(m.get("peak_vram_mb") or 0.0) / 1024,
            status=status,
            description=change.description,
            experiment=change.number,
            hypothesis=change.hypothesis,
            proposer=change.proposer,
            model=change.model,
            reason=reason,
            training_seconds=m.get("training_seconds"),
            total_seconds=m.get("total_seconds"),
            num_steps=int(steps) if steps is not None and steps.is_integer() else None,
            mfu_percent=m.get("mfu_percent"),
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cost_usd=usage.cost_usd,
            started_at=started_at,
            wall_seconds=time.monotonic() - t0,
            parent=change.parent,
            role=role,
            trial=trial,
            seed=SEED + trial - 1,
            mean_val_bpb=round(verdict.mean, 6) if decided else None,
            delta=round(verdict.delta, 6) if decided and not change.baseline else None,
            sigma=verdict.sigma if decided else None,
        )

    # -- small helpers -------------------------------------------------------------------------

    def fresh_run_dir(self, n: int) -> Path:
        folder = self.paths.run_dir(n)
        if folder.exists():  # an experiment that died before its row: redo it from scratch
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        return folder

    def profile(self) -> str:
        if not self._profile:
            self._profile = self.config.profile or os.environ.get("AUTORESEARCH_PROFILE") or detect_profile()
        return self._profile

    def budget_and_timeout(self) -> tuple[float, float]:
        cfg = self.config
        budget = cfg.time_budget or _env_float("AUTORESEARCH_TIME_BUDGET") or lab_time_budget(
            (self.workspace.path / "prepare.py").read_text(), self.profile()
        )
        return budget, cfg.timeout or budget + max(budget, 120.0)

    def training_env(self, trial: int = 1) -> dict[str, str]:
        """The user's environment without credentials, plus the lab's variables (lab_env)."""
        return training_env(os.environ, self.lab_env(trial))

    def lab_env(self, trial: int = 1) -> dict[str, str]:
        """The lab's variables (named here, as the credential filter would drop
        AUTORESEARCH_EVAL_TOKENS for its TOKEN), and the trial's seed: repeats of one commit
        measure run-to-run variation, not one run twice."""
        cfg = self.config
        extra = {name: os.environ[name] for name in LAB_VARIABLES if os.environ.get(name)}
        extra["AUTORESEARCH_SEED"] = str(SEED + trial - 1)
        extra.update(cfg.extra_env)
        if cfg.profile:
            extra["AUTORESEARCH_PROFILE"] = cfg.profile
        if cfg.time_budget:
            extra["AUTORESEARCH_TIME_BUDGET"] = f"{cfg.time_budget:g}"
        return extra


def run_from_cli(**options) -> int:
    """`autoresearch run`: resolve the options (config.from_cli), run, return the exit code."""
    return run(from_cli(**options)).exit_code  # the view has shown how it ended


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def judge_run(result: RunResult, reasons: list[str], cache_changed: bool, model: Path | None) -> Trained:
    """A finished training as the loop judges it: a crash for what it did (`reasons`), for how
    it ended, or for its val_bpb; otherwise ok, to be judged against the best by settle()."""
    if reasons:
        return Trained(result, "crash", "; ".join(reasons), cache_changed=cache_changed)
    if result.status != "ok":
        return Trained(result, "crash", result.reason or result.status,
                       fixable=result.status in ("crash", "diverged"))
    val = result.metrics.get("val_bpb")
    if not isinstance(val, (int, float)) or not math.isfinite(val):
        return Trained(result, "crash", f"val_bpb is {val}")
    return Trained(result, "ok", "", val_bpb=float(val), model=model)


def compile_cache_dirs(env: dict[str, str]) -> dict[str, str]:
    """torch.compile's caches under the lab's cache root, kept across experiments: most of a
    candidate's graphs are the best's, so Inductor and Triton reuse their compiled kernels
    instead of paying the compile again every 5 minutes. Created here (the training may not
    be able to create folders: a sandbox)."""
    root = Path(env.get("AUTORESEARCH_CACHE") or Path.home() / ".cache" / "autoresearch").expanduser() / "compile"
    dirs = {"TORCHINDUCTOR_CACHE_DIR": root / "inductor", "TRITON_CACHE_DIR": root / "triton"}
    for folder in dirs.values():
        folder.mkdir(parents=True, exist_ok=True)
    return {name: str(folder) for name, folder in dirs.items()}


def _env_float(name: str) -> float | None:
    try:
        return float(os.environ[name])
    except (KeyError, ValueError):
        return None


def _finite(value) -> float | None:
    """A summary value as a finite float, or None (text, nan, inf)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "(no description)"


def _clip(text: str, limit: int = 20_000) -> str:
    text = text or ""
    return text if len(text) <= limit else text[:limit] + f"\n... ({len(text) - limit} more characters)"


def _feedback(reason: str, log: Path) -> str:
    tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:] if log.exists() else []
    return (
        f"The last attempt of this change crashed: {reason}.\n"
        f"The last {len(tail)} lines of its log:\n" + "\n".join(tail) + "\n"
        "Fix the cause with the smallest edit; keep the idea."
    )


def _stray_reason(stray: list[str], workspace: Workspace) -> str:
    """`modified prepare.py`, `wrote files: a, b`, or both."""
    tracked = set(workspace.repo.git.ls_files("-z", "--", *stray[:1000]).split("\0")) - {""}
    modified = [p for p in stray if p in tracked]
    written = [p for p in stray if p not in tracked]
    parts = (["modified " + _names(modified)] if modified else []) + (
        ["wrote files: " + _names(written)] if written else []
    )
    return "; ".join(parts)


def _names(paths: list[str], shown: int = 5) -> str:
    more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
    return ", ".join(paths[:shown]) + more


def _proposal_record(proposal: Proposal, ctx: Context, fix: int = 0) -> dict:
    return {
        "fix": fix,
        "feedback": ctx.feedback,
        "hypothesis": proposal.hypothesis,
        "description": proposal.description,
        "model": proposal.model,
        "edit_attempts": proposal.attempts,
        "usage": asdict(proposal.usage),
        "prompt": proposal.prompt,
        "raw": proposal.raw,
        "train_py": proposal.train_py,
    }


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------
# Signals: SIGTERM (and SIGHUP) stop the run like Ctrl-C
# ---------------------------------------------------------------------------

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def stop_signals_as_interrupt():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        old = signal.getsignal(sig)
        if old is not signal.SIG_IGN:  # nohup's ignored SIGHUP stays ignored
            previous[sig] = signal.signal(sig, _raise_interrupt)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _ignore_stop_signals() -> dict:
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}


def _restore_signals(previous: dict) -> None:
    for sig, old in previous.items():
        signal.signal(sig, old)
