"""`autoresearch init` through the real CLI, in a real git repository holding examples/compress."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autoresearch.target import load_target

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = REPO_ROOT / "examples" / "compress"


@pytest.fixture
def program(tmp_repo) -> Path:
    """A user's repository: the compress example without its autoresearch.toml and program.md."""
    root = Path(tmp_repo.working_tree_dir)
    for name in ("bench.py", "program.py"):
        shutil.copy(EXAMPLE / name, root / name)
    tmp_repo.git.add(A=True)
    tmp_repo.index.commit("my program")
    return root


def init(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([sys.executable, "-m", "autoresearch", "init", *args], cwd=root, env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)


def test_init_dry_runs_then_writes_a_target_that_loads(program):
    done = init(program, "--edit", "program.py", "--run", "python bench.py", "--metric", "ratio",
                "--direction", "min", "--require", "roundtrip: ok", "--context", "bench.py", "--timeout", "120")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("dry run: ratio = 0.79") and "lower is better" in done.stdout
    assert "wrote autoresearch.toml, program.md" in done.stdout
    target = load_target(program)
    assert (target.edit, target.metric, target.direction, target.timeout) == (("program.py",), "ratio", "min", 120.0)
    assert target.require == ("roundtrip: ok",) and target.context == ("bench.py",)
    assert "make `ratio` lower" in (program / "program.md").read_text()


def test_an_existing_program_md_is_kept(program):
    (program / "program.md").write_text("mine\n")
    done = init(program, "--edit", "program.py", "--run", "python bench.py", "--metric", "ratio", "--direction", "min")
    assert done.returncode == 0 and "wrote autoresearch.toml;" in done.stdout
    assert (program / "program.md").read_text() == "mine\n"
    again = init(program, "--edit", "program.py", "--run", "python bench.py", "--metric", "ratio", "--direction", "min")
    assert again.returncode == 1 and "already exists; edit it, or pass --force" in again.stderr


def test_a_metric_never_printed_lists_what_was_and_writes_nothing(program):
    done = init(program, "--edit", "program.py", "--run", "python bench.py", "--metric", "score", "--direction", "max")
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert ("printed no score line (it printed: ratio: 0.790125; compress_seconds: " in done.stderr)
    assert not (program / "autoresearch.toml").exists() and not (program / "program.md").exists()


@pytest.mark.parametrize("args, words", [
    (["--edit", "bot.py", "--run", "python bench.py", "--metric", "ratio", "--direction", "min"], "edit pattern 'bot.py' matches no file"),
    (["--edit", "program.py", "--run", "python bench.py", "--metric", "ratio", "--direction", "down"], 'direction must be "max" or "min"'),
    (["--edit", "program.py", "--run", "pyhton bench.py", "--metric", "ratio", "--direction", "min"], "'pyhton' not found on PATH"),
    (["--edit", "program.py", "--run", "python bench.py", "--metric", "ratio"], "init needs --direction (or run it on a terminal"),
    (["--edit", "program.py", "--run", "python -c 'import sys; sys.exit(3)'", "--metric", "ratio", "--direction", "min"], "is a crash: exit 3"),
    (["--edit", "program.py", "--context", "program.py", "--run", "python bench.py", "--metric", "ratio", "--direction", "min"], "both in edit and context"),
])
def test_bad_answers_are_one_line_and_write_nothing(program, args, words):
    done = init(program, *args)
    assert done.returncode == 1 and words in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert not (program / "autoresearch.toml").exists()


def test_init_outside_a_git_repository_says_how(tmp_path):
    done = init(tmp_path, "--edit", "x.py", "--run", "true", "--metric", "m", "--direction", "max")
    assert done.returncode == 1 and "is not a git repository: run `git init`" in done.stderr


@pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux `script` for a terminal")
def test_without_flags_on_a_terminal_it_asks_for_each(program):
    """`script` gives init a real pseudo-terminal; the answers are typed on it."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = f"{sys.executable} -m autoresearch init"
    done = subprocess.run(["script", "-qec", command, "/dev/null"], cwd=program, env=env, capture_output=True,
                          text=True, input="program.py\npython bench.py\nratio\nmin\n", timeout=120)
    assert done.returncode == 0, done.stdout
    for question in ("File(s) the proposals may edit", "Command that runs one experiment", "Metric name", "Direction"):
        assert question in done.stdout
    target = load_target(program)
    assert (target.edit, target.run, target.metric, target.direction) == (("program.py",), "python bench.py", "ratio", "min")
