"""The invariants of issue #5, checked after every fault, signal and kill case.

    user = UserCheckout.take(lab)      # before the run: every byte of the user's checkout
    ... run, crash, kill, resume ...
    check_invariants(lab, "t", user)   # after it: all of the below, or an AssertionError

- results.tsv parses; one row per finished experiment, numbered 0, 1, 2, ... (none lost, none
  duplicated), every line complete (none torn), each row's parent the best commit of its time.
- The run branch tip is the best kept commit (the base commit before any keep); the worktree is
  on that branch, its train.py is that commit's, and nothing in it is changed or untracked.
- The user's checkout is byte-for-byte what it was: HEAD, branch, index, and every file outside
  .git, results/ and .autoresearch/ (uncommitted and untracked files included).
- No secret of SECRETS appears in any file under results/ (run logs, proposals, the rows) or in
  the worktree's train.py; the lab's train.py prints its whole environment into run.log, so this also
  proves the training process never saw them.
- No process is left running in the lab (training, its children, an agent).

Also used by bench/crash_consistency.py, which counts instead of asserting.
"""

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import git
import psutil

from autoresearch.records import COLUMNS, HEADER, ResultsFile, Row, RunState

# Set in the harness's environment by the tests; none may reach results/ or the training process.
SECRETS = {
    "OPENAI_API_KEY": "sk-test-SECRET-openai-0001",
    "ANTHROPIC_API_KEY": "sk-ant-test-SECRET-anthropic-0002",
    "HF_TOKEN": "hf_testSECREThuggingface0003",
    "GITHUB_TOKEN": "ghp_testSECRETgithub0004",
    "WANDB_API_KEY": "test-SECRET-wandb-0005",
    "DATABASE_PASSWORD": "test-SECRET-password-0006",
}

SKIPPED = (".git", "results", ".autoresearch")


@dataclass(frozen=True)
class UserCheckout:
    """What the user sees in their checkout: HEAD, branch, index and the bytes of every file."""

    head: str
    branch: str
    index: str  # `git ls-files --stage`: what is staged, with blob hashes
    files: tuple  # (relative path, sha256 or link target) for every file outside SKIPPED

    @classmethod
    def take(cls, root: Path) -> "UserCheckout":
        root = Path(root)
        repo = git.Repo(root)
        try:
            files = []
            for dirpath, dirnames, filenames in os.walk(root):
                rel_dir = Path(dirpath).relative_to(root)
                if rel_dir == Path("."):
                    dirnames[:] = [d for d in dirnames if d not in SKIPPED]
                for name in dirnames + filenames:
                    path = Path(dirpath) / name
                    rel = str(rel_dir / name)
                    if path.is_symlink():
                        files.append((rel, "link:" + os.readlink(path)))
                    elif path.is_file():
                        files.append((rel, hashlib.sha256(path.read_bytes()).hexdigest()))
            return cls(
                head=repo.head.commit.hexsha,
                branch=repo.active_branch.name,
                index=repo.git.ls_files("--stage"),
                files=tuple(sorted(files)),
            )
        finally:
            repo.close()

    def diff(self, other: "UserCheckout") -> list[str]:
        """What changed between two snapshots, as short lines (empty if nothing)."""
        out = []
        for name in ("head", "branch", "index"):
            if getattr(self, name) != getattr(other, name):
                out.append(f"{name} changed")
        mine, theirs = dict(self.files), dict(other.files)
        for path in sorted(set(mine) | set(theirs)):
            if mine.get(path) != theirs.get(path):
                out.append(f"{path}: {'added' if path not in mine else 'removed' if path not in theirs else 'changed'}")
        return out


def paths(root: Path, tag: str) -> dict[str, Path]:
    run = Path(root) / "results" / tag
    return {
        "dir": run,
        "results": run / "results.tsv",
        "state": run / "run.json",
        "training": run / "training.json",
        "worktree": Path(root) / ".autoresearch" / "worktrees" / tag,
    }


def check_rows(root: Path, tag: str = "t", torn_ok: bool = False) -> list[Row]:
    """results.tsv: parses, unique increasing experiment numbers (one cut off by a stop stays
    unused), complete lines, honest parents."""
    p = paths(root, tag)
    if not p["results"].exists():
        return []
    text = p["results"].read_bytes().decode("utf-8")
    lines = text.split("\n")
    assert lines[0] + "\n" == HEADER, f"bad header: {lines[0][:80]!r}"
    if not torn_ok:
        assert lines[-1] == "", f"torn last line: {lines[-1][:80]!r}"
    for number, line in enumerate(lines[1:-1], start=2):
        assert len(line.split("\t")) == len(COLUMNS), f"line {number} has {len(line.split(chr(9)))} fields"
    rows = ResultsFile(p["results"]).rows()
    state = RunState.load(p["state"])
    greedy = state.get("keep_rule", "greedy") == "greedy"
    experiments: dict[int, list[Row]] = {}
    for r in rows:
        experiments.setdefault(r.experiment, []).append(r)
    numbers = list(experiments)
    assert numbers == sorted(set(numbers)), f"experiment numbers not increasing: {numbers}"
    base = _short(root, state.get("base_commit", ""))
    best_commit, best = base, None
    for n, trials in experiments.items():
        assert [t.trial or 1 for t in trials] == list(range(1, len(trials) + 1)), f"experiment {n}: trials {trials}"
        assert all(t.status == "trial" for t in trials[:-1]), f"experiment {n}: a verdict before its last trial"
        assert len({(t.commit, t.parent) for t in trials}) == 1, f"experiment {n}: trials of different commits"
        last = trials[-1]
        assert last.status in ("keep", "discard", "crash", "trial"), last
        if last.status == "trial":
            assert n == numbers[-1], f"experiment {n} has no verdict but later ones do"
        assert last.parent == best_commit, f"experiment {n}: parent {last.parent}, best was {best_commit}"
        values = [t.val_bpb for t in trials if t.status != "crash"]
        mean = sum(values) / len(values) if values else None
        if last.status == "crash":
            assert last.reason and last.val_bpb == 0.0, last
        elif last.status == "keep":
            assert best is None or mean < best, f"experiment {n} kept without beating {best}"
            best_commit, best = last.commit, mean
        elif last.status == "discard" and greedy:
            assert best is not None and mean >= best, f"experiment {n} discarded though better"
    return rows


