"""Shared pieces of the reliability suite (tests/test_faults_*.py, test_signals.py,
test_crash_consistency.py, bench/crash_consistency.py).

- `make_user_lab(repo)`: the stand-in lab of tests/standin.py, committed, then made to look like a
  real user's checkout: an uncommitted edit to program.md, an untracked notes file, a staged new
  file. Its train.py prints its whole environment (so a leaked key would show in run.log) and
  has one line twice (for a SEARCH that matches twice).
- `replace_with(script)`: a ScriptedProposer step that swaps train.py for a whole stand-in script.
- `harness(...)`: `python -m autoresearch run` as a subprocess in its own process group, its
  output in files, with SECRETS in its environment.
- `fake_git(folder)`: a `git` on PATH that pauses in one git subcommand when armed, so a signal
  can land while the harness is committing (`commit`) or logging (`diff`).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import git

from autoresearch.proposers import Proposal, Usage
from invariants import SECRETS, UserCheckout
from standin import TRAIN_PY, make_lab

TESTS = Path(__file__).resolve().parent
BANNER = "# " + "-" * 75

# The stand-in train.py, plus: its environment in run.log, and a banner comment twice.
LAB_TRAIN_PY = TRAIN_PY.replace(
    "import time\n",
    "import time\nimport json\n\n"
    f"{BANNER}\n# Setup\n{BANNER}\n\n"
    'print("env:", json.dumps(dict(os.environ), sort_keys=True), flush=True)\n',
    1,
)


def make_user_lab(repo: git.Repo) -> tuple[Path, UserCheckout]:
    """The stand-in lab in `repo` with the user's own uncommitted work; and its snapshot."""
    root = make_lab(repo, LAB_TRAIN_PY)
    (root / "program.md").write_text("# Research program\n\nUNCOMMITTED: try a lower VAL.\n")
    (root / "notes.txt").write_text("the user's untracked notes\n")
    (root / "data").mkdir()
    (root / "data" / "staged.txt").write_text("staged but not committed\n")
    repo.index.add(["data/staged.txt"])
    return root, UserCheckout.take(root)


def replace_with(script: str, description: str = "swap in a stand-in", cost: float = 0.0):
    """A ScriptedProposer step: train.py becomes `script`."""

    def step(ctx):
        return Proposal(
            hypothesis=f"{description} (hypothesis)",
            description=description,
            train_py=script,
            model="script-1",
            usage=Usage(10, 5, cost),
            prompt=f"prompt {ctx.experiment}",
            raw=f"raw {description}",
        )

    return step


def secret_env(**extra) -> dict[str, str]:
    """The test process's environment plus every secret of SECRETS."""
    return {**os.environ, **SECRETS, **extra}


# ---------------------------------------------------------------------------
# The harness as a subprocess
# ---------------------------------------------------------------------------


def harness_command(*args: str, tag: str = "t") -> list[str]:
    return [sys.executable, "-m", "autoresearch", "run", "--tag", tag, "--profile", "cpu",
            "--time-budget", "5", "--timeout", "60", "--keep-rule", "greedy", "--baseline-repeats", "1", "--audit", "off", *args]


class Harness:
    """`autoresearch run` in its own process group; stdout/stderr go to files in `out`."""

    def __init__(self, lab: Path, args, env: dict, out: Path, name: str = "harness"):
        out.mkdir(parents=True, exist_ok=True)
        self.stdout_path, self.stderr_path = out / f"{name}.out", out / f"{name}.err"
        self._out, self._err = open(self.stdout_path, "w"), open(self.stderr_path, "w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(harness_command(*args), cwd=lab, env=env, stdout=self._out,
                                     stderr=self._err, stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait(self, seconds: float = 120) -> int:
        try:
            return self.proc.wait(timeout=seconds)
        finally:
            self._out.close()
            self._err.close()

    def signal(self, sig: int, group: bool = False) -> None:
        """Like `kill -SIG PID`, or with group=True like Ctrl-C in a terminal (the whole group)."""
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)

    def kill_group(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_for(predicate, seconds: float = 90.0, what: str = "a condition"):
    """Poll `predicate` until it returns something truthy; AssertionError after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:g} s waiting for {what}")
        time.sleep(0.05)


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def training_files(root: Path, tag: str = "t") -> list[Path]:
    """The pid files of the trainings the run's local workers run now."""
    return sorted((Path(root) / ".autoresearch" / "workers" / tag).glob("*/*/training.json"))


def training_json(root: Path, tag: str = "t"):
    """The first running training's pid file, as a dict (None while nothing trains)."""
    for path in training_files(root, tag):
        found = read_json(path)
        if found:
            return found
    return None


# ---------------------------------------------------------------------------
# A git that pauses on demand
# ---------------------------------------------------------------------------

FAKE_GIT = """#!/bin/bash
# Test git: when $FAKEGIT_DIR/armed exists and this call's subcommand is $FAKEGIT_PAUSE, take
# the arm (rm is atomic), say so in $FAKEGIT_DIR/paused, and wait (up to 60 s) while the calling
# harness lives; then run the real git. Every other call goes straight to the real git.
sub=""; skip=0
for a in "$@"; do
  if [ "$skip" = 1 ]; then skip=0; continue; fi
  case "$a" in -c|-C) skip=1 ;; -*) ;; *) sub="$a"; break ;; esac
done
if [ -n "$FAKEGIT_DIR" ] && [ "$sub" = "$FAKEGIT_PAUSE" ] && rm "$FAKEGIT_DIR/armed" 2>/dev/null; then
  echo $$ > "$FAKEGIT_DIR/paused"
  for i in $(seq 600); do
    kill -0 $PPID 2>/dev/null || exit 1
    sleep 0.1
  done
fi
exec REAL_GIT "$@"
"""


def fake_git(folder: Path) -> dict[str, str]:
    """Install the pausing git in `folder`/bin; returns env additions (PATH, FAKEGIT_DIR)."""
    real = shutil.which("git")
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "git"
    script.write_text(FAKE_GIT.replace("REAL_GIT", real))
    script.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKEGIT_DIR": str(folder)}
