"""Speculative proposals: ask for experiment k+1 while experiment k trains (issue 10).

A proposal takes minutes with an LLM or an agent, training takes minutes too; done one after the
other the GPU sits idle while the proposer thinks. The Speculator asks for the next idea in a
thread, against the best commit as it stands while k trains (k shown to the proposer as
`running`), in a scratch worktree of its own, so an external agent's edits never touch the
training worktree and training's integrity checks never see them.

When k is decided, the loop takes the prepared idea:

    used                   the best did not move (k was discarded or crashed): train it as is
    rebased                k was kept: the idea's change re-applied on the new best by a 3-way
                           merge (git merge-file), allowed only when its hunks do not touch k's
    discarded-asked-again  k was kept and the idea overlaps k's change or does not merge: its
                           cost is counted (run.json proposal_cost_usd) and the proposer is asked again
    failed-asked-again     the speculative ask failed (a ProposerError): counted like any failure
    fresh                  nothing was prepared (the first experiment, --no-speculate, a limit)

    spec = Speculator(proposer, scratch_root)
    spec.start(ctx, base_commit, base_train_py, repo_worktree)   # ctx.workdir is set to the scratch
    prepared = spec.take()        # waits for it; None if nothing was started
    spec.cancel()                 # Ctrl-C / the end: stop an agent, drop the scratch worktree
"""

import difflib
import shutil
import subprocess
import tempfile
import threading
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from autoresearch.process import kill_marked
from autoresearch.proposers import Context, Proposal, ProposerError, Usage
from autoresearch.proposers.command import AGENT_MARKER

SPECULATIVE_PROPOSERS = ("openai", "anthropic", "command")  # those that take time; not hparam/optuna
CANCEL_JOIN_SECONDS = 10.0  # a cancelled agent is killed at once; an HTTP call may not return


def speculates(proposer) -> bool:
    """Whether speculation pays for this proposer: a `speculative` attribute, else its name."""
    flag = getattr(proposer, "speculative", None)
    return bool(flag) if flag is not None else getattr(proposer, "name", "") in SPECULATIVE_PROPOSERS


@dataclass
class Prepared:
    """A speculative ask, finished: a proposal or the error, and what it was built on."""

    number: int  # the experiment it was asked for
    base: str  # the best commit (short) it was built on
    base_train_py: str
    ctx: Context
    proposal: Proposal | None = None
    error: ProposerError | None = None

    @property
    def usage(self) -> Usage:
        if self.proposal is not None:
            return self.proposal.usage
        return self.error.usage if self.error is not None else Usage()


class Speculator:
    """At most one speculative ask at a time, in a thread, in a scratch worktree."""

    def __init__(self, proposer, scratch_root: Path, prefix: str = "spec"):
        self.proposer = proposer
        self.prefix = prefix  # the scratch worktree's name: spec-NNNN-xxxxxx (fix-... for a fix)
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
        """Ask for `ctx.experiment` in a new scratch worktree of `base` (a worktree of `repo`)."""
        self._drop_scratch()  # its own last one only: other speculators share the scratch root
        path = self.scratch_root / f"{self.prefix}-{ctx.experiment:04d}-{uuid.uuid4().hex[:6]}"
        _git(repo, "worktree", "add", "--quiet", "--detach", str(path), base)
        self._scratch, self._repo = path, Path(repo)
        ctx = replace(ctx, workdir=path, train_py=base_train_py)
        prepared = Prepared(ctx.experiment, base, base_train_py, ctx)
        self._prepared = prepared
        self._thread = threading.Thread(target=self._ask, args=(prepared, path), daemon=True,
                                        name=f"speculate-{ctx.experiment}")
        self._thread.start()

    def _ask(self, prepared: Prepared, scratch: Path) -> None:
        try:
            proposal = self.proposer.propose(prepared.ctx)
            check_scratch(scratch, prepared.base, proposal)
            if proposal.train_py == prepared.base_train_py:
                raise ProposerError("the proposal leaves train.py unchanged", proposal.usage, proposal.raw)
            prepared.proposal = proposal
        except ProposerError as err:
            prepared.error = err
        except Exception as err:  # a bug in a backend must not vanish with the thread
            prepared.error = ProposerError(f"speculative proposal failed: {type(err).__name__}: {err}")

    @property
    def done(self) -> bool:
        """The ask in flight has finished (take() will not wait)."""
        return self._prepared is not None and self._thread is not None and not self._thread.is_alive()

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


def check_scratch(scratch: Path, base: str, proposal: Proposal) -> None:
    """An agent's commits in the scratch are undone (files kept); a change to any file but
    train.py, or a train.py that is no longer a regular file, is a failed proposal."""
    if _git(scratch, "rev-parse", "HEAD").strip() != _git(scratch, "rev-parse", base).strip():
        _git(scratch, "reset", "--mixed", "--quiet", base)
    train = scratch / "train.py"
    if train.is_symlink() or not train.is_file():
        raise ProposerError("the proposer replaced train.py with a symlink or a non-file; it must stay a file",
                            proposal.usage, proposal.raw)
    out = _git(scratch, "status", "--porcelain=v1", "-z", "--untracked-files=all", "--ignored", "--no-renames")
    stray = sorted(p for p in {e[3:] for e in out.split("\0") if len(e) > 3} if p != "train.py")
    if stray:
        shown = ", ".join(stray[:5]) + (f" and {len(stray) - 5} more" if len(stray) > 5 else "")
        raise ProposerError("the proposer changed files other than train.py: " + shown, proposal.usage, proposal.raw)


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
