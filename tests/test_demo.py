"""`autoresearch demo`: prepares the corpus once, runs baseline + 3 hparam experiments, summarizes."""

import os
import subprocess
import sys
from pathlib import Path

import git
import pytest

from autoresearch.demo import run_demo
from autoresearch.live import View
from autoresearch.ledger import Ledger
from standin import PREPARE_PY, make_lab

REPO_ROOT = Path(__file__).resolve().parent.parent

# A prepare.py that "prepares" by creating the files the demo looks for, and logs each call.
DEMO_PREPARE = PREPARE_PY + '''
if __name__ == "__main__":
    import os, sys
    from pathlib import Path
    source = Path(os.environ["AUTORESEARCH_CACHE"]) / "stdlib"
    (source / "tokenizer").mkdir(parents=True, exist_ok=True)
    (source / "data").mkdir(parents=True, exist_ok=True)
    (source / "tokenizer" / "tokenizer.pkl").write_bytes(b"tok")
    (source / "data" / "val.parquet").write_bytes(b"val")
    with open(source.parent / "prepare-calls.log", "a") as f:
        f.write(" ".join(sys.argv[1:]) + " " + os.environ.get("AUTORESEARCH_PROFILE", "") + "\\n")
'''


def test_demo_prepares_once_then_runs_the_baseline_and_three_hparam_experiments(tmp_repo, tmp_path, monkeypatch, capsys):
    root = make_lab(tmp_repo, prepare_py=DEMO_PREPARE)
    cache = tmp_path / "cache"
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(cache))
    monkeypatch.chdir(root)

    # the stand-in prepare.py has no handoff evaluation: the real lab's demo audits (the slow test)
    assert run_demo(view=View("demo", quiet=True), audit="off") == 0
    assert run_demo(view=View("demo", quiet=True), audit="off") == 0

    assert (cache / "prepare-calls.log").read_text() == "--profile cpu --source stdlib cpu\n"
    tags = sorted(p.name for p in (root / "results").iterdir())
    assert len(tags) == 2 and all(t.startswith("demo-") for t in tags)
    experiments = Ledger(root / "results" / tags[0]).experiments()
    assert [e.first.proposer for e in experiments] == ["baseline", "hparam", "hparam", "hparam"]
    assert [r.role for r in experiments[0].rows] == ["baseline", "repeat"]  # the noise rule's default
    assert all(" -> " in e.first.description for e in experiments[1:])  # hparam's `NAME old -> new`
    out = capsys.readouterr().out
    assert f"autoresearch report --tag {tags[0]}" in out and f"demo run '{tags[1]}'" in out
    assert "best val_bpb" in out and "vs the baseline 1.000000" in out
    assert f"results:  {root / 'results' / tags[1]}/ (results.tsv, runs/NNNN/run.log, diff.patch)\n" in out
    assert git.Repo(root).active_branch.name == "main" and not git.Repo(root).is_dirty()
    page = (root / "results" / tags[1] / "report.html").read_text()  # the page the summary points to
    assert f"(or open {root / 'results' / tags[1] / 'report.html'})" in out
    assert f"Run {tags[1]} (done)" in page and "4  (the baseline and 3 changes:" in page


@pytest.mark.slow
def test_demo_on_a_fresh_clone_runs_offline_on_cpu(tmp_path):
    """The README's first command, on a fresh clone of this repository with an empty cache."""
    if not (REPO_ROOT / "train.py").exists():
        pytest.skip("train.py is not in this checkout yet")
    clone = tmp_path / "clone"
    git.Repo.clone_from(REPO_ROOT, clone)
    env = {**os.environ, "AUTORESEARCH_CACHE": str(tmp_path / "cache"), "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop("AUTORESEARCH_PROFILE", None)
    done = subprocess.run([sys.executable, "-m", "autoresearch", "demo"], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (tag,) = [p.name for p in (clone / "results").iterdir() if p.name.startswith("demo-")]
    experiments = Ledger(clone / "results" / tag).experiments()
    assert len(experiments) == 4 and experiments[0].status == "keep" and 0 < experiments[0].mean < 20
    assert f"autoresearch report --tag {tag}" in done.stdout
    assert not git.Repo(clone).is_dirty(untracked_files=True)
