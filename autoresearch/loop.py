"""The experiment loop: propose one change to train.py, train it, keep it if it is better beyond
the noise (docs/keep_rule.md). One algorithm for one worker and for many: the sequential run is
this loop with a pool of one.

    until a limit:                                                        (Run.loop)
        collect  finished asks (ideas, fixes) and trainings (checked: tampering, the cache)
        settle   each finished trial whose base has its verdict: decide -> audit a keep ->
                 the row (the commit point) -> the branch -> maybe a combination
        launch   on every free worker: a rerun, a fix, a combination, a confirm or baseline
                 repeat, else the oldest idea (rebased if the best moved)
        ask      one idea per idle worker, or one per worker ahead when the proposer is slow

A candidate is judged against the commit it was built on; a win over a best that has moved since
is re-measured as a combination (docs/ray.md). Crash consistency (docs/reliability.md): a
trial's artefacts are written first, then its fsynced row (the commit point), then the branch
moves; every start moves the branch to the best the rows name. Numbers are never reused.
"""

import os
import shutil
import time
from pathlib import Path

from autoresearch import opening, proposal_log
from autoresearch.asking import Asking, Idea, Prepared, Retry, rebase_files, speculation_label, wants_an_ask
from autoresearch.config import RunConfig, from_cli
from autoresearch.decide import Decision, Trained, decide, judge_run, refused, tamper_reasons
from autoresearch.errors import AutoresearchError
from autoresearch.html_report import write_html_report
from autoresearch.keep_rule import Noise, pooled_noise
from autoresearch.lab import LabSettings
from autoresearch.ledger import Best, Ledger
from autoresearch.live import View, make_view
from autoresearch.proposers import Context, ProposerError, Usage
from autoresearch.records import RunLock, RunState
from autoresearch.gpus import check_workers, pin_env
from autoresearch.runner import training_defaults, training_env
from autoresearch.trainers import TrainJob, TrainOutput
from autoresearch.tracking import NoTracking, open_tracking
from autoresearch.trials import (Change, Launch, RunPaths, baseline_change, baseline_crashed, commit_message,
                                 make_row, running_entries)
from autoresearch.trust import HANDOFF_ENV, Audited, drop_models, model_path, rebuild_hint
from autoresearch import target as targets

RunOutcome = opening.RunOutcome
__all__ = ["RunConfig", "RunOutcome", "run", "run_from_cli"]

POLL_SECONDS = 0.2  # how often the loop looks at asks in flight while it waits for trainings
MAX_RERUNS = 2  # a trial whose worker was lost runs again elsewhere this many times, then is a crash
MODEL_FILE = "model.pt2"  # the handoff's name in a job's output folder


def run(config: RunConfig, proposer=None, view: View | None = None, pool=None) -> RunOutcome:
    """Run experiments until a limit is reached or the user stops it. Bad setup raises
    AutoresearchError before anything is created. `proposer`, `view` and `pool` default to the
    configured backend, make_view() and the configured workers."""
    paths = RunPaths(config.repo_root, config.tag)
    opening.check_start(config, RunState.load(paths.state))  # before results/<tag>/ is created
    target = opening.load_declared(config)  # None: the lab; bad autoresearch.toml: one line, nothing made
    built = proposer is None
    if built:
        from autoresearch.proposers import get_proposer

        proposer = get_proposer(config.proposer, config.options)
    check_workers(config)  # --ray imports, --gpus resolves and torch sees it: before anything exists
    if config.preflight:  # one line naming the fix, before results/<tag>/ exists or anything trains
        from autoresearch.doctor_target import preflight_run

        preflight_run(config, target, config.proposer if built else None)
    view = view or make_view(config.tag)
    paths.dir.mkdir(parents=True, exist_ok=True)
    tracking = open_tracking(config.track, paths.dir, config.tag, view.note)  # --track: an observer, never raises
    try:
        with opening.stop_signals_as_interrupt(), RunLock(paths.lock):
            night = Run(config, proposer, view, paths, pool, tracking, target)
            try:
                night.start()
                return night.loop()
            except KeyboardInterrupt:
                return night.stop()
            except BaseException:
                night.clean_up()  # a bug or a bad setup: still leave no training, no half change
                raise
    finally:
        tracking.close()  # waits a little for the last rows; a failure was one warning line
        view.close()


