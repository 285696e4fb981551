"""Many workers, one run: N trainings at once, one ledger, one best, one branch (issue 11).

`autoresearch run --gpus 0,1,2,3` (or `--workers N`, or `--ray ADDRESS`) runs the Coordinator
instead of the single-GPU loop. The Coordinator is that loop's Session with the sequencing
replaced; the record (Ledger), the verdicts (keep_rule), the audit and the git side are the same
objects. It alone writes results.tsv, moves the branch and talks to the proposer; workers
(local_pool.LocalTrainerPool, or ray_pool.RayTrainerPool for a cluster) only train the TrainJob
they are given, in a scratch folder of their own, and hand back a TrainOutput.

    until a limit:                                               (Coordinator.loop, one thread)
        collect  finished trainings -> check them, then settle (or park, or rerun when lost)
                 finished asks      -> ideas waiting for a worker, or fixes to train
        settle   parked trials whose base has its verdict, in trial order
        launch   on every free worker, first what must run: a rerun, a fix, a combination, a
                 confirm, a baseline repeat; then the oldest idea, rebased on the best if it moved
        ask      keep up to N asks in flight (speculation; without it, one per idle worker),
                 each with the history so far and what is running now

How a candidate is judged
-------------------------
Against the best it was built on (its row's `parent`): every trial of that commit. When the
best has moved since, a candidate that beat its own base is not kept blindly and not dropped:
its row says so (`discard`, "beat its base ... the best moved"), and its change is re-applied on
the new best by a 3-way merge (scheduler.rebase_train_py) as a new experiment whose first row's
role is `combine`. The combination is measured and judged like any candidate; nothing untested
is kept. A change that overlaps the new best is not combined.

Crash consistency
-----------------
As in loop.py, a row is the commit point and the branch moves only after a keep's row. The
scratch folders of local workers live under .autoresearch/workers/<tag>/; a resumed run reaps
whatever trainings a killed coordinator left there (trainers.reap_worker) before anything starts.
An experiment whose number was handed out but that never got a row (it was proposing or
training when the run stopped) leaves its number unused: numbers are never reused, rows never
doubled. Trainings cannot write the run's records from their scratch folder unnoticed: after
every training results.tsv, run.json and the number counter are compared with what the
coordinator last wrote, restored, and the training's row is a crash.
"""

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from autoresearch.errors import AutoresearchError
from autoresearch.gpus import pin_env, worker_gpus
from autoresearch.keep_rule import Verdict
from autoresearch.ledger import Best, Experiment
from autoresearch.loop import (RunOutcome, Session, Trained, Change, _feedback, _one_line, _proposal_record,
                               _write_json, judge_run)
from autoresearch.proposers import Proposal, ProposerError, Usage
from autoresearch.results import Row, read_bytes, restore_bytes, utc_now
from autoresearch.runner import training_defaults
from autoresearch.scheduler import Prepared, Speculator, rebase_train_py
from autoresearch.trainers import TrainJob, TrainOutput, lab_files, reap_worker
from autoresearch.trust import HANDOFF_ENV, model_path

POLL_SECONDS = 0.2  # how often the coordinator looks at asks in flight while it waits for trainings
MAX_RERUNS = 2  # a trial whose worker was lost runs again elsewhere this many times, then is a crash
MODEL_FILE = "model.pt2"  # the handoff's name in a job's output folder


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
    gpu: str | None = None  # the local GPU that trained it (the audit of a keep runs there)
    crashed: Trained | None = None  # the crash a fix is being asked for (recorded if no fix comes)
    timing: tuple[float, float] | None = None  # (seconds trained, seconds its worker idled before)

    @property
    def key(self) -> tuple[int, int]:
        return self.change.number, self.trial


@dataclass
class Ask:
    """A proposal (kind "idea") or a fix of a crashed candidate (kind "fix") in flight."""

    kind: str
    number: int
    spec: Speculator
    record: dict
    launch: Launch | None = None  # the crashed trial, for a fix


@dataclass
class Idea:
    number: int
    prepared: Prepared
    record: dict


