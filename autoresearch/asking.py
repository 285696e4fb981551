"""Asking the proposer: every ask of a run, in a thread and a scratch worktree of its own.

A proposal takes minutes with an LLM or an agent, and training takes minutes too: asked one after
the other, the GPU would sit idle while the proposer thinks. So every ask runs in a thread
(`Asker`), against the best commit as it stands, in a scratch worktree under
.autoresearch/scratch/<tag>/, so an agent's edits never touch the run's worktree. `Asking` owns
them all: the asks in flight (ideas and fixes), the ideas ready for a worker, the numbers to ask
again, the count of failures in a row and the pause that follows too many.

How an idea came is the `speculation` column of its first row (`speculation_label`):

    fresh                  asked while nothing trained (the first experiment, --no-speculate, a
                           proposer that answers at once)
    used                   asked while a training ran; the best did not move: trained as it is
    rebased                the best moved meanwhile: its change re-applied on the new best by a
                           3-way merge (git merge-file), allowed only when its hunks are clear of
                           the kept change's
    discarded-asked-again  an earlier idea for this number overlapped the new best: thrown away
                           (its cost in run.json), and this one asked instead
    failed-asked-again     an earlier ask for this number failed (a ProposerError), this one
                           asked instead

    asker = Asker(proposer, scratch_root)
    asker.start(ctx, base_commit, base_train_py, repo_worktree)   # ctx.workdir is set to the scratch
    prepared = asker.take()        # waits for it
    asker.cancel()                 # Ctrl-C / the end: stop an agent, drop the scratch worktree
"""

import difflib
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from autoresearch import proposal_log
from autoresearch.process import AGENT_MARKER, kill_marked
from autoresearch.proposers import Context, Proposal, ProposerError, Usage
from autoresearch.proposers.base import Exhausted, NothingEdited

CANCEL_JOIN_SECONDS = 10.0  # a cancelled agent is killed at once; an HTTP call may not return
SPECULATION_LABELS = ("fresh", "used", "rebased", "discarded-asked-again", "failed-asked-again")


def speculation_label(while_training: bool, rebased: bool, again: str = "") -> str:
    """The `speculation` column of an idea's first row: why it was asked again, else whether
    the best moved under it, else whether it was asked while something trained."""
    if again:
        return again
    if rebased:
        return "rebased"
    return "used" if while_training else "fresh"


@dataclass
class Prepared:
    """An ask, finished: a proposal or the error, and what it was built on."""

    number: int  # the experiment it was asked for
    base: str  # the best commit (short) it was built on
    base_train_py: str
    ctx: Context
    proposal: Proposal | None = None
    error: ProposerError | None = None
    interrupted: BaseException | None = None  # KeyboardInterrupt, SystemExit raised by the proposer
    done: bool = False  # the ask has ended
    fixed_changed: tuple[str, ...] = ()  # a declared target's fixed files the idea changed: a crash row, not trained

    @property
    def usage(self) -> Usage:
        if self.proposal is not None:
            return self.proposal.usage
        return self.error.usage if self.error is not None else Usage()