def best_commit(root: Path, tag: str, rows: list[Row]) -> str:
    kept = [r for r in rows if r.status == "keep"]  # a keep is the last row of its experiment
    if kept:
        return kept[-1].commit
    return _short(root, RunState.load(paths(root, tag)["state"]).get("base_commit", ""))


def check_branch(root: Path, tag: str, rows: list[Row]) -> None:
    """Branch tip = best kept commit; the worktree sits on it, clean, with that train.py."""
    p = paths(root, tag)
    user = git.Repo(root)
    wt = git.Repo(p["worktree"])
    try:
        best = best_commit(root, tag, rows)
        tip = user.commit(f"refs/heads/autoresearch/{tag}").hexsha
        assert tip[:7] == best, f"branch tip {tip[:7]} is not the best kept commit {best}"
        assert not wt.head.is_detached and wt.active_branch.name == f"autoresearch/{tag}"
        assert wt.head.commit.hexsha == tip
        status = wt.git.status("--porcelain", "--ignored", "--untracked-files=all")
        assert status == "", f"worktree not clean:\n{status}"
        committed = wt.commit(tip).tree["train.py"].data_stream.read()
        assert (p["worktree"] / "train.py").read_bytes() == committed
        assert not (p["worktree"] / "train.py").is_symlink()
    finally:
        wt.close()
        user.close()


def secrets_found(root: Path, tag: str, secrets=None) -> list[str]:
    """`path: NAME` for every secret value found in results/<tag>/ or the worktree's train.py
    (the rest of the worktree is checked to be the committed lab by check_branch)."""
    secrets = SECRETS if secrets is None else secrets
    p = paths(root, tag)
    files = [f for f in p["dir"].rglob("*") if f.is_file() and not f.is_symlink()] if p["dir"].exists() else []
    if (p["worktree"] / "train.py").is_file():
        files.append(p["worktree"] / "train.py")
    found = []
    for path in files:
        data = path.read_bytes()
        found += [f"{path}: {name}" for name, value in secrets.items() if value.encode() in data]
    return found


def lab_processes(root: Path) -> list[psutil.Process]:
    """Live processes (other than this one) whose working directory is inside the lab.

    GitPython's `git cat-file` helpers of an in-process run (children of this process) are not
    counted: they belong to the test, not to the run."""
    root_s = str(Path(root).resolve())
    out = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            cwd = proc.cwd()
            if proc.ppid() == os.getpid() and "cat-file" in proc.cmdline():
                continue
        except psutil.Error:
            continue
        if cwd == root_s or cwd.startswith(root_s + os.sep):
            out.append(proc)
    return out


def wait_no_lab_processes(root: Path, seconds: float = 15.0) -> list[psutil.Process]:
    """Lab processes still alive after `seconds` (killed processes take a moment to be reaped)."""
    deadline = time.monotonic() + seconds
    while True:
        left = lab_processes(root)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def check_invariants(root: Path, tag: str = "t", user: UserCheckout | None = None,
                     rows: int | None = None, secrets=None) -> list[Row]:
    """Every invariant after a case has ended (the harness is not running); returns the rows."""
    root = Path(root)
    got = check_rows(root, tag)
    if rows is not None:
        assert len(got) == rows, f"{len(got)} rows, expected {rows}: {[(r.experiment, r.status) for r in got]}"
    check_branch(root, tag, got)
    if user is not None:
        changed = user.diff(UserCheckout.take(root))
        assert not changed, f"the user's checkout changed: {changed}"
    leaked = secrets_found(root, tag, secrets)
    assert not leaked, f"secrets leaked: {leaked}"
    left = wait_no_lab_processes(root)
    assert not left, f"processes left running: {[(p.pid, p.cmdline()) for p in left]}"
    state = RunState.load(paths(root, tag)["state"])
    assert RunState.effective_state(state) in ("done", "stopped"), state.get("state")
    left_files = list((Path(root) / ".autoresearch" / "workers" / tag).glob("*/*/training.json"))
    assert not paths(root, tag)["training"].exists() and not left_files, "training.json left behind"
    return got


def _short(root: Path, rev: str) -> str:
    if not rev:
        return ""
    repo = git.Repo(root)
    try:
        return repo.commit(rev).hexsha[:7]
    finally:
        repo.close()
