"""kill -9 of the harness at random (seeded) moments of a real run, then resume: no row lost,
none doubled, the branch at the best kept commit, orphans stopped, the user's checkout untouched.

The engine is bench/crash_consistency.py (which runs the same at 50+ points and prints a table);
here a few points with the stand-in lab, and one point with the real train.py on CPU (slow).
"""

import os
import signal
import sys
from pathlib import Path

import git
import psutil
import pytest

from invariants import SECRETS, UserCheckout, check_invariants
from reliability import Harness, make_user_lab, read_json, secret_env, wait_for, training_files, training_json

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from crash_consistency import crash_points  # noqa: E402


def test_kill_9_at_random_points_then_resume_loses_and_doubles_nothing(tmp_repo, tmp_path):
    lab, user = make_user_lab(tmp_repo)
    stats = crash_points(lab, user, points=6, seed=5, window=3.0, out=tmp_path / "out", log=lambda line: None)

    assert stats.failures == [] and stats.clean == 6
    assert (stats.rows_lost, stats.rows_duplicated) == (0, 0)
    assert stats.orphans_killed == stats.orphans_found
    assert stats.rows >= 2  # the run got past its baseline between the kills

    # And the run still finishes normally from where the last kill left it.
    done = Harness(lab, ["--proposer", "hparam", "--max-experiments", str(stats.rows + 2)], secret_env(),
                   tmp_path / "out", "final")
    assert done.wait(120) == 0, done.stderr()
    got = check_invariants(lab, "t", user, rows=stats.rows + 2)
    numbers = [r.experiment for r in got]  # one row each; a number cut off by a kill stays unused
    assert len(numbers) == stats.rows + 2 and numbers == sorted(set(numbers))


def test_git_locks_left_by_a_kill_mid_commit_do_not_block_resume(tmp_repo, tmp_path):
    lab, user = make_user_lab(tmp_repo)
    first = Harness(lab, ["--proposer", "hparam", "--max-experiments", "2"], secret_env(), tmp_path / "out", "first")
    assert first.wait(120) == 0, first.stderr()
    # What git leaves when it is killed mid-commit: the index lock of the worktree and the
    # branch's ref lock (the bench produces these for real by killing the process group).
    common = Path(tmp_repo.git_dir)
    locks = [common / "worktrees/t/index.lock", common / "worktrees/t/HEAD.lock",
             common / "refs/heads/autoresearch/t.lock"]
    for lock in locks:
        lock.write_text("")
    again = Harness(lab, ["--proposer", "hparam", "--max-experiments", "3"], secret_env(), tmp_path / "out", "again")
    assert again.wait(120) == 0, again.stderr()
    check_invariants(lab, "t", user, rows=3)
    assert not any(lock.exists() for lock in locks)


@pytest.mark.slow
def test_kill_9_during_real_cpu_training_then_resume(tmp_path, lab_cache):
    from conftest import REPO_ROOT, lab_env

    if not (REPO_ROOT / "train.py").exists():
        pytest.skip("train.py is not in this checkout yet")
    clone = tmp_path / "clone"
    git.Repo.clone_from(REPO_ROOT, clone)
    (clone / "program.md").write_text((clone / "program.md").read_text() + "\nAn uncommitted note.\n")
    user = UserCheckout.take(clone)
    env = secret_env(**lab_env(lab_cache), GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
                     GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    args = ["--proposer", "hparam", "--max-experiments", "2"]
    # --timeout 60 (the helper's default) leaves room for a slow CPU; --time-budget 5.
    first = Harness(clone, args, env, tmp_path / "out", "first")
    training = wait_for(lambda: training_json(clone), 300, "the baseline training")
    log = training_files(clone)[0].parent / "run.log"  # the trial's log, in its worker's folder while it runs
    wait_for(lambda: "step" in log.read_text(errors="replace"), 300, "the first training step")
    first.signal(signal.SIGKILL)
    first.wait(30)
    orphan = psutil.Process(training["pid"])
    assert orphan.is_running() and orphan.status() != psutil.STATUS_ZOMBIE  # still training, untended

    again = Harness(clone, args, env, tmp_path / "out", "again")
    assert again.wait(600) == 0, again.stdout()[-2000:] + again.stderr()[-2000:]
    assert not orphan.is_running() or orphan.status() == psutil.STATUS_ZOMBIE
    got = check_invariants(clone, "t", user, rows=2)
    assert got[0].proposer == "baseline" and got[0].status == "keep" and 0 < got[0].val_bpb < 20
    env_seen = (clone / f"results/t/runs/{got[0].experiment:04d}/run.log").read_text(errors="replace")
    assert not any(value in env_seen for value in SECRETS.values())
    assert os.environ.get("OPENAI_API_KEY") != SECRETS["OPENAI_API_KEY"]  # the keys were the harness's only