class Asker:
    """One ask at a time, in a thread, in a scratch worktree."""

    def __init__(self, proposer, scratch_root: Path, prefix: str = "ask", finished: threading.Event | None = None,
                 edit: tuple[str, ...] = ("train.py",), fixed_is_crash: bool = False):
        self.proposer = proposer
        self.finished = finished or threading.Event()  # set when the ask ends (shared by Asking)
        self.edit = tuple(edit)  # the files a proposal may change (the lab: train.py)
        # A declared target: an idea that changes a tracked file outside `edit` becomes a crash
        # row naming it (the lab, and every fix: a failed proposal, as before targets existed).
        self.fixed_is_crash = fixed_is_crash and prefix != "fix"
        self.prefix = prefix  # the scratch worktree's name: ask-NNNN-xxxxxx (fix-... for a fix)
        self.scratch_root = Path(scratch_root)
        self._thread: threading.Thread | None = None
        self._prepared: Prepared | None = None
        self._scratch: Path | None = None
        self._repo: Path | None = None

    @property
    def busy(self) -> bool:
        """Something is in flight or prepared and not taken yet."""
        return self._prepared is not None

    def start(self, ctx: Context, base: str, base_train_py: str, repo: Path) -> None:
        """Ask for `ctx.experiment` in a new scratch worktree of `base` (a worktree of `repo`),
        or, for a proposer that edits no files (Proposer.edits_files), with the text alone."""
        self._drop_scratch()  # its own last one only: other speculators share the scratch root
        path = None
        if self.proposer.edits_files:  # an agent: it works in a checkout of its own
            path = self.scratch_root / f"{self.prefix}-{ctx.experiment:04d}-{uuid.uuid4().hex[:6]}"
            _git(repo, "worktree", "add", "--quiet", "--detach", str(path), base)
        self._scratch, self._repo = path, Path(repo)
        ctx = replace(ctx, workdir=path or Path(repo), train_py=base_train_py)
        prepared = Prepared(ctx.experiment, base, base_train_py, ctx)
        self._prepared = prepared
        self._thread = threading.Thread(target=self._ask, args=(prepared, path), daemon=True,
                                        name=f"ask-{ctx.experiment}")
        self._thread.start()

    def _ask(self, prepared: Prepared, scratch: Path | None) -> None:
        try:
            nothing = None
            try:
                proposal = self.proposer.propose(prepared.ctx)
            except NothingEdited as err:  # a declared target's fixed file changed instead: a crash row
                if scratch is None or not self.fixed_is_crash:
                    raise
                proposal, nothing = err.proposal, err
            if scratch is not None:
                prepared.fixed_changed = check_scratch(scratch, prepared.base, proposal, self.edit, self.fixed_is_crash)
            if nothing is not None and not prepared.fixed_changed:
                raise nothing
            base = dict(prepared.ctx.files)
            outside = sorted(set(proposal.files) - set(self.edit))
            if outside and self.fixed_is_crash:
                prepared.fixed_changed = tuple(sorted({*prepared.fixed_changed, *outside}))
                proposal.files = {k: v for k, v in proposal.files.items() if k in self.edit}
            elif outside:
                raise ProposerError(f"the proposal changes {outside[0]}, which is not an edit file "
                                    f"({', '.join(self.edit)})", proposal.usage, proposal.raw)
            if {**base, **proposal.files} == base and not prepared.fixed_changed:
                raise ProposerError(f"the proposal leaves {', '.join(self.edit)} unchanged", proposal.usage,
                                    proposal.raw)
            prepared.proposal = proposal
        except ProposerError as err:
            prepared.error = err
        except Exception as err:  # a bug in a backend must not vanish with the thread
            prepared.error = ProposerError(f"the proposer failed: {type(err).__name__}: {err}")
        except BaseException as exc:  # a Ctrl-C inside the proposer: the loop's thread re-raises it
            prepared.interrupted = exc
        finally:
            prepared.done = True
            self.finished.set()

    @property
    def done(self) -> bool:
        """The ask in flight has finished (take() will not wait)."""
        return self._prepared is not None and self._prepared.done

    def take(self) -> Prepared | None:
        """The prepared ask (waiting for it to finish), or None; the scratch is removed."""
        if self._prepared is None:
            return None
        self._thread.join()
        prepared, self._prepared = self._prepared, None
        self._drop_scratch()
        return prepared

    def cancel(self) -> Usage:
        """Stop an ask in flight (its agent is killed) and drop the scratch worktree. Returns what
        the ask cost as far as known (a finished one's usage; an HTTP call cut off reports none)."""
        prepared, self._prepared = self._prepared, None
        if prepared is None:
            return Usage()
        if self._scratch is not None:
            kill_marked(AGENT_MARKER, str(self._scratch.resolve()), grace=1.0)
        if self._thread is not None:
            self._thread.join(CANCEL_JOIN_SECONDS)
        self._drop_scratch()
        return prepared.usage

    def _drop_scratch(self) -> None:
        if self._scratch is not None and self._repo is not None:
            _remove_worktree(self._repo, self._scratch)
        self._scratch = None

    def clear_scratch(self, repo: Path) -> None:
        """Remove every scratch worktree (left by a killed harness), stopping an agent still in it."""
        if not self.scratch_root.is_dir():
            return
        for path in sorted(self.scratch_root.iterdir()):
            kill_marked(AGENT_MARKER, str(path.resolve()), grace=1.0)
            _remove_worktree(repo, path)


@dataclass
class Ask:
    """An ask in flight: an idea for experiment `number`, or a fix of its crashed trial."""

    kind: str  # "idea" | "fix"
    number: int
    asker: Asker
    record: dict  # proposal.json
    crashed: tuple | None = None  # a fix: the crashed trial (trials.Launch, decide.Trained)
    while_training: bool = False
    again: str = ""  # why this number is asked again: discarded-asked-again | failed-asked-again


@dataclass
class Idea:
    """A proposal ready for a worker."""

    number: int
    prepared: Prepared
    record: dict
    while_training: bool = False
    again: str = ""


@dataclass
class Retry:
    number: int
    record: dict
    again: str