class Coordinator(Session):
    """The multi-worker run: one thread owns the ledger, the branch and the proposer's asks."""

    reuses_numbers = False  # a row may name a combination's number before it has a row

    def __init__(self, config, proposer, view, paths, pool=None):
        super().__init__(config, proposer, view, paths)
        self.pool = pool  # made in start() unless given (tests)
        self.running: dict = {}  # pool handle -> Launch
        self.queue: list[Launch] = []  # to launch before anything new: reruns, fixes, combinations
        self.parked: list[tuple[Launch, Trained, TrainOutput | None]] = []  # waiting for their base's verdict
        self.asks: list[Ask] = []
        self.ideas: list[Idea] = []
        self.open_numbers: set[int] = set()  # handed out, no row yet
        self.paused_until = 0.0
        self.retry: list[tuple[int, dict]] = []  # numbers whose ask failed: asked again first
        self.worker_free_since: dict[str, float] = {}
        self.guarded: dict[Path, bytes | None] = {}  # what the coordinator last wrote to its records
        self._combine: tuple | None = None
        self.audit_gpu: str | None = None  # (number, commit, parent, change) planned by verdict()
        self.workers_root = Path(config.repo_root) / ".autoresearch" / "workers" / config.tag

    # -- the algorithm -------------------------------------------------------------------------

    def loop(self) -> RunOutcome:
        while True:
            self.collect()
            self.settle_parked()
            hard = self.hard_limit()
            if hard:
                self.cancel_asks()
                self.drop_unstarted()
                self.settle_parked()
                if not self.running:
                    self.drop_parked()
                    return self.finish(hard)
            else:
                if self.pool.size == 0:
                    raise AutoresearchError("no worker is left (every GPU went away); see the notes above, then "
                                            f"resume with: autoresearch run --tag {self.config.tag} --resume")
                self.launch_work()
                self.start_asks()
                if self.all_done():
                    return self.finish(f"--max-experiments {self.config.max_experiments}")
            self.wait()

    def hard_limit(self) -> str | None:
        """--max-hours or --max-cost: nothing new starts; what trains finishes and is recorded."""
        sentinel = Experiment(-1)  # limit_reached skips --max-experiments when something is pending
        return self.limit_reached(sentinel)

    def room(self) -> int | None:
        """New experiments that may still start under --max-experiments (None: no limit)."""
        if self.config.max_experiments is None:
            return None
        return self.config.max_experiments - len(self.ledger.experiments()) - len(self.open_numbers)

    def all_done(self) -> bool:
        room = self.room()
        return (room is not None and room <= 0 and not self.running and not self.queue and not self.parked
                and not self.asks and not self.ideas and not self.retry and not self.undecided())

    def undecided(self) -> list[Experiment]:
        return [exp for exp in self.ledger.experiments() if not exp.decided]

    def in_flight(self) -> list[Launch]:
        return [*self.running.values(), *self.queue, *(p[0] for p in self.parked),
                *(a.launch for a in self.asks if a.launch is not None)]

    def wait(self) -> None:
        if self.running:
            self.pool.wait(timeout=POLL_SECONDS)
        else:
            time.sleep(POLL_SECONDS / 4 if self.asks else POLL_SECONDS / 20)

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
        while self.ideas:
            launch = self.launch_idea(self.ideas.pop(0))
            if launch is not None:
                return launch
        return None

    def pending_trial(self) -> Launch | None:
        """A confirm or baseline repeat of a recorded experiment (one at a time, except the
        baseline: its repeats all run at once), or the baseline's first trials."""
        busy = {}
        for launch in self.in_flight():
            busy.setdefault(launch.change.number, set()).add(launch.trial)
        for exp in self.undecided():
            first = exp.first
            change = Change(exp.number, exp.commit, first.parent, first.description, first.hypothesis,
                            first.proposer, first.model, baseline=first.role == "baseline")
            if change.baseline:
                trial = len(exp.rows) + 1 + len(busy.get(exp.number, ()))
                if trial <= self.config.baseline_repeats or exp.number not in busy:
                    return Launch(change, trial)  # (past the repeats: one more decides it)
            elif exp.number not in busy:
                return Launch(change, len(exp.rows) + 1)
        if self.best.experiment is None and not any(exp.first.role == "baseline" for exp in self.ledger.experiments()):
            return self.baseline_launch()
        return None

    def baseline_launch(self) -> Launch | None:
        started = [launch for launch in self.in_flight() if launch.change.baseline]
        if started:
            change = started[0].change
            trial = max(launch.trial for launch in started) + 1
            return Launch(change, trial) if trial <= self.config.baseline_repeats else None
        n = self.new_number()
        folder = self.fresh_run_dir(n)
        base = self.base_short
        (folder / "diff.patch").write_text("")
        _write_json(folder / "proposal.json", {"experiment": n, "proposer": "baseline", "attempts": []})
        return Launch(Change(n, base, base, "baseline", "the unmodified train.py sets the bar", "baseline",
                             baseline=True), 1)

    def launch_idea(self, idea: Idea) -> Launch | None:
        """The idea as a candidate on the current best (rebased when the best moved since it was
        asked for); None when it overlaps the new best: it is counted and asked for again."""
        prepared, record, n = idea.prepared, idea.record, idea.number
        proposal = prepared.proposal
        entry = {**_proposal_record(proposal, prepared.ctx), "base": prepared.base}
        best = self.best.commit or self.base_short
        how = "used"
        if prepared.base != best:
            best_py = self.workspace.read_at(best)
            merged = rebase_train_py(prepared.base_train_py, best_py, proposal.train_py)
            if merged is None or merged == best_py:
                record["discarded"] = {**entry, "why": f"built on {prepared.base}; its change overlaps or does not "
                                                       f"merge with the new best {best}"}
                self.save_state(proposal_cost_usd=float(self.state.get("proposal_cost_usd") or 0)
                                + proposal.usage.cost_usd)
                _write_json(self.paths.run_dir(n) / "proposal.json", record)
                self.retry.append((n, record))
                return None
            entry = {**entry, "rebased_onto": best, "train_py": merged}
            proposal.train_py, how = merged, "rebased"
        record["attempts"].append(entry)
        record["speculation"] = self.speculation[n] = how
        commit = self.workspace.commit_on(best, proposal.train_py, _message(proposal, n))
        change = Change(n, commit, best, proposal.description, proposal.hypothesis, self.proposer_name, proposal.model)
        self.write_proposal(change, record)
        return Launch(change, 1, proposal.usage, record=record, proposal=proposal)

    def write_proposal(self, change: Change, record: dict) -> None:
        folder = self.paths.run_dir(change.number)
        (folder / "diff.patch").write_text(self.workspace.diff(change.parent, change.commit))
        _write_json(folder / "proposal.json", record)

    def submit(self, launch: Launch) -> None:
        n, trial = launch.key
        budget, timeout = self.budget_and_timeout()
        env = self.lab_env(trial)
        env.update(training_defaults({**os.environ, **env}))  # caches, allocator, device order (runner.py)
        job = TrainJob(n, trial, self.workspace.read_at(launch.change.commit), self.lab_files, env, timeout,
                       command=self.config.training_command,
                       outputs={HANDOFF_ENV: MODEL_FILE} if self.trust.audit else {})
        handle = self.pool.submit(job)
        self.running[handle] = launch
        self.view.phase(n, "training", budget=budget, timeout=timeout)

    # -- collecting ----------------------------------------------------------------------------

    def collect(self) -> None:
        for ask in [a for a in self.asks if a.spec.done]:
            self.asks.remove(ask)
            self.asked(ask, ask.spec.take())
        for handle in [h for h in self.running if h.done]:
            launch = self.running.pop(handle)
            trainer = getattr(getattr(handle, "slot", None), "trainer", None)
            launch.gpu = getattr(trainer, "gpu", None)
            self.trained(launch, self.pool.result(handle))

    def trained(self, launch: Launch, output: TrainOutput) -> None:
        n, trial = launch.key
        if output.result.status == "cancelled":
            return
        now = time.monotonic()
        idle_from = self.worker_free_since.get(output.worker, self.started)
        self.worker_free_since[output.worker] = now
        run_seconds = output.result.seconds
        launch.timing = (run_seconds, max(0.0, now - run_seconds - idle_from))
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
                and launch.fixes < self.config.max_fix_attempts and getattr(self.proposer, "can_fix", True)
                and not self.hard_limit()):
            self.ask_fix(launch, trained)
            return
        self.parked.append((launch, trained, None))  # not the output: its artefacts can be GBs

    def check(self, launch: Launch, output: TrainOutput) -> Trained:
        """What the loop's train_and_check does, for a run in a worker's scratch folder."""
        n, trial = launch.key
        folder = self.paths.run_dir(n)
        result = output.save_log(self.paths.log(n, trial))
        reasons = [f"modified {path.name} (restored)" for path, data in self.guarded.items()
                   if restore_bytes(path, data)]
        if output.changed:
            modified = [name for name in output.changed if name in self.lab_files or name == "train.py"]
            written = [name for name in output.changed if name not in modified]
            reasons += (["modified " + ", ".join(modified[:5])] if modified else []) + (
                ["wrote files: " + ", ".join(written[:5])] if written else [])
        cache = self.trust.cache_changes(full=False)
        reasons += cache
        model = None
        if not reasons and self.trust.audit and MODEL_FILE in output.artefacts:
            model = model_path(folder, trial)
            model.write_bytes(output.artefacts[MODEL_FILE])
        return judge_run(result, reasons, bool(cache), model)

    # -- settling --------------------------------------------------------------------------------

    def settle_parked(self) -> None:
        progress = True
        while progress:
            progress = False
            for item in list(self.parked):
                launch, trained, _ = item
                if self.ready_to_settle(launch):
                    self.parked.remove(item)
                    self.settle_launch(launch, trained)
                    progress = True
                    break

    def ready_to_settle(self, launch: Launch) -> bool:
        """A trial's row waits for the rows before it (baseline repeats finish in any order) and
        a candidate's for the verdict of the commit it was built on (the baseline)."""
        rows = [r for r in self.ledger.rows() if r.experiment == launch.change.number]
        if len(rows) != launch.trial - 1:
            return False
        return launch.change.baseline or self.base_of(launch.change) is not None

    def base_of(self, change: Change) -> Best | None:
        """The kept commit `change` was built on, with its trials; None while it has no verdict."""
        for exp in reversed(self.ledger.experiments()):
            if exp.decided and exp.status == "keep" and exp.commit == change.parent:
                return Best(exp.commit, exp.number, tuple(exp.values))
        if change.parent == self.base_short and self.best.experiment is None:
            return None  # the baseline is still being measured
        return self.best  # an older run's row without its base: judged against today's best

    def settle_launch(self, launch: Launch, trained: Trained) -> None:
        change = launch.change
        earlier = [r for r in self.ledger.rows() if r.experiment == change.number]
        self.last_run = launch.timing
        self.audit_gpu = launch.gpu
        if launch.record is not None and trained.status != "ok":
            _write_json(self.paths.run_dir(change.number) / "proposal.json", launch.record)
        self.settle(change, earlier, trained, launch.usage if launch.trial == 1 else Usage(),
                    launch.started_at, launch.t0)
        planned, self._combine = self._combine, None
        if planned is not None:
            m, commit, parent, origin = planned
            self.queue.insert(0, Launch(Change(m, commit, parent, origin.description, origin.hypothesis,
                                               origin.proposer, origin.model, combines=origin.number), 1))

    def verdict(self, change: Change, earlier: list[Row], trained: Trained,
                against: tuple[float, ...] | None = None) -> tuple[str, str, Verdict | None]:
        """Judged against the best it was built on; a keep over a best that has moved since is a
        discard whose change is re-applied on the new best (a combination, planned here)."""
        if change.baseline or trained.status == "crash":
            return super().verdict(change, earlier, trained)
        base = self.base_of(change)
        status, reason, verdict = super().verdict(change, earlier, trained, base.values)
        if status != "keep" or change.parent == self.best.commit:
            return status, reason, verdict
        best = self.best.commit
        why = f"beat its base {change.parent} ({reason}), but the best moved to {best}"
        return "discard", why + "; " + self.plan_combination(change, best), verdict

    def plan_combination(self, change: Change, best: str) -> str:
        """Re-apply `change` on `best` as a new experiment, if it merges; the row's explanation."""
        parent_py, best_py = self.workspace.read_at(change.parent), self.workspace.read_at(best)
        merged = rebase_train_py(parent_py, best_py, self.workspace.read_at(change.commit))
        if merged is None or merged == best_py:
            return "its change overlaps the new best's: not combined"
        room = self.room()
        if room is not None and room <= 0:
            return f"not combined (--max-experiments {self.config.max_experiments})"
        m = self.new_number()
        self.fresh_run_dir(m)
        message = (f"{_one_line(change.description)} (on {best})\n\n{change.hypothesis}\n\n"
                   f"Experiment: {m}\nCombines: experiment {change.number} on {best}\n")
        commit = self.workspace.commit_on(best, merged, message)
        combined = Change(m, commit, best, change.description, change.hypothesis, change.proposer, change.model)
        self.write_proposal(combined, {"experiment": m, "proposer": change.proposer, "combines": change.number,
                                       "of": change.commit, "onto": best, "attempts": []})
        self._combine = (m, commit, best, change)
        return f"re-applied on it as experiment {m}"

    def record(self, row: Row, previous: Best) -> None:
        tampered = [path.name for path, data in self.guarded.items() if restore_bytes(path, data)]
        if tampered:  # written while nothing was checked (an audit ran): restored before the append
            self.view.note(f"a training modified {', '.join(tampered)} meanwhile; restored")
        super().record(row, previous)
        self.open_numbers.discard(row.experiment)
        if row.status == "keep" and not self.workspace.at(row.commit):
            self.workspace.revert_to(row.commit)  # the branch moves only after the keep's row
        self.guard()

    def mark_trust(self, row: Row, audited) -> None:
        super().mark_trust(row, audited)
        if self.trust.sandbox is None or self.config.ray is not None:
            row.sandbox = "none"  # several trainings at once: a held-out read could not be attributed

    def training_env(self, trial: int = 1) -> dict[str, str]:
        env = super().training_env(trial)
        if self.audit_gpu is not None:  # the audit: on the GPU whose training just ended
            env.update(pin_env(self.audit_gpu, env))  # in the order the worker was pinned in
        return env

    # -- asking --------------------------------------------------------------------------------

    def start_asks(self) -> None:
        if time.monotonic() < self.paused_until:
            return
        while self.wants_an_ask():
            if self.retry:
                asked = self.ask(*self.retry.pop(0))
            else:
                n = self.new_number()
                self.fresh_run_dir(n)
                asked = self.ask(n, {"experiment": n, "proposer": self.proposer_name, "attempts": [], "failures": []})
            if not asked:  # git could not make a scratch worktree: try again on the next turn
                if self.failures_in_a_row >= self.config.max_consecutive_proposer_failures:
                    self.pause()
                return

    def wants_an_ask(self) -> bool:
        room = self.room()
        if room is not None and room <= 0 and not self.retry:  # a retry's number is counted already
            return False
        cfg = self.config
        if cfg.max_cost is not None and self.total_cost() >= cfg.max_cost:
            return False
        ideas = len(self.ideas) + sum(a.kind == "idea" for a in self.asks)
        if self.speculating:
            return ideas < self.pool.size
        if any(a.kind == "idea" for a in self.asks):  # hparam, optuna: one ask at a time, in order
            return False
        busy = {launch.change.number for launch in self.in_flight()}
        waiting = len(self.queue) + sum(exp.number not in busy for exp in self.undecided())
        return ideas < self.pool.free - waiting

    def ask(self, n: int, record: dict) -> bool:
        """Ask for experiment n's idea in a thread, against the best as it stands, with what is
        running now in the history."""
        base = self.best.commit or self.base_short
        ctx = self.context(n, train_py=self.workspace.read_at(base), phase=False)
        ctx.history = [*ctx.history, *self.running_entries()]
        spec = Speculator(self.proposer, self.speculator.scratch_root)
        try:
            spec.start(ctx, base, ctx.train_py, self.workspace.path)
        except ProposerError as err:  # git could not make the scratch worktree
            self.proposal_failed(n, err, record, self.paths.run_dir(n))
            self.retry.append((n, record))
            return False
        self.asks.append(Ask("idea", n, spec, record))
        self.view.phase(n, "proposing")
        return True

    def running_entries(self) -> list[dict]:
        """What trains now or waits for a worker, as history entries with status `running`."""
        entries, seen = [], set()
        recorded = {exp.number for exp in self.ledger.experiments()}
        for launch in self.in_flight():
            c = launch.change
            if c.baseline or c.number in seen or c.number in recorded:
                continue
            seen.add(c.number)
            entries.append({"experiment": c.number, "commit": c.commit, "parent": c.parent, "status": "running",
                            "description": c.description, "hypothesis": c.hypothesis, "proposer": c.proposer,
                            "val_bpb": None, "trials": 0})
        for idea in self.ideas:
            p = idea.prepared.proposal
            entries.append({"experiment": idea.number, "commit": "", "parent": idea.prepared.base, "status": "running",
                            "description": p.description, "hypothesis": p.hypothesis, "proposer": self.proposer_name,
                            "val_bpb": None, "trials": 0})
        return entries

    def asked(self, ask: Ask, prepared: Prepared) -> None:
        folder = self.paths.run_dir(ask.number)
        if prepared.error is not None:
            if ask.kind == "fix":  # as in the loop: its cost goes on the crash's row
                self.fix_failed(ask, prepared.error.usage, str(prepared.error))
                return
            self.proposal_failed(ask.number, prepared.error, ask.record, folder)
            if self.failures_in_a_row >= self.config.max_consecutive_proposer_failures:
                self.pause()
            self.retry.append((ask.number, ask.record))  # asked again under its number
            return
        self.failures_in_a_row = self.pauses = 0
        if ask.kind == "fix":
            self.fix_ready(ask, prepared)
        else:
            self.ideas.append(Idea(ask.number, prepared, ask.record))

    def pause(self) -> None:
        """Too many proposer failures in a row: no new ask for a while; the workers go on."""
        cfg = self.config
        seconds = min(cfg.pause_max_seconds, cfg.pause_seconds * 2**self.pauses)
        self.pauses += 1
        self.failures_in_a_row = 0
        self.paused_until = time.monotonic() + seconds
        self.view.note(f"paused asking: the proposer failed {cfg.max_consecutive_proposer_failures} times in a row; "
                       f"asking again in {seconds:g} s (trainings go on; Ctrl-C stops)")

    # -- fixes -----------------------------------------------------------------------------------

    def ask_fix(self, launch: Launch, trained: Trained) -> None:
        n = launch.change.number
        crashed_py = self.workspace.read_at(launch.change.commit)
        ctx = self.context(n, train_py=crashed_py, feedback=_feedback(trained.reason, self.paths.log(n, 1)), phase=False)
        spec = Speculator(self.proposer, self.speculator.scratch_root, prefix="fix")
        launch.fixes += 1
        launch.crashed = trained  # settled as it is if the fix cannot be had
        try:
            spec.start(ctx, launch.change.commit, crashed_py, self.workspace.path)
        except ProposerError as err:
            self.fix_failed(Ask("fix", n, spec, launch.record, launch), err.usage, str(err))
            return
        self.asks.append(Ask("fix", n, spec, launch.record, launch))
        self.view.phase(n, "fixing")

    def fix_failed(self, ask: Ask, usage: Usage, error: str = "") -> None:
        launch = ask.launch
        if error:
            ask.record["attempts"].append({"fix": launch.fixes, "error": error, "usage": usage.__dict__})
        launch.usage = launch.usage + usage
        self.parked.append((launch, launch.crashed, None))

    def fix_ready(self, ask: Ask, prepared: Prepared) -> None:
        launch, fix = ask.launch, prepared.proposal
        n = launch.change.number
        ask.record["attempts"].append(_proposal_record(fix, prepared.ctx, fix=launch.fixes))
        log = self.paths.log(n, 1)
        if log.exists():
            log.rename(self.paths.run_dir(n) / f"run.crash{launch.fixes}.log")
        commit = self.workspace.commit_on(launch.change.parent, fix.train_py, _message(fix, n))
        c = launch.change
        launch.change = Change(n, commit, c.parent, c.description, c.hypothesis, c.proposer, fix.model or c.model,
                               combines=c.combines)
        launch.usage = launch.usage + fix.usage
        launch.proposal = fix
        self.write_proposal(launch.change, ask.record)
        self.queue.insert(0, launch)

    # -- numbers and records ----------------------------------------------------------------------

    def new_number(self) -> int:
        n = self.ledger.new_number()
        self.open_numbers.add(n)
        self.guard()
        return n

    def save_state(self, **fields) -> None:
        super().save_state(**fields)
        self.guard()

    def guard(self) -> None:
        """Remember the records as the coordinator wrote them (compared after every training)."""
        for path in (self.ledger.path, self.paths.state, self.ledger.numbers_path):
            self.guarded[path] = read_bytes(path)

    # -- start and stop --------------------------------------------------------------------------

    def start(self) -> None:
        super().start()
        found = self.reap_workers()
        if found:
            self.view.note(f"stopped {found} training process(es) a killed run left behind")
        self.lab_files = lab_files(self.workspace.path)
        if self.pool is None:
            self.pool = self.open_pool()
        self.save_state(coordinator=True, workers=self.pool.size)  # saves and guards

    def reap_workers(self) -> int:
        """Kill the trainings of a killed coordinator's local workers and remove their folders."""
        if not self.workers_root.is_dir():
            return 0
        return sum(reap_worker(folder, folder.name) for folder in sorted(self.workers_root.iterdir())
                   if folder.is_dir())

    def open_pool(self):
        cfg = self.config
        if cfg.ray is not None:
            from autoresearch.ray_pool import RayTrainerPool

            if cfg.ray == "local":  # Ray on this machine: one CPU slot per worker, whatever the cores
                init = {"num_cpus": max(os.cpu_count() or 1, cfg.workers or 1)}
                pool = RayTrainerPool(None, cfg.workers, init_kwargs=init)
            else:
                pool = RayTrainerPool(cfg.ray, cfg.workers)
            self.view.note(f"{pool.size} Ray workers on {cfg.ray}; training is unsandboxed on the cluster's nodes")
            return pool
        from autoresearch.local_pool import LocalTrainerPool

        gpus = worker_gpus(cfg)  # checked by loop.run (gpus.check_workers) before anything was created
        wrap = None
        if self.trust.sandbox is not None:
            wrap = lambda argv, lab, out: self.trust.command(argv, lab, out)  # noqa: E731
        elif self.trust.heldout_paths():
            self.view.note("warning: several trainings at once, unsandboxed: held-out reads cannot be attributed "
                           "to one of them and are not watched (rows say sandbox=none); install bubblewrap")
        return LocalTrainerPool(gpus, self.workers_root, wrap=wrap)

    def drop_unstarted(self) -> None:
        """A hard limit: ideas and launches not yet training are dropped (what their proposals
        cost counts, in run.json); their numbers stay unused."""
        spent = sum(idea.prepared.usage.cost_usd for idea in self.ideas)
        spent += sum(launch.usage.cost_usd for launch in self.queue)
        for idea in self.ideas:
            self.open_numbers.discard(idea.number)
        for launch in self.queue:
            if launch.trial == 1:
                self.open_numbers.discard(launch.change.number)
        self.ideas, self.queue = [], []
        self.count_dropped(spent)

    def drop_parked(self) -> None:
        """The end: trials that can no longer be judged (their base was never measured)."""
        self.count_dropped(sum(launch.usage.cost_usd for launch, _, _ in self.parked))
        self.parked = []

    def count_dropped(self, spent: float) -> None:
        if spent and self.state:
            self.save_state(proposal_cost_usd=float(self.state.get("proposal_cost_usd") or 0) + spent)

    def cancel_asks(self) -> None:
        spent = 0.0
        for ask in self.asks:
            spent += ask.spec.cancel().cost_usd
            if ask.launch is not None:  # a fix cut off: the crash is recorded as it was
                self.parked.append((ask.launch, ask.launch.crashed, None))
            else:
                self.open_numbers.discard(ask.number)
        self.asks = []
        for n, _ in self.retry:
            self.open_numbers.discard(n)
        self.retry = []
        if spent and self.state:
            self.save_state(proposal_cost_usd=float(self.state.get("proposal_cost_usd") or 0) + spent)

    def clean_up(self) -> None:
        """Ctrl-C, a bug, the end: every training stopped, every ask cancelled, then the loop's own."""
        from autoresearch.loop import _ignore_stop_signals, _restore_signals

        previous = _ignore_stop_signals()
        try:
            self.cancel_asks()  # their cost counts
            self.drop_unstarted()
            self.drop_parked()
            if self.pool is not None:
                for handle in list(self.running):
                    try:
                        self.pool.cancel(handle)
                    except Exception:  # stopping anyway
                        pass
                self.running = {}
                self.pool.close()
        finally:
            _restore_signals(previous)
        super().clean_up()
        self.reap_workers()

    def finish(self, why: str) -> RunOutcome:
        outcome = super().finish(why)
        self.pool.close()
        self.reap_workers()
        return outcome


def _message(proposal: Proposal, n: int) -> str:
    return f"{_one_line(proposal.description)}\n\n{proposal.hypothesis}\n\nExperiment: {n}\n"

