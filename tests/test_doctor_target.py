"""`autoresearch doctor` and the run's preflight on a declared target (autoresearch.toml), through
the real CLI, git, processes and sandbox, on copies of the examples committed in a fresh
repository. Every verdict is decided by what the programs print or by git's state, never by time."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autoresearch.sandbox import Sandbox

ROOT = Path(__file__).resolve().parent.parent
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def env() -> dict:
    """`python` in the targets' commands is this interpreter; the CLI imports this checkout; a wide
    table, so that a row is one line."""
    return {**os.environ, **GIT_ENV, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(ROOT), "COLUMNS": "400"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True, env=env()).stdout


def example(name: str, tmp_path: Path) -> Path:
    repo = tmp_path / name
    shutil.copytree(ROOT / "examples" / name, repo, ignore=shutil.ignore_patterns("__pycache__"))
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "my program")
    return repo


def cli(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoresearch", *args], cwd=repo, env=env(), capture_output=True,
                          text=True, timeout=300)


def rows(done: subprocess.CompletedProcess, name: str) -> list[str]:
    """The table's rows of check `name` (one line each at COLUMNS=400)."""
    return [line for line in done.stdout.splitlines() if re.match(rf"^│ {re.escape(name)}\s+│", line)]


def row(done: subprocess.CompletedProcess, name: str) -> str:
    found = rows(done, name)
    assert len(found) == 1, done.stdout
    return found[0]


def has_row(done: subprocess.CompletedProcess, name: str) -> bool:
    return bool(rows(done, name))


def edit_toml(repo: Path, old: str, new: str) -> None:
    """autoresearch.toml is read from the folder, committed or not: no commit needed."""
    toml = repo / "autoresearch.toml"
    assert old in toml.read_text()
    toml.write_text(toml.read_text().replace(old, new))


def assert_one_line_failure(done: subprocess.CompletedProcess, start: str) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {start}"), done.stderr
    return lines[0]


# ---------------------------------------------------------------------------
# doctor
# ---------------------------------------------------------------------------


