"""Run one training subprocess with a hard wall-clock limit and judge how it ended.

train.py runs as a supervised process (process.py: its own session under the reaper, a marker
variable, a pid file), with its output going straight to run.log (a file, never a pipe: a chatty
run cannot block on a full pipe). When it ends, for any reason, everything it started dies with
it. While it runs, training.json names it so that a resumed harness can kill an orphan left
behind by a harness that was killed with SIGKILL (process.kill_orphan).

A crash, a timeout or a diverged loss is a RunResult status, never an exception.
"""

import math
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from autoresearch.lab import LAB_VARIABLES
from autoresearch.process import KILL_GRACE, Supervised, describe_exit
from autoresearch.summary import diverged, parse_summary

MARKER = "AUTORESEARCH_TRAINING_ID"  # set in every training process; inherited by its children
TAIL_BYTES = 1 << 20  # the summary, FAIL and the traceback are at the end of the log

# What the training process must not see. Names are matched upper-cased.
SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH")
SECRET_PREFIXES = ("OPENAI_", "ANTHROPIC_", "AWS_", "AZURE_", "HF_", "HUGGING_FACE_", "OPENROUTER_")
# Hugging Face cache and offline switches are paths and flags, not secrets.
KEEP = frozenset({
    "HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
    # The lab's own settings (config.py); EVAL_TOKENS would otherwise read as a token.
    *LAB_VARIABLES,
})
# Values that look like a key whatever the variable is called (OpenAI/Anthropic, HF, GitHub, AWS, Slack, GitLab).
SECRET_VALUE = re.compile(r"^(sk-|sk_|hf_|ghp_|gho_|ghs_|github_pat_|AKIA|xox[abpr]-|glpat-)")


@dataclass
class RunResult:
    status: str  # "ok" | "crash" | "timeout" | "diverged"
    metrics: dict  # parse_summary output (may be {})
    log_path: Path
    seconds: float
    returncode: int | None
    reason: str  # one line for results.tsv; "" when ok
    children_killed: int = field(default=0)  # processes still alive after train.py ended


def is_secret(name: str, value: str = "") -> bool:
    upper = name.upper()
    if upper in KEEP:
        return False
    if any(word in upper for word in SECRET_WORDS) or upper.startswith(SECRET_PREFIXES):
        return True
    return bool(SECRET_VALUE.match(value))


