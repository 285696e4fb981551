"""The run's git side: branch `autoresearch/<tag>` checked out in a worktree of its own.

Everything the loop does to git happens in that worktree (`.autoresearch/worktrees/<tag>`, an
ignored folder of the user's repository), so the user's checkout — its branch, index and files,
uncommitted edits included — is never touched. The only writes outside the worktree are git's
own bookkeeping under .git/: the branch ref, the worktree's metadata, and (if the user's
ignore rules do not already cover it) one line `/.autoresearch/` in .git/info/exclude.
"""

import os
import shutil
import tempfile
import time
from pathlib import Path

import git
import psutil
from git.exc import GitCommandError, InvalidGitRepositoryError, NoSuchPathError

from autoresearch.config import bad_tag, check_tag
from autoresearch.errors import AutoresearchError

ACTOR = git.Actor("autoresearch", "autoresearch@localhost")
WORKTREES = Path(".autoresearch") / "worktrees"

# Our commits must not depend on (or run) the user's hooks, signing setup or identity.
_CONFIG = ["core.hooksPath=/dev/null", "commit.gpgSign=false", "core.quotePath=false"]
_IDENTITY = {
    "GIT_AUTHOR_NAME": ACTOR.name,
    "GIT_AUTHOR_EMAIL": ACTOR.email,
    "GIT_COMMITTER_NAME": ACTOR.name,
    "GIT_COMMITTER_EMAIL": ACTOR.email,
}


def _user_repo(repo_root: Path) -> git.Repo:
    root = Path(repo_root).resolve()
    try:
        repo = git.Repo(root, search_parent_directories=True)
    except (InvalidGitRepositoryError, NoSuchPathError):
        raise AutoresearchError(
            f"{root} is not a git repository; run `git init` and commit prepare.py, train.py and program.md"
        ) from None
    if repo.bare or repo.working_tree_dir is None:
        raise AutoresearchError(f"{root} is a bare git repository; run inside a checkout")
    top = Path(repo.working_tree_dir).resolve()
    if top != root:
        raise AutoresearchError(f"{root} is not the top of its git repository ({top}); run from {top}")
    if not repo.head.is_valid():
        raise AutoresearchError(f"{root} has no commits yet; commit prepare.py, train.py and program.md first")
    return repo


def _check_tag(repo: git.Repo, tag: str) -> str:
    branch = f"autoresearch/{check_tag(tag)}"
    try:
        repo.git.check_ref_format(f"refs/heads/{branch}")
    except GitCommandError:
        raise bad_tag(tag) from None  # git's own rules refused it
    return branch


def _branch_exists(repo: git.Repo, branch: str) -> bool:
    try:
        repo.git.show_ref("--verify", "--quiet", f"refs/heads/{branch}")
        return True
    except GitCommandError:
        return False


def ensure_ignored(repo: git.Repo) -> None:
    """Make .autoresearch/ ignored, via .git/info/exclude if the user's rules do not already."""
    try:
        repo.git.check_ignore("-q", "--no-index", str(WORKTREES / "probe"))
        return
    except GitCommandError:
        pass
    exclude = Path(repo.common_dir) / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    text = exclude.read_text(encoding="utf-8") if exclude.exists() else ""
    sep = "" if not text or text.endswith("\n") else "\n"
    with open(exclude, "a", encoding="utf-8") as f:
        f.write(f"{sep}# autoresearch's worktrees and scratch\n/.autoresearch/\n")


def _git_error(exc: GitCommandError) -> str:
    """git's own message, one line."""
    lines = [line.strip() for line in str(exc.stderr or exc).splitlines() if line.strip()]
    message = lines[-1] if lines else str(exc)
    return message.removeprefix("stderr:").strip().strip("'").removeprefix("fatal:").strip()


