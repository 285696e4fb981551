"""Workspace on real git repositories: the run branch and worktree, and the user's untouched checkout."""

import hashlib
import os
import shutil
from pathlib import Path

import git
import pytest

from autoresearch.errors import AutoresearchError
from autoresearch.workspace import ACTOR, Workspace

TRAIN = 'DEPTH = 8\nMATRIX_LR = 0.04  # Muon LR\nprint("---")\nprint("val_bpb: 1.0")\n'


@pytest.fixture
def lab(tmp_repo) -> Path:
    """A user's lab repository with one commit, an uncommitted program.md edit, a staged README
    change and an untracked file: the state a user is in when they start a run."""
    root = Path(tmp_repo.working_tree_dir)
    (root / "prepare.py").write_text("TIME_BUDGET = 300\n")
    (root / "train.py").write_text(TRAIN)
    (root / "program.md").write_text("# program\nbe bold\n")
    (root / "README.md").write_text("readme\n")
    (root / ".gitignore").write_text("__pycache__/\n*.bin\n")  # does NOT ignore .autoresearch/
    tmp_repo.index.add(["prepare.py", "train.py", "program.md", "README.md", ".gitignore"])
    tmp_repo.index.commit("lab")
    (root / "program.md").write_text("# program\nbe bold\nnew idea, not committed\n")
    (root / "README.md").write_text("readme, staged edit\n")
    tmp_repo.index.add(["README.md"])
    (root / "notes.txt").write_text("untracked notes\n")
    (root / "weights.bin").write_bytes(b"\0ignored\0")
    return root


