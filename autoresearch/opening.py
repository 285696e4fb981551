"""Opening and closing a run: what exists before the loop's first step and after its last.

The side effects of a run's start (the branch and worktree, the trust settings, the workers) and
of its ends, kept out of loop.py so the algorithm reads on its own.

    check_start(config, state)                  # a bad tag, a resume of nothing, a taken branch
    workspace, base = open_workspace(config, ledger)   # the run branch and its worktree
    trust = open_trust(config, workspace, base, env, note)   # sandbox, cache guard, audit
    pool = open_pool(config, trust, workers_root, note)      # local workers or Ray actors
    reap_workers(workers_root)                  # trainings a killed run left behind

and the stop signals: SIGTERM and SIGHUP stop a run the way Ctrl-C does.
"""

import os
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from git.exc import GitCommandError

from autoresearch.config import RunConfig, check_tag
from autoresearch.errors import AutoresearchError
from autoresearch.html_report import write_html_report
from autoresearch.lab import LabSettings
from autoresearch.ledger import Ledger
from autoresearch.live import Standing
from autoresearch.prepare_target import prepare_files
from autoresearch.process import AGENT_MARKER, kill_marked, kill_orphan
from autoresearch.records import utc_now
from autoresearch.runner import training_env
from autoresearch.trainers import lab_files, reap_worker
from autoresearch.trust import Trust
from autoresearch.workspace import Workspace


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


def load_declared(config: RunConfig):
    """The target declared in the repository's autoresearch.toml (target.Target), or None for the
    nanochat lab. Bad input is one AutoresearchError line, raised before anything is created."""
    from autoresearch.target import load_target

    return load_target(Path(config.repo_root))


def open_workspace(config: RunConfig, ledger: Ledger) -> tuple[Workspace, str]:
    """Create the run for a new tag, or continue it: (the worktree, the run's base commit).
    With run.json, the same command (or --resume) continues the run."""
    root, tag = Path(config.repo_root), config.tag
    has_branch = check_start(config, ledger.state)
    if not ledger.state:
        # Saved first, so a kill before the branch exists leaves a resumable run.
        ledger.save_state(tag=tag, branch=f"autoresearch/{tag}", started_at=utc_now(), failed_proposals=0,
                          proposal_cost_usd=0.0, base_commit="")
    if not has_branch:
        if ledger.rows():
            raise AutoresearchError(f"results/{tag} has rows but branch autoresearch/{tag} is gone; start a new --tag")
        workspace = Workspace.create(root, tag)
        base = workspace.head()
    else:
        workspace = Workspace.open(root, tag)
        # Before the first row nothing is committed on the branch, so its tip is the base
        # (this covers a kill between creating the branch and saving run.json).
        base = ledger.state.get("base_commit") or workspace.head()
    ledger.save_state(base_commit=base, worktree=str(workspace.path))
    return workspace, base


def move_to_best(workspace: Workspace, commit: str, tag: str) -> None:
    try:
        workspace.revert_to(commit)
    except GitCommandError as exc:
        raise AutoresearchError(
            f"cannot move branch autoresearch/{tag} to its best commit {commit}: {exc.stderr.strip()}") from None


def open_trust(config: RunConfig, workspace: Workspace, base: str, env: dict, note: Callable[[str], None],
               target=None) -> Trust:
    """The audit, sandbox and cache guard of this run, from the base commit's prepare.py (the
    code the proposer cannot edit). A declared target (`target`) has no prepare.py: the sandbox
    and its own `audit` command (rows say audit=none without one); no cache guard (the lab's)."""
    scratch = Path(config.repo_root) / ".autoresearch" / "scratch" / config.tag
    if target is not None and not target.lab:
        return Trust.open_declared(config.sandbox, scratch, note, target, config.audit,  # (network = true: unsandboxed)
                                   Path(config.repo_root) / ".autoresearch" / "workers" / config.tag)
    try:
        prepare_py = workspace.repo.git.show(f"{base}:prepare.py")
    except GitCommandError:
        raise AutoresearchError("the run's base commit has no prepare.py; this is not an autoresearch lab") from None
    return Trust.open(config.audit, config.sandbox, prepare_py, env, scratch, note)


def declared_settings(config: RunConfig, target) -> LabSettings:
    """A declared target's counterpart of the lab's settings: its timeout, no contract, the
    variables of --env (the seed is added per trial, as for the lab)."""
    return LabSettings(config.profile or "cpu", target.timeout, target.timeout, dict(config.extra_env), "")