class Workspace:
    """One run's branch and worktree. All git operations of the loop go through here."""

    def __init__(self, root: Path, tag: str, branch: str, path: Path):
        self.root = root  # the user's checkout
        self.tag = tag
        self.branch = branch
        self.path = path
        self.repo = git.Repo(path)
        self.repo.git.set_persistent_git_options(c=_CONFIG)
        self._git = self.repo.git

    @classmethod
    def create(cls, repo_root: Path, tag: str) -> "Workspace":
        """A new branch `autoresearch/<tag>` at the user's HEAD, checked out in a new worktree."""
        user = _user_repo(repo_root)
        branch = _check_tag(user, tag)
        if _branch_exists(user, branch):
            raise AutoresearchError(
                f"branch {branch} already exists: add --resume to continue run '{tag}', or pick another --tag"
            )
        root = Path(user.working_tree_dir).resolve()
        path = root / WORKTREES / tag
        if path.exists():
            raise AutoresearchError(f"{path} already exists; remove it or pick another --tag")
        _unregister(user, path)
        ensure_ignored(user)
        try:
            user.git.worktree("add", "--quiet", "-b", branch, str(path), user.head.commit.hexsha)
        except GitCommandError as exc:
            raise AutoresearchError(f"cannot create the worktree for {branch}: {_git_error(exc)}") from None
        return cls(root, tag, branch, path)

    @classmethod
    def open(cls, repo_root: Path, tag: str) -> "Workspace":
        """The existing run `tag`; its worktree is re-created if it went missing."""
        user = _user_repo(repo_root)
        branch = _check_tag(user, tag)
        if not _branch_exists(user, branch):
            raise AutoresearchError(f"no run '{tag}': branch {branch} does not exist (start it without --resume)")
        root = Path(user.working_tree_dir).resolve()
        path = root / WORKTREES / tag
        if not _is_worktree_of(path, branch):
            if path.exists():  # our own leftover, broken or on the wrong commit: start afresh
                shutil.rmtree(path)
            _unregister(user, path)
            ensure_ignored(user)
            try:
                user.git.worktree("add", "--quiet", str(path), branch)
            except GitCommandError as exc:
                raise AutoresearchError(f"cannot check out {branch} in {path}: {_git_error(exc)}") from None
        workspace = cls(root, tag, branch, path)
        workspace.clear_stale_locks()
        return workspace

    @staticmethod
    def exists(repo_root: Path, tag: str) -> bool:
        """True if run `tag` has a branch (a bad tag or a non-repository is an error)."""
        user = _user_repo(repo_root)
        return _branch_exists(user, _check_tag(user, tag))

    def clear_stale_locks(self, wait: float = 10.0) -> list[Path]:
        """Remove the lock files a git killed mid-write left behind (kill -9 of the harness's
        process group): the worktree's index.lock and HEAD.lock and the branch's ref lock.
        Without this every later git command of the run fails. Only called under the run lock,
        once no git process works in the worktree any more (up to `wait` seconds). Returns the
        removed paths."""
        gitdir, common = Path(self.repo.git_dir), Path(self.repo.common_dir)
        locks = [gitdir / "index.lock", gitdir / "HEAD.lock", common / "refs" / "heads" / f"{self.branch}.lock"]
        if not any(lock.exists() for lock in locks):
            return []
        deadline = time.monotonic() + wait
        while _git_working_in(self.path) and time.monotonic() < deadline:
            time.sleep(0.05)
        removed = []
        for lock in locks:
            try:
                lock.unlink()
                removed.append(lock)
            except FileNotFoundError:
                pass
        return removed

    # --- reading -----------------------------------------------------------

    def head(self) -> str:
        """Full sha of the branch tip."""
        return self.repo.commit(f"refs/heads/{self.branch}").hexsha

    def short(self, rev: str = "HEAD") -> str:
        return self.repo.commit(rev).hexsha[:7]

    def read(self, name: str = "train.py") -> str:
        with open(self.path / name, encoding="utf-8", newline="") as f:
            return f.read()

    def read_at(self, rev: str, name: str = "train.py") -> str:
        """A file as committed at `rev`."""
        return self.repo.commit(rev).tree[name].data_stream.read().decode("utf-8")

    def read_files_at(self, rev: str, names) -> dict[str, str]:
        """Several files as committed at `rev`, by path."""
        return {name: self.read_at(rev, name) for name in names}

    def tracked_bytes_at(self, rev: str) -> dict[str, bytes]:
        """Every file of `rev`'s tree, by path (what a worker needs to run a declared target)."""
        return {blob.path: blob.data_stream.read() for blob in self.repo.commit(rev).tree.traverse()
                if blob.type == "blob"}

    def diff(self, a: str, b: str) -> str:
        """Unified diff from commit `a` to commit `b`."""
        return self._git.diff("--no-color", "--no-ext-diff", a, b, strip_newline_in_stdout=False)

    def at(self, commit: str) -> bool:
        """True if the worktree's HEAD is the run branch and the branch is at `commit` (nothing
        committed, reset or checked out behind our back)."""
        try:
            ref = self._git.symbolic_ref("--quiet", "HEAD")
        except GitCommandError:  # detached
            return False
        return ref == f"refs/heads/{self.branch}" and self.head() == self.repo.commit(commit).hexsha

    def stray_changes(self, allow: tuple[str, ...] = ()) -> list[str]:
        """Paths (relative to the worktree) that differ from HEAD, except those in `allow`.

        Modified, deleted and staged tracked files, untracked files, and ignored files too (a
        .pyc, a checkpoint train.py wrote): anything `revert_to` would have to undo.
        """
        out = self._git.status(
            "--porcelain=v1", "-z", "--untracked-files=all", "--ignored", "--no-renames",
            strip_newline_in_stdout=False,
        )
        paths = {entry[3:] for entry in out.split("\0") if len(entry) > 3}
        return sorted(p for p in paths if p not in allow)

    # --- changing (the worktree only) --------------------------------------

    def write_train_py(self, text: str) -> None:
        path = self.path / "train.py"
        if path.is_symlink():  # never write through a link to somewhere outside the worktree
            path.unlink()
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text)

    def commit(self, message: str) -> str:
        """Commit train.py alone (whatever else changed) as autoresearch; returns the full sha.

        `message`: first line the description, then a blank line and the hypothesis.
        """
        self._git.add("--", "train.py")
        self._git.commit(
            "--quiet", "--no-verify", "--allow-empty", "--allow-empty-message",
            "--cleanup=whitespace", "-m", message, "--only", "--", "train.py",
            env=_IDENTITY,
        )
        return self.head()

    def commit_on(self, parent: str, files: str | dict[str, str], message: str) -> str:
        """A commit whose tree is `parent`'s with `files` ({path: text}; a str is train.py's text)
        replaced, made without touching the worktree, the index or any branch (candidates: many at
        once, each on the best it was built on). Paths may sit in subfolders; a file keeps its
        mode. Returns the short sha; the branch moves only on a keep."""
        if isinstance(files, str):
            files = {"train.py": files}
        with tempfile.TemporaryDirectory(prefix="autoresearch-index-") as tmp:
            env = {**_IDENTITY, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
            self._git.read_tree(parent, env=env)
            for name, text in sorted(files.items()):
                blob = self._git.hash_object("-w", "--stdin", istream=_text_stream(text))
                listed = self._git.ls_tree(parent, "--", name).split()
                mode = listed[0] if listed and listed[0] in ("100644", "100755") else "100644"
                self._git.update_index("--add", "--cacheinfo", f"{mode},{blob},{name}", env=env)
            tree = self._git.write_tree(env=env)
        sha = self._git.commit_tree(tree.strip(), "-p", self.repo.commit(parent).hexsha, "-m", message, env=_IDENTITY)
        return self.short(sha.strip())

    def rewind(self, commit: str) -> bool:
        """If HEAD is no longer the run branch at `commit` (someone committed, reset or switched
        branches in the worktree), put it back there, keeping the files: what they changed then
        shows as changes against `commit`. True if it had moved."""
        if self.at(commit):
            return False
        self._git.symbolic_ref("HEAD", f"refs/heads/{self.branch}")
        self._git.reset("--mixed", "--quiet", commit)
        return True

    def revert_to(self, commit: str) -> None:
        """Branch tip and worktree back to `commit`; everything untracked or ignored is deleted.
        HEAD is put back on the run branch too, should something have detached or switched it."""
        self._git.checkout("--quiet", "--force", "-B", self.branch, commit)
        self._git.clean("-ffdxq")

    def close(self) -> None:
        """Stop GitPython's helper processes (the workspace stays usable; they restart on demand)."""
        self.repo.close()


def _is_worktree_of(path: Path, branch: str) -> bool:
    if not (path / ".git").is_file():
        return False
    try:
        repo = git.Repo(path)
        try:
            return repo.head.is_detached is False and repo.active_branch.name == branch
        finally:
            repo.close()
    except (InvalidGitRepositoryError, NoSuchPathError, TypeError, ValueError):
        return False


def _git_working_in(path: Path) -> bool:
    """True if a git process other than our own helpers runs in `path` (e.g. a git command a
    killed harness started, still finishing)."""
    me, target = os.getpid(), str(Path(path).resolve())
    for proc in psutil.process_iter(["name"]):
        try:
            if proc.info["name"] != "git" or proc.ppid() == me or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.cwd() == target:
                return True
        except psutil.Error:
            continue
    return False


def _unregister(user: git.Repo, path: Path) -> None:
    """Forget our worktree at `path` if git still lists it (its folder may be gone or broken).

    Deliberately not `git worktree prune`: that would also forget the user's own worktrees that
    merely sit on a drive that is not mounted right now.
    """
    listed = user.git.worktree("list", "--porcelain").splitlines()
    if f"worktree {path}" not in listed:
        return
    try:
        user.git.worktree("remove", "--force", "--force", str(path))
    except GitCommandError as exc:
        raise AutoresearchError(f"cannot clear the old worktree {path}: {_git_error(exc)}") from None


def _text_stream(text: str):
    """`text` as a real file (git reads it as its stdin), bytes as they are."""
    f = tempfile.TemporaryFile()
    f.write(text.encode("utf-8"))
    f.seek(0)
    return f