def run_from_cli(**options) -> int:
    """`autoresearch run`: resolve the options (config.from_cli), run, return the exit code."""
    return run(from_cli(**options)).exit_code  # the view has shown how it ended


class Run(opening.Lifecycle):
    """One invocation of `autoresearch run` on one tag. It alone writes the record (through the
    Ledger), moves the branch (the Workspace) and asks the proposer (Asking); workers only train."""

    def __init__(self, config: RunConfig, proposer, view: View, paths: RunPaths, pool=None, tracking=None,
                 target=None):
        self.config, self.proposer, self.view, self.paths = config, proposer, view, paths
        self.tracking = tracking or NoTracking()  # --track: MLflow / W&B, an observer of the rows
        self.target = target  # a declared target (target.Target), or None: the nanochat lab
        self.edit = target.edit if target is not None else ("train.py",)  # what a proposal may change
        self.ledger = Ledger(paths.dir, target.metric if target is not None else "val_bpb")
        self.pool = pool  # made in start() unless given (tests)
        scratch = Path(config.repo_root) / ".autoresearch" / "scratch" / config.tag
        self.asking = Asking(proposer, scratch, config.max_consecutive_proposer_failures, config.pause_seconds,
                             config.pause_max_seconds, self.ledger, view, paths.run_dir, edit=self.edit,
                             fixed_is_crash=target is not None)
        self.speculating = config.speculate and proposer.speculative
        self.workers_root = Path(config.repo_root) / ".autoresearch" / "workers" / config.tag
        self.workspace = self.trust = None
        self.base = self.base_short = ""
        self.lab: LabSettings | None = None  # resolved in start()
        self.best = Best("", None)
        self.started = time.monotonic()
        self.running: dict = {}  # pool handle -> Launch
        self.queue: list[Launch] = []  # to launch before anything new: reruns, fixes, combinations
        self.parked: list[tuple[Launch, Trained]] = []  # finished, waiting for the rows before them
        self.open_numbers: set[int] = set()  # handed out, no row yet
        self.speculation: dict[int, str] = {}  # experiment -> how its idea came (results column)
        self.worker_free_since: dict[str, float] = {}
        self.watching = False  # one worker, unsandboxed: the held-out watch is on while it trains

    # -- the algorithm -------------------------------------------------------------------------

    def loop(self) -> RunOutcome:
        while True:
            self.collect()
            self.settle_ready()
            why = self.hard_limit()
            if why:  # nothing new starts; what trains finishes and is recorded
                self.wind_down()
                if not self.running:
                    self.drop_parked()
                    return self.finish(why)
            else:
                if self.pool.size == 0:
                    raise AutoresearchError("no worker is left (every GPU went away); see the notes above, then "
                                            f"resume with: autoresearch run --tag {self.config.tag} --resume")
                if self.all_done():  # before launching: --max-experiments 0 starts nothing, not even the baseline
                    return self.finish(f"--max-experiments {self.config.max_experiments}")
                self.launch_work()
                self.ask_for_ideas()
            self.wait()

    def hard_limit(self) -> str | None:
        """--max-hours, --max-cost, or a proposer with nothing left to try (and nothing in flight)."""
        cfg = self.config
        if cfg.max_hours is not None and time.monotonic() - self.started >= cfg.max_hours * 3600:
            return f"--max-hours {cfg.max_hours:g}"
        if cfg.max_cost is not None and self.ledger.total_cost() >= cfg.max_cost:
            return f"--max-cost {cfg.max_cost:g} (spent ${self.ledger.total_cost():.4f})"
        if self.asking.exhausted and not self.in_flight() and not self.ledger.undecided():
            return "the proposer has nothing left to try"
        return None

    def room(self) -> int | None:
        """New experiments that may still start under --max-experiments (None: no limit)."""
        if self.config.max_experiments is None:
            return None
        return self.config.max_experiments - len(self.ledger.experiments()) - len(self.open_numbers)

    def all_done(self) -> bool:
        room = self.room()
        return (room is not None and room <= 0 and not self.running and not self.queue and not self.parked
                and not self.asking.in_flight and not self.asking.ready and not self.asking.retry
                and not self.ledger.undecided())

    def in_flight(self) -> list[Launch]:
        return [*self.running.values(), *self.queue, *(launch for launch, _ in self.parked),
                *(ask.crashed[0] for ask in self.asking.in_flight if ask.crashed is not None)]

    def wait(self) -> None:
        if self.running:
            self.pool.wait(timeout=POLL_SECONDS)
            return
        if self.asking.in_flight:
            self.asking.wait(POLL_SECONDS)
        else:
            time.sleep(POLL_SECONDS / 4 if self.asking.paused else POLL_SECONDS / 20)

    # -- launching -----------------------------------------------------------------------------

    def launch_work(self) -> None:
        while self.pool.free > 0:
            launch = self.next_launch()
            if launch is None:
                return
            self.submit(launch)

    def next_launch(self) -> Launch | None:
        if self.queue:
            return self.queue.pop(0)
        launch = self.pending_trial()
        if launch is not None:
            return launch
        fixes = sum(ask.kind == "fix" for ask in self.asking.in_flight)  # each will want a worker first
        while self.asking.ready and self.pool.free > fixes:
            launch = self.launch_idea(self.asking.ready.pop(0))
            if launch is not None:
                return launch
        return None

    def pending_trial(self) -> Launch | None:
        """A confirm or baseline repeat (the baseline's all at once), or the baseline's first trials."""
        busy: dict[int, set] = {}
        for launch in self.in_flight():
            busy.setdefault(launch.change.number, set()).add(launch.trial)
        for exp in self.ledger.undecided():
            first = exp.first
            change = Change(exp.number, exp.commit, first.parent, first.description, first.hypothesis,
                            first.proposer, first.model, baseline=first.role == "baseline")
            if change.baseline:
                trial = len(exp.rows) + 1 + len(busy.get(exp.number, ()))
                if trial <= self.config.baseline_repeats or exp.number not in busy:
                    return Launch(change, trial)  # (past the repeats: one more decides it)
            elif exp.number not in busy:
                return Launch(change, len(exp.rows) + 1)
        if self.best.experiment is None and not any(e.first.role == "baseline" and not e.decided
                                                    for e in self.ledger.experiments()):
            return self.baseline_launch()  # (a crashed baseline, resumed: trained again)
        return None

    def baseline_launch(self) -> Launch | None:
        started = [launch for launch in self.in_flight() if launch.change.baseline]
        if started:
            trial = max(launch.trial for launch in started) + 1
            return Launch(started[0].change, trial) if trial <= self.config.baseline_repeats else None
        n = self.new_number()
        self.write_proposal(baseline_change(n, self.base_short), {"experiment": n, "proposer": "baseline",
                                                                  "attempts": []})
        return Launch(baseline_change(n, self.base_short), 1)

    def launch_idea(self, idea: Idea) -> Launch | None:
        """The idea as a candidate on the current best (rebased when the best moved since it was
        asked for); None when it overlaps the new best: counted, and asked for again."""
        prepared, record, n = idea.prepared, idea.record, idea.number
        proposal = prepared.proposal
        entry = {**proposal_log.proposal_record(proposal, prepared.ctx), "base": prepared.base}
        best = self.best.commit or self.base_short
        rebased = prepared.base != best
        files = dict(proposal.files)
        if rebased:
            best_files = self.files_at(best)
            merged = rebase_files(prepared.ctx.files, best_files, files)
            if merged is None or {**best_files, **merged} == best_files:
                record["discarded"] = {**entry, "why": f"built on {prepared.base}; its change overlaps or does not "
                                                       f"merge with the new best {best}"}
                self.spend(proposal.usage.cost_usd)
                proposal_log.write_json(self.paths.run_dir(n) / "proposal.json", record)
                self.asking.retry.append(Retry(n, record, "discarded-asked-again"))
                return None
            entry = {**entry, "rebased_onto": best, **({"train_py": merged["train.py"]} if "train.py" in merged
                                                         else {"files": merged})}
            files = merged
        record["attempts"].append(entry)
        record["speculation"] = self.speculation[n] = speculation_label(idea.while_training, rebased, idea.again)
        commit = self.workspace.commit_on(best, files, commit_message(proposal.description, proposal.hypothesis, n))
        change = Change(n, commit, best, proposal.description, proposal.hypothesis, self.proposer.name, proposal.model)
        self.write_proposal(change, record)
        launch = Launch(change, 1, proposal.usage, record=record, proposal=proposal)
        if prepared.fixed_changed:  # a declared target's fixed file: a crash row at once, never trained
            self.settle(launch, refused(f"the proposal changed fixed file {', '.join(prepared.fixed_changed)} "
                                        "(not applied, not trained)", self.paths.log(n, 1)))
            return None
        return launch

    def write_proposal(self, change: Change, record: dict) -> None:
        folder = self.paths.run_dir(change.number)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "diff.patch").write_text(self.workspace.diff(change.parent, change.commit) if not change.baseline
                                           else "")
        proposal_log.write_json(folder / "proposal.json", record)

    def submit(self, launch: Launch) -> None:
        n, trial = launch.key
        env = self.lab.env(trial)
        env.update(training_defaults({**os.environ, **env}))  # caches, allocator, device order (runner.py)
        if self.target is None:
            job = TrainJob(n, trial, self.workspace.read_at(launch.change.commit), self.lab_files, env, self.lab.timeout,
                           command=self.config.training_command,
                           outputs={HANDOFF_ENV: MODEL_FILE} if self.trust.audit else {})
        else:  # the whole tree: the fixed files of the run's base, the candidate's edit files
            job = TrainJob(n, trial, None, self.tree_at(launch.change.commit), env, self.target.timeout,
                           command=self.target.argv())
        if self.watching:
            self.trust.before_run(None)
        self.running[self.pool.submit(job)] = launch
        self.view.phase(n, "training", budget=self.lab.budget, timeout=self.lab.timeout)

    # -- collecting ----------------------------------------------------------------------------

    def collect(self) -> None:
        for ask, prepared in self.asking.finished():
            self.asked(ask, prepared)
        for handle in [h for h in self.running if h.done]:
            launch = self.running.pop(handle)
            launch.gpu = getattr(getattr(handle.slot, "trainer", None), "gpu", None)
            self.trained(launch, self.pool.result(handle))

    def trained(self, launch: Launch, output: TrainOutput) -> None:
        n, trial = launch.key
        if output.result.status == "cancelled":
            return
        now = time.monotonic()
        idle_from = self.worker_free_since.get(output.worker, self.started)
        self.worker_free_since[output.worker] = now
        launch.timing = (output.result.seconds, max(0.0, now - output.result.seconds - idle_from))
        if output.lost:
            again = "; it runs again on another worker" if launch.reruns < MAX_RERUNS else ""
            self.view.note(f"[{n:04d}] trial {trial} lost on {output.worker or 'a worker'}: {output.lost_reason}{again}")
            if launch.reruns < MAX_RERUNS:
                launch.reruns += 1
                self.queue.insert(0, launch)
                return
            output.save_log(self.paths.log(n, trial))
            trained = Trained(output.result, "crash", f"lost {launch.reruns + 1} times: {output.lost_reason}")
        else:
            trained = self.check(launch, output)
        if (trained.fixable and trial == 1 and not launch.change.baseline and launch.proposal is not None
                and launch.fixes < self.config.max_fix_attempts and self.proposer.can_fix and not self.hard_limit()):
            self.ask_fix(launch, trained)
            return
        self.parked.append((launch, trained))  # not the output: its artefacts can be GBs

    def check(self, launch: Launch, output: TrainOutput) -> Trained:
        """Anything the run changed besides its own output makes it a crash: a lab file in its
        folder, the run's records (restored), a held-out read, the lab's cache."""
        n, trial = launch.key
        result = output.save_log(self.paths.log(n, trial))
        reasons = [f"modified {name} (restored)" for name in self.ledger.restore()]
        reasons += tamper_reasons(output.changed, {*self.fixed_files, *self.lab_files, *self.edit}, self.target is None)
        if self.watching:
            watched, cache_changed = self.trust.after_run()
        else:
            watched = self.trust.cache_changes(full=False)
            cache_changed = bool(watched)
        reasons += watched
        model = model_path(self.paths.run_dir(n), trial) if self.trust.audit else None
        if model is not None:
            model.unlink(missing_ok=True)  # an earlier attempt's is not this run's
        if model is not None and not reasons and MODEL_FILE in output.artefacts:
            model.write_bytes(output.artefacts[MODEL_FILE])  # none handed over: the audit says so
        log = output.log.decode("utf-8", "replace") if self.target is not None else ""
        return judge_run(result, reasons, cache_changed, model, self.target, log)

    # -- settling ------------------------------------------------------------------------------

    def settle_ready(self) -> None:
        """Settle, in trial order, every parked trial whose rows before it are recorded and whose
        base (the baseline, for the first candidates) has its verdict."""
        progress = True
        while progress:
            progress = False
            for item in list(self.parked):
                if self.ready_to_settle(item[0]):
                    self.parked.remove(item)
                    self.settle(*item)
                    progress = True
                    break

    def ready_to_settle(self, launch: Launch) -> bool:
        rows = [r for r in self.ledger.rows() if r.experiment == launch.change.number]
        return len(rows) == launch.trial - 1 and (launch.change.baseline or self.base_of(launch.change) is not None)

    def base_of(self, change: Change) -> Best | None:
        """The kept commit `change` was built on, with its trials; None while it has no verdict."""
        for exp in reversed(self.ledger.experiments()):
            if exp.decided and exp.status == "keep" and exp.commit == change.parent:
                return Best(exp.commit, exp.number, tuple(exp.values))
        if change.parent == self.base_short and self.best.experiment is None:
            return None  # the baseline is still being measured
        return self.best  # an older run's row without its base: judged against today's best

    def settle(self, launch: Launch, trained: Trained) -> None:
        """Decide the trial, audit a keep, write the row, and follow it: branch, combination."""
        change, trial = launch.change, launch.trial
        earlier = [float(r.val_bpb) for r in self.ledger.rows() if r.experiment == change.number and r.measured]
        if launch.record is not None and trained.status != "ok":
            proposal_log.write_json(self.paths.run_dir(change.number) / "proposal.json", launch.record)
        decision = self.decide(change, trained, earlier, trial)
        audited = None
        if decision.status == "keep":
            decision, audited = self.audit(launch, trained, earlier, decision)
        reason = decision.reason
        if decision.combine:
            reason += "; " + self.plan_combination(change, self.best.commit)
        usage = launch.usage if trial == 1 else Usage()
        row = make_row(change, trial, decision.status, reason, trained.result, usage, launch.started_at,
                       time.monotonic() - launch.t0, decision.verdict, self.target.recorded if self.target else ())
        self.trust.mark(row, audited, watched=self.watching, remote=self.config.ray is not None)
        self.record(row, launch)
        drop_models(self.paths.run_dir(change.number), keep=trained.model if decision.status == "keep" else None)
        if trained.cache_changed:
            raise AutoresearchError(f"the lab's cache changed during experiment {change.number} ({trained.reason}); "
                                    f"{rebuild_hint(self.trust.lab)}")
        if change.baseline and decision.status == "crash":
            raise AutoresearchError(baseline_crashed(reason, self.paths.log(change.number, trial), self.config.tag,
                                                     self.target is not None))

    def decide(self, change: Change, trained: Trained, earlier: list[float], trial: int) -> Decision:
        base = None if change.baseline else self.base_of(change)
        moved = None if change.baseline or change.parent == self.best.commit else self.best.commit
        cfg = self.config
        return decide(trained, earlier, trial, baseline=change.baseline, parent=change.parent,
                      base=base.values if base else (), moved_to=moved,
                      noise=self.noise(change.number, [*earlier, trained.val_bpb]), rule=cfg.keep_rule,
                      min_delta=self.target.min_delta if self.target is not None else cfg.min_delta,
                      baseline_repeats=cfg.baseline_repeats, direction=self.target.direction if self.target else "min")

    def noise(self, number: int, values: list[float]) -> Noise:
        """Pooled over every experiment recorded, this one counted with its newest trial."""
        return pooled_noise([*(e.values for e in self.ledger.experiments() if e.number != number), values])

    def audit(self, launch: Launch, trained: Trained, earlier: list[float],
              decided: Decision) -> tuple[Decision, Audited | None]:
        """A row about to be kept: the cache re-hashed, then its model re-evaluated by the base
        commit's prepare.py (trust.py), on a worker slot no training uses. A failure makes the row
        a crash; a pass decides again with the audited number (nothing gained inside the tolerance)."""
        changes = self.trust.cache_changes(full=True)
        if changes:
            trained.cache_changed, trained.reason = True, "; ".join(changes)
            return Decision("crash", trained.reason), None
        if not self.trust.audit:
            return decided, None
        self.view.phase(launch.change.number, "auditing")
        with self.pool.reserve(launch.gpu) as gpu:
            env = training_env(os.environ, self.lab.env(launch.trial))
            env.update(training_defaults(env))
            if gpu is not None:
                env.update(pin_env(gpu, env))  # in the order the workers are pinned in
            audited = self.trust.audit_keep(trained.model, trained.val_bpb, env, self.target and self.tree_at(
                launch.change.commit), self.paths.run_dir(launch.change.number) / "audit.log")
        if not audited.ok or audited.result.val_bpb is None:  # (a declared audit: a check, never re-decided)
            return (decided if audited.ok else Decision("crash", audited.reason)), audited
        trained.val_bpb = round(audited.result.val_bpb, 6)
        trained.result.metrics["val_bpb"] = trained.val_bpb
        return self.decide(launch.change, trained, earlier, launch.trial), audited

    def plan_combination(self, change: Change, best: str) -> str:
        """Re-apply `change` on `best` as a new experiment, if it merges; the row's explanation."""
        parent_files, best_files = self.files_at(change.parent), self.files_at(best)
        changed = {k: v for k, v in self.files_at(change.commit).items() if parent_files[k] != v}
        merged = rebase_files(parent_files, best_files, changed)
        if merged is None or {**best_files, **merged} == best_files:
            return "its change overlaps the new best's: not combined"
        room = self.room()
        if room is not None and room <= 0:
            return f"not combined (--max-experiments {self.config.max_experiments})"
        m = self.new_number()
        message = commit_message(f"{change.description} (on {best})", change.hypothesis, m,
                                 f"Combines: experiment {change.number} on {best}\n")
        commit = self.workspace.commit_on(best, merged, message)
        combined = Change(m, commit, best, change.description, change.hypothesis, change.proposer, change.model,
                          combines=change.number)
        self.write_proposal(combined, {"experiment": m, "proposer": change.proposer, "combines": change.number,
                                       "of": change.commit, "onto": best, "attempts": []})
        self.queue.insert(0, Launch(combined, 1))
        return f"re-applied on it as experiment {m}"

    def record(self, row, launch: Launch) -> None:
        """Append the row (the commit point), then move the branch to the best."""
        tampered = self.ledger.restore()
        if tampered:  # written while nothing was checked (an audit ran): restored before the append
            self.view.note(f"a training modified {', '.join(tampered)} meanwhile; restored")
        row.speculation = self.speculation.get(row.experiment, "") if row.trial == 1 else ""
        if launch.timing is not None:
            row.run_seconds, row.gpu_idle_seconds = (round(v, 1) for v in launch.timing)
        previous = self.best
        self.ledger.append(row)
        self.open_numbers.discard(row.experiment)
        self.best = self.ledger.best(self.base_short)
        if not self.workspace.at(self.best.commit):
            self.workspace.revert_to(self.best.commit)
        delta = None if previous.mean is None or not row.measured else float(row.val_bpb) - previous.mean
        self.view.row(row.as_dict(), delta, self.standing())
        write_html_report(self.paths.dir, warn=self.view.note)  # results/<tag>/report.html; never raises
        self.tracking.log_row(row.as_dict())  # MLflow / W&B (--track): queued, never raises

    # -- asking --------------------------------------------------------------------------------

    def ask_for_ideas(self) -> None:
        while not self.asking.paused and self.wants_an_ask():
            if self.asking.retry:
                retry = self.asking.retry.pop(0)
                n, record, again = retry.number, retry.record, retry.again
            else:
                n, again = self.new_number(), ""
                self.paths.run_dir(n).mkdir(parents=True, exist_ok=True)
                record = {"experiment": n, "proposer": self.proposer.name, "attempts": [], "failures": []}
            if not self.ask(n, record, again):
                return  # git could not make a scratch worktree: try again on the next turn

    def wants_an_ask(self) -> bool:
        busy = {launch.change.number for launch in self.in_flight()}
        cfg = self.config
        return wants_an_ask(
            speculating=self.speculating, workers=self.pool.size, free=self.pool.free,
            ideas=self.asking.ideas_wanted(), asking=bool(self.asking.in_flight),
            waiting=len(self.queue) + sum(exp.number not in busy for exp in self.ledger.undecided()), room=self.room(),
            retrying=bool(self.asking.retry),
            over_budget=cfg.max_cost is not None and self.committed_cost() >= cfg.max_cost)

    def committed_cost(self) -> float:  # spent, and what ideas in flight or ready cost (no row yet)
        pending = [launch.usage for launch in self.in_flight() if launch.trial == 1]
        return self.ledger.total_cost() + sum(u.cost_usd for u in [*pending, *(i.prepared.usage for i in self.asking.ready)])

    def ask(self, n: int, record: dict, again: str = "") -> bool:
        """Ask for experiment n's idea against the best as it stands, with what is running now
        in the history."""
        base = self.best.commit or self.base_short
        ctx = self.context(n, base)
        recorded = {exp.number for exp in self.ledger.experiments()}
        ctx.history += running_entries(self.in_flight(), self.asking.ready, recorded, self.proposer.name)
        try:
            self.asking.start("idea", n, record, ctx, base, ctx.train_py, self.workspace.path,
                              while_training=bool(self.running), again=again)
        except ProposerError as err:  # git could not make the scratch worktree
            self.asking.failed(n, err, record)
            self.asking.retry.append(Retry(n, record, again))
            return False
        self.view.phase(n, "proposing")
        return True

    def asked(self, ask, prepared: Prepared) -> None:
        if prepared.interrupted is not None:
            raise KeyboardInterrupt from prepared.interrupted
        if prepared.error is not None:
            if ask.kind == "fix":  # its cost goes on the crash's row
                self.fix_failed(ask.crashed, ask.record, prepared.error)
                return
            self.asking.failed(ask.number, prepared.error, ask.record)
            again = "failed-asked-again" if ask.while_training else ask.again
            self.asking.retry.append(Retry(ask.number, ask.record, again))  # asked again under its number
            return
        self.asking.succeeded()
        if ask.kind == "fix":
            self.fix_ready(ask.crashed, ask.record, prepared)
        else:
            self.asking.ready.append(Idea(ask.number, prepared, ask.record, ask.while_training, ask.again))

    # -- fixes ---------------------------------------------------------------------------------

    def ask_fix(self, launch: Launch, trained: Trained) -> None:
        """Show the proposer why its change crashed, in a scratch worktree of the crashed commit."""
        n = launch.change.number
        ctx = self.context(n, launch.change.commit, feedback=proposal_log.feedback(trained.reason, self.paths.log(n, 1)))
        launch.fixes += 1
        try:
            self.asking.start("fix", n, launch.record, ctx, launch.change.commit, ctx.train_py, self.workspace.path,
                              crashed=(launch, trained))
        except ProposerError as err:
            self.fix_failed((launch, trained), launch.record, err)
            return
        self.view.phase(n, "fixing")

    def fix_failed(self, crashed: tuple[Launch, Trained], record: dict, err: ProposerError) -> None:
        launch, trained = crashed
        record["attempts"].append({"fix": launch.fixes, **proposal_log.failure_record(err)})
        launch.usage = launch.usage + err.usage
        self.parked.append((launch, trained))  # recorded as the crash it was

    def fix_ready(self, crashed: tuple[Launch, Trained], record: dict, prepared: Prepared) -> None:
        launch, fix = crashed[0], prepared.proposal
        n, c = launch.change.number, launch.change
        record["attempts"].append(proposal_log.proposal_record(fix, prepared.ctx, fix=launch.fixes))
        log = self.paths.log(n, 1)
        if log.exists():  # run.log is always the attempt the row describes
            log.rename(self.paths.run_dir(n) / f"run.crash{launch.fixes}.log")
        files = {**self.files_at(c.commit), **fix.files}
        commit = self.workspace.commit_on(c.parent, files, commit_message(fix.description, fix.hypothesis, n))
        launch.change = Change(n, commit, c.parent, c.description, c.hypothesis, c.proposer, fix.model or c.model,
                               combines=c.combines)
        launch.usage = launch.usage + fix.usage
        launch.proposal = fix
        self.write_proposal(launch.change, record)
        self.queue.insert(0, launch)

    # -- the context and numbers (money and standing: opening.Lifecycle) --------------------------

    def files_at(self, commit: str) -> dict[str, str]:
        """The edit files (the lab: train.py) as committed at `commit`."""
        return self.workspace.read_files_at(commit, self.edit)

    def context(self, n: int, commit: str, feedback: str | None = None) -> Context:
        """A fresh context for the edit files at `commit`: nothing carries over but the rows."""
        program = Path(self.config.repo_root) / "program.md"
        return targets.proposer_context(
            self.target, self.workspace.path, program.read_text() if program.is_file() else "",
            self.files_at(commit), self.lab, self.ledger.history(), self.best, self.ledger.noise().sigma, n, feedback)

    def new_number(self) -> int:
        n = self.ledger.new_number()
        self.open_numbers.add(n)
        folder = self.paths.run_dir(n)
        if folder.exists():  # left by a killed run that handed this number out before the counter
            shutil.rmtree(folder)
        return n