def open_pool(config: RunConfig, trust: Trust, workers_root: Path, note: Callable[[str], None]):
    """The workers: Ray actors (--ray), one per local GPU (--gpus), or N on this machine."""
    if config.ray is not None:
        from autoresearch.ray_pool import RayTrainerPool

        if config.ray == "local":  # Ray on this machine: one CPU slot per worker, whatever the cores
            init = {"num_cpus": max(os.cpu_count() or 1, config.workers or 1)}
            pool = RayTrainerPool(None, config.workers, init_kwargs=init)
        else:
            pool = RayTrainerPool(config.ray, config.workers)
        note(f"{pool.size} Ray workers on {config.ray}; training is unsandboxed on the cluster's nodes")
        return pool
    from autoresearch.gpus import worker_gpus
    from autoresearch.local_pool import LocalTrainerPool

    gpus = worker_gpus(config)  # checked by loop.run (gpus.check_workers) before anything was created
    wrap = None
    if trust.sandbox is not None:
        wrap = lambda argv, lab, out: trust.command(argv, lab, out)  # noqa: E731
    elif trust.heldout_paths() and len(gpus) > 1:
        note("warning: several trainings at once, unsandboxed: held-out reads cannot be attributed "
             "to one of them and are not watched (rows say sandbox=none); install bubblewrap")
    return LocalTrainerPool(gpus, workers_root, wrap=wrap)


def reap_workers(workers_root: Path) -> int:
    """Kill the trainings of a killed run's local workers and remove their folders."""
    if not workers_root.is_dir():
        return 0
    return sum(reap_worker(folder, folder.name) for folder in sorted(workers_root.iterdir()) if folder.is_dir())


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