def wants_an_ask(*, speculating: bool, workers: int, free: int, ideas: int, asking: bool,
                 waiting: int, room: int | None, retrying: bool, over_budget: bool) -> bool:
    """Whether to ask for one more idea now. `ideas`: in flight or ready; `waiting`: trials that
    must run before any new idea (reruns, fixes, combinations, confirms)."""
    if (room is not None and room <= 0 and not retrying) or over_budget:  # a retry's number is counted already
        return False
    if speculating:  # a slow proposer: one idea ahead per worker, asked while they train
        return ideas < workers
    if asking:  # an instant proposer: one ask at a time (an idea or a fix), in order
        return False
    return ideas < free - waiting


@dataclass
class Asking:
    """Every ask of one run. Failures are counted here; too many in a row pause new asks
    (trainings go on), for `pause_seconds`, doubling up to `pause_max_seconds`."""

    proposer: object
    scratch_root: Path
    max_failures: int
    pause_seconds: float
    pause_max_seconds: float
    ledger: object  # ledger.Ledger: failures and thrown-away asks are counted in run.json
    view: object  # live.View
    run_dir: Callable[[int], Path]  # results/<tag>/runs/NNNN for an experiment number
    in_flight: list[Ask] = field(default_factory=list)
    ready: list[Idea] = field(default_factory=list)
    retry: list[Retry] = field(default_factory=list)
    failures_in_a_row: int = 0
    pauses: int = 0
    paused_until: float = 0.0
    clock: Callable[[], float] = time.monotonic
    ask_ended: threading.Event = field(default_factory=threading.Event)
    edit: tuple[str, ...] = ("train.py",)  # the files a proposal may change
    fixed_is_crash: bool = False  # a declared target: an idea changing a fixed file is a crash row (Asker)
    exhausted: bool = False  # the last ask failed with proposers.Exhausted

    def wait(self, timeout: float) -> None:
        """Until an ask ends (or `timeout`)."""
        if self.ask_ended.wait(timeout):
            self.ask_ended.clear()

    def start(self, kind: str, number: int, record: dict, ctx: Context, base: str, base_train_py: str,
              repo: Path, crashed: tuple | None = None, while_training: bool = False, again: str = "") -> Ask:
        """Ask in a thread; a scratch worktree git cannot make raises ProposerError."""
        asker = Asker(self.proposer, self.scratch_root, prefix="fix" if kind == "fix" else "ask",
                      finished=self.ask_ended, edit=self.edit, fixed_is_crash=self.fixed_is_crash)
        ask = Ask(kind, number, asker, record, crashed, while_training, again)
        asker.start(ctx, base, base_train_py, repo)
        self.in_flight.append(ask)
        return ask

    def finished(self) -> list[tuple[Ask, Prepared]]:
        done = [ask for ask in self.in_flight if ask.asker.done]
        for ask in done:
            self.in_flight.remove(ask)
        return [(ask, ask.asker.take()) for ask in done]

    def ideas_wanted(self) -> int:
        """Ideas in flight or ready."""
        return len(self.ready) + sum(ask.kind == "idea" for ask in self.in_flight)

    def succeeded(self) -> None:
        self.failures_in_a_row = self.pauses = 0
        self.exhausted = False

    def failed(self, n: int, err: ProposerError, record: dict) -> None:
        """A failed ask: counted (in a row, and its cost in run.json) and kept in proposal.json;
        one too many in a row pauses new asks (run.json says `paused` until they resume)."""
        self.view.failed_cost(self.ledger.count_failed_proposal(err.usage.cost_usd))
        self.exhausted = isinstance(err, Exhausted)  # the loop ends the run once nothing else is left
        record.setdefault("failures", []).append(proposal_log.failure_record(err))
        folder = self.run_dir(n)
        folder.mkdir(parents=True, exist_ok=True)
        proposal_log.write_json(folder / "proposal.json", record)
        self.failures_in_a_row += 1
        self.view.note(f"[{n:04d}] proposer failed ({self.failures_in_a_row} in a row): {err}")
        if self.failures_in_a_row < self.max_failures:
            return
        seconds = min(self.pause_max_seconds, self.pause_seconds * 2**self.pauses)
        self.pauses += 1
        self.failures_in_a_row = 0
        self.paused_until = self.clock() + seconds
        self.ledger.save_state(state="paused")
        self.view.note(f"paused asking: the proposer failed {self.max_failures} times in a row; asking again in "
                       f"{seconds:g} s (trainings go on; Ctrl-C stops; resume later with --resume)")
        self.view.phase(None, "paused", timeout=seconds)

    @property
    def paused(self) -> bool:
        """New asks wait; run.json says `running` again once the pause is over."""
        if self.clock() < self.paused_until:
            return True
        if self.paused_until and self.ledger.state.get("state") == "paused":
            self.ledger.save_state(state="running")
        return False

    def cancel(self) -> tuple[float, list]:
        """Stop every ask (agents killed, scratch worktrees dropped) and forget what is ready:
        (what they cost, the crashed trials whose fix was cut off, as they crashed)."""
        spent, orphans = 0.0, []
        for ask in self.in_flight:
            spent += ask.asker.cancel().cost_usd
            if ask.crashed is not None:
                orphans.append(ask.crashed)
        spent += sum(idea.prepared.usage.cost_usd for idea in self.ready)
        self.in_flight, self.ready, self.retry = [], [], []
        return spent, orphans

    def clear_scratch(self, repo: Path) -> None:
        Asker(self.proposer, self.scratch_root).clear_scratch(repo)