def test_doctor_passes_on_a_good_target_and_shows_the_parsed_value(tmp_path):
    repo = example("compress", tmp_path)
    done = cli(repo, "doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAIL" not in done.stdout and done.stderr == ""
    names = [m.group(1) for m in re.finditer(r"^│ (\S[\w ]*?)\s+│ ok", done.stdout, re.MULTILINE)]
    assert names == ["target", "command", "files", "sandbox", "disk", "proposer", "dry run", "requires", "timeout"]
    assert "ratio = 0.790125 (lower is better)" in row(done, "dry run")  # deterministic: the example's value
    assert "`roundtrip: ok` seen" in row(done, "requires") and "compress_seconds <= 30" in row(done, "requires")
    assert "of the 120 s timeout" in row(done, "timeout")
    assert "program.py (edit), bench.py (context) committed" in row(done, "files")
    assert not (repo / "results").exists() and git(repo, "status", "--porcelain") == ""  # a check writes nothing
    assert "autoresearch/" not in git(repo, "branch")


def test_doctor_on_a_max_target_says_higher_is_better(tmp_path):
    repo = example("life", tmp_path)
    done = cli(repo, "doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"generations_per_s = [0-9.]+ \(higher is better\), in [0-9.]+ s", row(done, "dry run"))
    assert "`correct: True` seen" in row(done, "requires")


def test_a_command_that_prints_no_metric_fails_listing_the_lines_it_saw(tmp_path):
    repo = example("compress", tmp_path)
    edit_toml(repo, 'metric = "ratio"', 'metric = "score"')
    done = cli(repo, "doctor")
    line = assert_one_line_failure(done, "dry run: `python bench.py`: no score line in the output; it printed ratio: 0.790125; ")
    assert "compress_seconds: " in line and "fix: set `metric` in autoresearch.toml" in line
    assert "FAIL" in row(done, "dry run") and not has_row(done, "requires")  # nothing judged past the metric


def test_a_missing_require_line_fails(tmp_path):
    repo = example("compress", tmp_path)
    edit_toml(repo, 'require = ["roundtrip: ok"]', 'require = ["roundtrip: perfect"]')
    done = cli(repo, "doctor")
    assert_one_line_failure(done, "requires: required line 'roundtrip: perfect' missing; fix: ")
    assert "ok" in row(done, "dry run") and "FAIL" in row(done, "requires")


def test_an_uncommitted_edit_file_fails_because_the_run_starts_from_the_last_commit(tmp_path):
    repo = example("compress", tmp_path)
    program = repo / "program.py"
    program.write_text(program.read_text().replace("WINDOW = ", "WINDOW = 2 * "))
    done = cli(repo, "doctor")
    line = assert_one_line_failure(done, "files: edit file program.py has uncommitted changes")
    assert "fix: git commit program.py" in line
    assert "ratio = 0.790125" in row(done, "dry run")  # the committed program is what a run measures


def test_an_untracked_edit_file_fails_with_the_git_add(tmp_path):
    repo = example("compress", tmp_path)
    (repo / "tables.py").write_text("SIZE = 4\n")
    edit_toml(repo, 'edit = ["program.py"]', 'edit = ["program.py", "tables.py"]')
    done = cli(repo, "doctor")
    line = assert_one_line_failure(done, "files: edit file tables.py is not tracked by git")
    assert line.endswith("fix: git add tables.py && git commit")


def test_a_command_not_found_fails_without_a_dry_run(tmp_path):
    repo = example("compress", tmp_path)
    edit_toml(repo, 'run = "python bench.py"', 'run = "no-such-bench-x1 --fast"')
    done = cli(repo, "doctor")
    assert_one_line_failure(done, "command: run command 'no-such-bench-x1' not found on PATH; fix: ")
    assert not has_row(done, "dry run")


def test_a_bad_toml_is_one_row_naming_the_fix(tmp_path):
    repo = example("compress", tmp_path)
    edit_toml(repo, 'direction = "min"', 'direction = "down"')
    done = cli(repo, "doctor")
    assert_one_line_failure(done, "target: direction must be \"max\" or \"min\", not 'down'; fix: edit autoresearch.toml")
    assert not has_row(done, "dry run") and not has_row(done, "command")


@pytest.mark.skipif(not Sandbox.detect().available, reason="needs a working bubblewrap")
def test_a_program_that_only_fails_in_the_sandbox_is_told_so(tmp_path):
    repo = example("compress", tmp_path)
    bench = repo / "bench.py"
    bench.write_text(bench.read_text() + '\nopen("last_ratio.txt", "w").write("done")\n')  # writes into its tree
    git(repo, "commit", "-qam", "remember the last ratio")
    done = cli(repo, "doctor")
    line = assert_one_line_failure(done, "dry run: `python bench.py` fails in the sandbox (exit 1: ")
    assert "Read-only file system" in line and "but not without it" in line and "--sandbox off" in line
    unboxed = cli(repo, "doctor", "--sandbox", "off")
    assert unboxed.returncode == 0, unboxed.stdout + unboxed.stderr


# ---------------------------------------------------------------------------
# The run's preflight
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("broken", ["no metric", "uncommitted edit file"])
def test_run_refuses_a_broken_target_before_anything_exists(tmp_path, broken):
    repo = example("compress", tmp_path)
    if broken == "no metric":
        edit_toml(repo, 'metric = "ratio"', 'metric = "score"')
        start = "dry run: `python bench.py`: no score line in the output; it printed ratio: 0.790125"
    else:
        (repo / "program.py").write_text((repo / "program.py").read_text() + "# not committed\n")
        start = "files: edit file program.py has uncommitted changes"
    done = cli(repo, "run", "--tag", "t", "--max-experiments", "2")
    line = assert_one_line_failure(done, start)
    assert line.endswith("(see `autoresearch doctor`)")
    assert not (repo / "results").exists() and not (repo / ".autoresearch" / "worktrees" / "t").exists()
    assert "autoresearch/t" not in git(repo, "branch")


def test_a_resume_runs_its_branch_and_is_not_refused_for_the_checkout(tmp_path):
    repo = example("compress", tmp_path)
    first = cli(repo, "run", "--tag", "r", "--max-experiments", "1")
    assert first.returncode == 0, first.stdout + first.stderr
    (repo / "program.py").write_text((repo / "program.py").read_text() + "# work in progress\n")
    again = cli(repo, "run", "--tag", "r", "--max-experiments", "2", "--resume")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "experiments" in again.stdout and "error" not in again.stderr


def test_a_run_past_the_timeout_fails_naming_the_key(tmp_path):
    repo = example("compress", tmp_path)
    edit_toml(repo, 'run = "python bench.py"', 'run = "sleep 30 && python bench.py"')
    edit_toml(repo, "timeout = 120", "timeout = 1")
    done = cli(repo, "doctor")
    line = assert_one_line_failure(done, "timeout: the dry run of `sleep 30 && python bench.py` did not finish in 1 s")
    assert "fix: raise `timeout` in autoresearch.toml" in line and not has_row(done, "dry run")


def test_an_uncommitted_audit_script_fails_before_any_run(tmp_path):
    repo = example("compress", tmp_path)
    (repo / "audit_new.py").write_text("print('ok')\n")  # there, but not in the last commit a run uses
    edit_toml(repo, 'run = "python bench.py"', 'run = "python bench.py"\naudit = "python audit_new.py"')
    done = cli(repo, "doctor")
    line = assert_one_line_failure(done, "command: audit_new.py, which `audit` runs, is not committed")
    assert line.endswith("fix: git add audit_new.py && git commit")
    assert not has_row(done, "dry run")