@contextmanager
def stop_signals_ignored():
    """A clean-up that a second Ctrl-C must not interrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# ---------------------------------------------------------------------------
# The run's start and end (loop.Run's own: it reads the Run's state)
# ---------------------------------------------------------------------------


@dataclass
class RunOutcome:
    state: str  # "done" | "stopped"
    exit_code: int  # 0 done, 130 stopped
    message: str
    rows: int  # trials recorded in all
    best_val_bpb: float | None  # the best's mean over its trials
    best_commit: str
    experiments: int = 0


class Lifecycle:
    """loop.Run's start and its three ends: done (a limit), stopped (Ctrl-C), a bug."""

    def spend(self, usd: float) -> None:
        """An ask's cost that no row will carry (thrown away, cancelled, dropped)."""
        if usd and self.ledger.state:
            self.view.failed_cost(self.ledger.add_cost(usd))

    def standing(self) -> Standing:
        return Standing(self.best, self.ledger.noise(), len(self.ledger.experiments()))

    def start(self) -> None:
        cfg = self.config
        self.ledger.open()
        self.workspace, self.base = open_workspace(cfg, self.ledger)
        self.base_short = self.workspace.short(self.base)
        kill_orphan(self.paths.training)  # a training of an older version's run
        kill_marked(AGENT_MARKER, str(self.workspace.path.resolve()))  # an agent of a killed harness
        self.asking.clear_scratch(self.workspace.path)  # and one in a scratch worktree
        found = reap_workers(self.workers_root)
        if found:
            self.view.note(f"stopped {found} training process(es) a killed run left behind")
        self.best = self.ledger.best(self.base_short)
        move_to_best(self.workspace, self.best.commit, cfg.tag)
        self.ledger.save_state(state="running", pid=os.getpid(), proposer=self.proposer.name,
                               model=cfg.options.model or "", max_experiments=cfg.max_experiments,
                               keep_rule=cfg.keep_rule, baseline_repeats=cfg.baseline_repeats,
                               min_delta=self.target.min_delta if self.target is not None else cfg.min_delta,
                               **({"metric": self.target.metric, "direction": self.target.direction}
                                  if self.target is not None else {}))
        if self.target is not None and hasattr(self.view, "target"):  # (test views may not have it)
            self.view.target(self.target.metric, self.target.higher_is_better)
        self.view.start(self.proposer.name, cfg.options.model or "", [r.as_dict() for r in self.ledger.rows()],
                        self.standing())
        self.view.failed_cost(self.ledger.spent_outside_rows)
        if self.target is None:
            self.lab = LabSettings.resolve(cfg, (self.workspace.path / "prepare.py").read_text(), dict(os.environ))
            self.lab_files = lab_files(self.workspace.path)
        else:
            self.lab = declared_settings(cfg, self.target)
            self.lab_files = {}
        # A declared target's job carries the fixed files of the run's base commit (its edit
        # files come from each candidate's commit): every tracked file outside `edit`.
        tree = {} if self.target is None else self.workspace.tracked_bytes_at(self.base)
        self.fixed_files = {name: data for name, data in tree.items() if name not in self.edit}
        if self.target is not None and self.target.prepare:  # once per run; what it creates is fixed too
            self.fixed_files.update(prepare_files(
                self.target, tree, Path(cfg.repo_root) / ".autoresearch" / "prepared",
                training_env(os.environ, self.lab.env()), self.paths.dir / "prepare.log", self.view.note))
        self.trust = open_trust(cfg, self.workspace, self.base, training_env(os.environ, self.lab.env()),
                                self.view.note, self.target)
        if self.pool is None:
            self.pool = open_pool(cfg, self.trust, self.workers_root, self.view.note)
        self.watching = (self.pool.size == 1 and self.trust.sandbox is None and cfg.ray is None
                         and bool(self.trust.heldout_paths()))
        self.ledger.save_state(workers=self.pool.size)

    def tree_at(self, commit: str) -> dict:
        """A declared target's whole tree for `commit`: the run's fixed files (the base commit's,
        and what `prepare` made) with the commit's edit files."""
        return {**self.fixed_files, **self.files_at(commit)}

    def wind_down(self) -> None:
        """A hard limit: asks cancelled, ideas and launches not yet training dropped (what they
        cost counts, in run.json; their numbers stay unused), finished trials settled."""
        spent, cut_off = self.asking.cancel()
        self.parked += cut_off  # a fix cut off: the crash is recorded as it was
        spent += sum(launch.usage.cost_usd for launch in self.queue)
        self.queue = []
        self.open_numbers = {launch.change.number for launch in self.in_flight()}
        self.spend(spent)
        self.settle_ready()

    def drop_parked(self) -> None:
        """The end: trials that can no longer be judged (their base was never measured)."""
        self.spend(sum(launch.usage.cost_usd for launch, _ in self.parked))
        self.parked = []

    def stop(self) -> RunOutcome:
        """Ctrl-C / SIGTERM: no training left behind, no half-applied change, state `stopped`."""
        self.clean_up()
        message = f"stopped; resume with: autoresearch run --tag {self.config.tag} --resume"
        self.view.phase(None, "stopped")
        self.view.note(message)
        return self.outcome("stopped", 130, message)

    def clean_up(self) -> None:
        """Ctrl-C, a bug: every ask cancelled and training stopped, the branch at the best."""
        with stop_signals_ignored():
            spent, _ = self.asking.cancel()
            spent += sum(launch.usage.cost_usd for launch in [*self.queue, *(p[0] for p in self.parked)])
            self.queue, self.parked = [], []
            self.spend(spent)
            if self.pool is not None:
                for handle in list(self.running):
                    try:
                        self.pool.cancel(handle)
                    except Exception:  # stopping anyway
                        pass
                self.running = {}
                self.pool.close()
            if self.workspace is not None:
                self.ledger.reload()  # the row of an interrupted record() counts
                self.best = self.ledger.best(self.base_short)
                self.workspace.revert_to(self.best.commit)
            if self.ledger.state:
                self.ledger.save_state(state="stopped")
                write_html_report(self.paths.dir, warn=self.view.note)
        reap_workers(self.workers_root)

    def finish(self, why: str) -> RunOutcome:
        self.spend(self.asking.cancel()[0])
        self.ledger.save_state(state="done")
        write_html_report(self.paths.dir, warn=self.view.note)  # the page says how the run ended
        self.pool.close()
        reap_workers(self.workers_root)
        metric = self.target.metric if self.target is not None else "val_bpb"
        best = f"best {metric} {self.best.mean:.6f} at {self.best.commit}" if self.best.mean is not None else "no baseline yet"
        message = (f"done ({why}): {len(self.ledger.experiments())} experiments, {best} "
                   f"({len(self.ledger.rows())} trials in all); results in {self.paths.results}")
        self.view.phase(None, "done")
        self.view.note(message)
        return self.outcome("done", 0, message)

    def outcome(self, state: str, code: int, message: str) -> RunOutcome:
        return RunOutcome(state, code, message, len(self.ledger.rows()), self.best.mean, self.best.commit,
                          len(self.ledger.experiments()))