def check_scratch(scratch: Path, base: str, proposal: Proposal, edit: tuple[str, ...] = ("train.py",),
                  fixed_is_crash: bool = False) -> tuple[str, ...]:
    """An agent's commits in the scratch are undone (files kept); a change to any file but the
    edit files (the lab: train.py), or an edit file that is no longer a regular file, is a failed
    proposal. With `fixed_is_crash` (a declared target's idea), changed or deleted tracked files
    outside `edit` are returned instead (a crash row names them); new files stay a failure."""
    if _git(scratch, "rev-parse", "HEAD").strip() != _git(scratch, "rev-parse", base).strip():
        _git(scratch, "reset", "--mixed", "--quiet", base)
    for name in edit:
        path = scratch / name
        if path.is_symlink() or not path.is_file():
            raise ProposerError(f"the proposer replaced {name} with a symlink or a non-file; it must stay a file",
                                proposal.usage, proposal.raw)
    out = _git(scratch, "status", "--porcelain=v1", "-z", "--untracked-files=all", "--ignored", "--no-renames")
    entries = [e for e in out.split("\0") if len(e) > 3]
    tracked = sorted({e[3:] for e in entries if e[:2] not in ("??", "!!")} - set(edit)) if fixed_is_crash else []
    stray = sorted(p for p in {e[3:] for e in entries} if p not in edit and p not in tracked)
    if stray:
        shown = ", ".join(stray[:5]) + (f" and {len(stray) - 5} more" if len(stray) > 5 else "")
        raise ProposerError(f"the proposer changed files other than {', '.join(edit)}: " + shown, proposal.usage,
                            proposal.raw)
    return tuple(tracked)


# ---------------------------------------------------------------------------
# Re-applying an idea on a new best
# ---------------------------------------------------------------------------


def changed_ranges(old: str, new: str) -> list[tuple[int, int]]:
    """The line ranges [start, end) of `old` that `new` replaces, deletes or inserts at."""
    matcher = difflib.SequenceMatcher(None, old.splitlines(), new.splitlines(), autojunk=False)
    return [(i1, i2) for tag, i1, i2, _, _ in matcher.get_opcodes() if tag != "equal"]


def overlaps(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> bool:
    """Two hunks overlap when their ranges share a line or touch (an insertion next to an edit
    counts: the two ideas work on the same spot)."""
    return any(a1 <= b2 and b1 <= a2 for a1, a2 in a for b1, b2 in b)


def rebase_train_py(old_base: str, new_base: str, proposed: str) -> str | None:
    """`proposed` (an edit of `old_base`) re-applied on `new_base` (another edit of it), or None
    when the two edits touch the same lines or the 3-way merge has conflicts."""
    if overlaps(changed_ranges(old_base, new_base), changed_ranges(old_base, proposed)):
        return None
    with tempfile.TemporaryDirectory(prefix="autoresearch-rebase-") as tmp:
        paths = [Path(tmp) / name for name in ("ours", "base", "theirs")]
        for path, text in zip(paths, (new_base, old_base, proposed)):
            path.write_text(text, encoding="utf-8")
        done = subprocess.run(["git", "merge-file", "-p", "--quiet", *map(str, paths)],
                              capture_output=True, text=True)
    if done.returncode != 0:  # > 0: that many conflicts; < 0: an error
        return None
    return done.stdout


def rebase_files(old_base: dict[str, str], new_base: dict[str, str], proposed: dict[str, str]) -> dict[str, str] | None:
    """rebase_train_py for each file `proposed` changes (path -> text): the proposal's files
    re-applied on `new_base`, or None when any of them overlaps or does not merge."""
    merged = {}
    for name, text in proposed.items():
        out = rebase_train_py(old_base[name], new_base[name], text)
        if out is None:
            return None
        merged[name] = out
    return merged


# ---------------------------------------------------------------------------
# git, in a scratch worktree
# ---------------------------------------------------------------------------


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", "-c", "core.hooksPath=/dev/null", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise ProposerError(f"git {args[0]} in {cwd} failed: {done.stderr.strip()[:200]}")
    return done.stdout


def _remove_worktree(repo: Path, path: Path) -> None:
    subprocess.run(["git", "worktree", "remove", "--force", "--force", str(path)], cwd=repo, capture_output=True)
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