def snapshot(root: Path) -> dict[str, str]:
    """Hash of every file of the user's checkout (untracked and ignored too) plus index and HEAD."""
    files = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith((".git/", ".autoresearch/")) or rel in (".git", ".autoresearch") or not path.is_file():
            continue
        files[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    files[".git/index"] = hashlib.sha256((root / ".git" / "index").read_bytes()).hexdigest()
    files[".git/HEAD"] = (root / ".git" / "HEAD").read_text()
    files["main"] = git.Repo(root).commit("refs/heads/main").hexsha
    return files


def user_status(root: Path) -> str:
    """What the user sees in `git status` (this refreshes stat data in the index, so call it
    before taking a snapshot)."""
    return git.Repo(root).git.status("--porcelain", "--untracked-files=all")


def test_create_makes_branch_and_worktree_at_users_head(lab):
    head = git.Repo(lab).head.commit.hexsha
    ws = Workspace.create(lab, "mar5")
    assert ws.branch == "autoresearch/mar5"
    assert ws.path == lab / ".autoresearch" / "worktrees" / "mar5"
    assert ws.head() == head and ws.short() == head[:7]
    assert ws.read() == TRAIN
    assert ws.read("program.md") == "# program\nbe bold\n"  # committed text, not the user's edit
    assert Workspace.exists(lab, "mar5") and not Workspace.exists(lab, "other")
    assert ws.stray_changes() == []


def test_worktree_folder_is_hidden_from_the_users_status(lab):
    before = user_status(lab)
    Workspace.create(lab, "t1")
    assert user_status(lab) == before
    assert "/.autoresearch/" in (lab / ".git" / "info" / "exclude").read_text()


def test_existing_ignore_rule_is_respected_without_touching_exclude(tmp_repo):
    root = Path(tmp_repo.working_tree_dir)
    (root / "train.py").write_text(TRAIN)
    (root / ".gitignore").write_text(".autoresearch/\n")
    tmp_repo.index.add(["train.py", ".gitignore"])
    tmp_repo.index.commit("lab")
    exclude = root / ".git" / "info" / "exclude"
    before = exclude.read_text() if exclude.exists() else None
    Workspace.create(root, "t")
    assert (exclude.read_text() if exclude.exists() else None) == before


def test_existing_branch_is_refused_with_a_resume_hint(lab):
    Workspace.create(lab, "mar5")
    with pytest.raises(AutoresearchError, match=r"autoresearch/mar5 already exists: add --resume"):
        Workspace.create(lab, "mar5")


@pytest.mark.parametrize("tag", ["", "a b", "../up", "x..y", "-x", "x.lock", "a/b", "t~1", "ü", "x" * 65, "end."])
def test_bad_tags_are_refused(lab, tag):
    with pytest.raises(AutoresearchError, match="bad --tag"):
        Workspace.create(lab, tag)
    assert not (lab / ".autoresearch").exists()


def test_not_a_repository_or_no_commits_is_refused(tmp_path, tmp_repo):
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(AutoresearchError, match="not a git repository"):
        Workspace.create(plain, "t")
    with pytest.raises(AutoresearchError, match="no commits yet"):
        Workspace.create(Path(tmp_repo.working_tree_dir), "t")


def test_a_subfolder_of_a_repository_is_refused_with_the_top(lab):
    sub = lab / "sub"
    sub.mkdir()
    with pytest.raises(AutoresearchError, match="not the top of its git repository"):
        Workspace.create(sub, "t")


def test_commit_takes_only_train_py_and_needs_no_git_identity(lab, monkeypatch, tmp_path):
    # no global/system config and no repo identity: our fixed actor must be enough
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    with git.Repo(lab).config_writer() as cfg:
        cfg.remove_section("user")
    ws = Workspace.create(lab, "t")
    base = ws.head()
    ws.write_train_py(TRAIN.replace("0.04", "0.05"))
    (ws.path / "prepare.py").write_text("TIME_BUDGET = 1\n")  # must not ride along
    (ws.path / "extra.py").write_text("x = 1\n")
    ws.repo.git.add("extra.py")  # even when staged
    sha = ws.commit("raise matrix lr to 0.05\n\nHigher LR converges faster in a 5-minute budget.")
    commit = ws.repo.commit(sha)
    assert sha == ws.head() and len(sha) == 40
    assert list(commit.stats.files) == ["train.py"]
    assert commit.parents[0].hexsha == base
    assert commit.summary == "raise matrix lr to 0.05"
    assert commit.message.strip().endswith("Higher LR converges faster in a 5-minute budget.")
    assert (commit.author.name, commit.author.email) == (ACTOR.name, ACTOR.email)
    assert (commit.committer.name, commit.committer.email) == (ACTOR.name, ACTOR.email)
    assert ws.read_at(sha) == TRAIN.replace("0.04", "0.05")
    assert ws.stray_changes(allow=("train.py",)) == ["extra.py", "prepare.py"]


def test_users_hooks_do_not_run_or_block_our_commits(lab):
    hooks = lab / ".git" / "hooks"
    hooks.mkdir(exist_ok=True)
    for name in ("pre-commit", "commit-msg", "post-commit"):
        hook = hooks / name
        hook.write_text(f"#!/bin/sh\ntouch {lab / ('ran-' + name)}\nexit 1\n")
        hook.chmod(0o755)
    ws = Workspace.create(lab, "t")
    ws.write_train_py(TRAIN + "# tweak\n")
    ws.commit("tweak")
    assert ws.read_at("HEAD").endswith("# tweak\n")
    assert not list(lab.glob("ran-*"))


def test_stray_changes_sees_modified_deleted_untracked_and_ignored_files(lab):
    ws = Workspace.create(lab, "t")
    ws.write_train_py(TRAIN + "# change\n")
    (ws.path / "prepare.py").write_text("TIME_BUDGET = 1\n")
    (ws.path / "README.md").unlink()
    (ws.path / "ckpt").mkdir()
    (ws.path / "ckpt" / "model.pt").write_bytes(b"x")
    (ws.path / "__pycache__").mkdir()
    (ws.path / "__pycache__" / "prepare.cpython-311.pyc").write_bytes(b"x")
    (ws.path / "cache.bin").write_bytes(b"x")
    assert ws.stray_changes() == [
        "README.md", "__pycache__/prepare.cpython-311.pyc", "cache.bin", "ckpt/model.pt",
        "prepare.py", "train.py",
    ]
    assert "train.py" not in ws.stray_changes(allow=("train.py",))


def test_revert_to_restores_tip_and_deletes_everything_else(lab):
    ws = Workspace.create(lab, "t")
    base = ws.head()
    ws.write_train_py(TRAIN + "# worse\n")
    worse = ws.commit("worse idea")
    (ws.path / "prepare.py").write_text("hacked\n")
    (ws.path / "__pycache__").mkdir()
    (ws.path / "__pycache__" / "x.pyc").write_bytes(b"x")
    (ws.path / "out.bin").write_bytes(b"x")
    ws.revert_to(base)
    assert ws.head() == base
    assert ws.read() == TRAIN and ws.read("prepare.py") == "TIME_BUDGET = 300\n"
    assert ws.stray_changes() == []
    assert not (ws.path / "__pycache__").exists() and not (ws.path / "out.bin").exists()
    assert ws.repo.commit(worse).hexsha == worse  # the discarded commit still exists (for diffs)


def test_diff_between_commits(lab):
    ws = Workspace.create(lab, "t")
    base = ws.head()
    ws.write_train_py(TRAIN.replace("DEPTH = 8", "DEPTH = 10"))
    sha = ws.commit("deeper")
    diff = ws.diff(base, sha)
    assert "--- a/train.py" in diff and "+++ b/train.py" in diff
    assert "-DEPTH = 8\n" in diff and "+DEPTH = 10\n" in diff
    assert diff.endswith("\n")


def test_open_continues_an_existing_run_and_recreates_a_missing_worktree(lab):
    ws = Workspace.create(lab, "t")
    ws.write_train_py(TRAIN + "# kept\n")
    kept = ws.commit("kept")
    ws.close()
    again = Workspace.open(lab, "t")
    assert again.head() == kept and again.path == ws.path
    shutil.rmtree(ws.path)
    reopened = Workspace.open(lab, "t")
    assert reopened.head() == kept
    assert reopened.read().endswith("# kept\n")
    assert reopened.stray_changes() == []


def test_open_replaces_a_broken_worktree_folder(lab):
    ws = Workspace.create(lab, "t")
    kept = ws.head()
    (ws.path / ".git").unlink()  # half-deleted folder
    reopened = Workspace.open(lab, "t")
    assert reopened.head() == kept and reopened.stray_changes() == []


def test_open_keeps_a_dirty_worktree_for_the_loop_to_revert(lab):
    ws = Workspace.create(lab, "t")
    ws.write_train_py("half-applied\n")  # a kill -9 between write and commit
    reopened = Workspace.open(lab, "t")
    assert reopened.stray_changes() == ["train.py"]
    reopened.revert_to(reopened.head())
    assert reopened.read() == TRAIN


def test_open_of_an_unknown_run_is_refused(lab):
    with pytest.raises(AutoresearchError, match="no run 'nope'"):
        Workspace.open(lab, "nope")


def test_users_checkout_is_byte_for_byte_unchanged(lab):
    status = user_status(lab)
    before = snapshot(lab)
    ws = Workspace.create(lab, "mar5")
    base = ws.head()
    for i in range(3):
        ws.write_train_py(TRAIN + f"# experiment {i}\n")
        ws.commit(f"experiment {i}\n\nhypothesis {i}")
        (ws.path / "scratch.bin").write_bytes(b"x" * 10)
        ws.revert_to(base)
    ws.stray_changes()
    ws.diff(base, ws.head())
    Workspace.open(lab, "mar5")
    shutil.rmtree(ws.path)
    Workspace.open(lab, "mar5")
    assert snapshot(lab) == before
    assert user_status(lab) == status
    assert " M program.md" in status and "?? notes.txt" in status and "M  README.md" in status
    assert git.Repo(lab).active_branch.name == "main"


def test_users_own_missing_worktree_is_not_pruned(lab, tmp_path):
    # e.g. a worktree on a drive that is not mounted right now
    user = git.Repo(lab)
    user.git.worktree("add", "-q", "-b", "side", str(tmp_path / "usb" / "side"))
    shutil.rmtree(tmp_path / "usb")
    ws = Workspace.create(lab, "t")
    shutil.rmtree(ws.path)
    Workspace.open(lab, "t")
    assert f"worktree {tmp_path / 'usb' / 'side'}" in user.git.worktree("list", "--porcelain").splitlines()