def training_env(base: Mapping[str, str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` without anything that looks like a credential, plus unbuffered output and `extra`.

    Dropped: names containing KEY, TOKEN, SECRET, PASSWORD, PASSWD, CREDENTIAL or AUTH (the
    last also drops SSH_AUTH_SOCK: training has no business using the user's SSH agent); names
    starting with OPENAI_, ANTHROPIC_, AWS_, AZURE_, HF_, HUGGING_FACE_, OPENROUTER_, except
    the Hugging Face cache/offline settings in KEEP; and any value shaped like a known key
    (sk-..., hf_..., ghp_..., AKIA...). `extra` is trusted and added last.
    """
    env = {k: v for k, v in base.items() if not is_secret(k, v)}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ in the worktree
    env["PYTHONUNBUFFERED"] = "1"  # the log is current when we kill a hung run
    env.update(extra or {})
    return env


ALLOC_CONF = "expandable_segments:True"  # upstream's setting: less fragmentation, fewer OOMs near the limit


def compile_cache_dirs(env: Mapping[str, str]) -> dict[str, str]:
    """torch.compile's caches and CUDA's JIT cache under the lab's cache root, kept across
    experiments: most of a candidate's graphs are the best's, so Inductor and Triton reuse their
    compiled kernels instead of paying the compile again every 5 minutes. Created here (the
    training may not be able to create folders). A sandbox points them into its own writable
    scratch folder instead (sandbox.py)."""
    root = Path(env.get("AUTORESEARCH_CACHE") or Path.home() / ".cache" / "autoresearch").expanduser() / "compile"
    dirs = {"TORCHINDUCTOR_CACHE_DIR": root / "inductor", "TRITON_CACHE_DIR": root / "triton",
            "CUDA_CACHE_PATH": root / "cuda"}
    for folder in dirs.values():
        folder.mkdir(parents=True, exist_ok=True)
    return {name: str(folder) for name, folder in dirs.items()}


def training_defaults(env: Mapping[str, str]) -> dict[str, str]:
    """What a training gets unless `env` (the environment it would run with) sets it: the
    compile caches above, PyTorch's allocator as upstream configures it, and
    CUDA_DEVICE_ORDER=PCI_BUS_ID so that a GPU index means nvidia-smi's GPU of that index."""
    defaults = {**compile_cache_dirs(env), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    if not env.get("PYTORCH_CUDA_ALLOC_CONF"):  # the older name of the same setting: the user's wins
        defaults["PYTORCH_ALLOC_CONF"] = ALLOC_CONF
    return {name: value for name, value in defaults.items() if not env.get(name)}


# ---------------------------------------------------------------------------
# Running and judging one training run

def run_training(
    cwd: Path,
    log_path: Path,
    timeout: float,
    env: Mapping[str, str],
    command: Sequence[str] | None = None,
    pid_file: Path | None = None,
    *,
    kill_grace: float = KILL_GRACE,
) -> RunResult:
    """Run `command` (default: python train.py) in `cwd` for at most `timeout` seconds.

    stdout and stderr go to `log_path`. On timeout everything it started gets SIGTERM, then
    SIGKILL after `kill_grace` seconds. Whatever happens, nothing it started outlives this call.
    An exception while waiting (Ctrl-C) kills everything, removes `pid_file` and propagates.
    """
    command = list(command) if command else [sys.executable, "train.py"]
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log_path, "wb", buffering=0) as log:
        proc = Supervised(command, cwd=cwd, env=env, stdout=log, marker=(MARKER, uuid.uuid4().hex),
                          pid_file=pid_file, oom_first=True)
        try:
            try:
                proc.start()
            except OSError as exc:
                log.write(f"could not start {command[0]}: {exc}\n".encode())
                reason = f"could not start {Path(command[0]).name}: {exc.strerror or exc}"
                return RunResult("crash", {}, log_path, time.monotonic() - start, None, reason)
            timed_out = proc.wait(start + timeout)
            if timed_out:
                proc.terminate(kill_grace)
            killed = proc.kill_everything()
        except BaseException:
            proc.stop(grace=0)
            raise
        finally:
            proc.remove_pid_file()
    seconds = time.monotonic() - start
    result = judge(_tail(log_path), proc.returncode, timed_out, timeout)
    result.log_path, result.seconds, result.children_killed = log_path, seconds, killed
    return result


def _tail(path: Path) -> str:
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - TAIL_BYTES))
        return f.read().decode("utf-8", "replace")


def judge(text: str, returncode: int | None, timed_out: bool, timeout: float) -> RunResult:
    """Status and reason from the log text and exit status (log_path/seconds left for the caller)."""
    metrics = parse_summary(text)

    def result(status: str, reason: str = "") -> RunResult:
        return RunResult(status, metrics, Path(), 0.0, returncode, reason)

    if timed_out:
        return result("timeout", f"timeout after {timeout:.0f} s")
    fail = diverged(text)
    if fail is not None and returncode and fail != "FAIL" and "loss" not in fail.lower():
        # a refusal, not a divergence: train.py's start-up check (`FAIL: profile gpu but no CUDA device: ...`)
        return result("crash", f"exit {returncode}: {fail}"[:200])
    if fail is not None:
        return result("diverged", f"diverged: {fail}")
    if returncode:
        return result("crash", crash_reason(text, returncode))
    if "val_bpb" not in metrics:
        return result("crash", f"no summary (exit {returncode})")
    val_bpb = metrics["val_bpb"]
    # Bits per byte is positive; 0.000000 is also results.tsv's mark of a crash.
    if not isinstance(val_bpb, float) or not math.isfinite(val_bpb) or val_bpb <= 0:
        return result("crash", f"val_bpb is {val_bpb}")
    return result("ok")


_TRACEBACK = "Traceback (most recent call last):"
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*$")


def last_exception(text: str) -> str | None:
    """The `SomeError: message` line that ends the last traceback in `text`, if any."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(_TRACEBACK)]
    if starts:
        for line in lines[starts[-1] + 1 :]:
            if line.strip() and not line[0].isspace():
                return line.strip()
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line.strip()):
            return line.strip()
    return None


def crash_reason(text: str, returncode: int) -> str:
    """One line: `exit 1: RuntimeError: CUDA out of memory...`, `killed by SIGKILL` or `exit N`."""
    if returncode < 0:
        return describe_exit(returncode)
    if returncode == 127:  # the reaper could not start the command
        started = [line for line in text.splitlines() if line.startswith("could not start ")]
        if started:
            return started[-1].rsplit(" (", 1)[0][:200]
    line = last_exception(text)
    reason = f"exit {returncode}: {line}" if line else f"exit {returncode}"
    return reason if len(reason) <= 200 else reason[:197] + "..."

