"""The audit: recompute a kept row's val_bpb (and the held-out number) with code the proposer cannot edit.

train.py hands its trained model over with prepare.handoff_model (a torch.export program: ATen
operations and weights, no Python of train.py). `audit_model` writes the prepare.py of the run's
base commit into a fresh folder and runs its `evaluate_handoff` in a new process, so neither the
edited train.py nor anything it imported or left in memory takes part in the number.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

AUDIT_TIMEOUT = 600.0  # seconds; the audit reads EVAL_TOKENS twice (val, held-out) plus two batches

AUDIT_TOLERANCE = 5e-4
"""Largest relative difference |printed - audited| / audited that still counts as a match.

The audit evaluates the very graph train.py evaluated, on the same batches, so the difference is
only arithmetic: (1) train.py prints 6 decimals (5e-7 absolute at most); (2) on CPU in fp32 the
two numbers agree to ~1e-9 (measured: 2.784718 printed, 2.7847176773 audited; eager ATen either
way); (3) on CUDA the printed number comes from the torch.compile'd model (Inductor fuses bf16 ops
and keeps fp32 intermediates inside a fused kernel) and, by default, flex-attention kernels, while
the audit runs the exported graph eagerly with SDPA masks of the same windows: bf16 rounds each
op's output (2^-8 relative per element), errors that average out over EVAL_TOKENS (~21M tokens
on gpu) to well under 1e-4 of the mean loss. Measured on CPU with bf16 autocast: Inductor-compiled
against eager per-token losses differ by at most 3e-4 nats and their mean by 3e-7 relative.
5e-4 (0.0005 at val_bpb 1.0) leaves a margin of a few times that estimate for trained weights,
whose bf16 behaviour was not measured on a GPU here, while a printed number that is off by more
than run-to-run noise (a few 1e-4 on CUDA) still fails. The loop records the audited number as the
row's val_bpb, so nothing can be gained inside the tolerance.
"""

CAUSAL_TOLERANCE = 1e-3
"""Largest mean change (nats) of the first half's losses when the second half's tokens change.

A causal model gives exactly 0 in fp32 on CPU (measured) and bf16 rounding noise on CUDA; a model
that peeks at the token it predicts changes those losses by whole nats."""

_DRIVER = """\
import json, sys
sys.path.insert(0, sys.argv[1])
import prepare
result = prepare.evaluate_handoff(sys.argv[2], tuple(sys.argv[3:]))
print("AUDIT " + json.dumps(result))
"""


@dataclass
class AuditResult:
    val_bpb: float | None
    heldout_bpb: float | None
    seconds: float
    error: str = ""  # one line; "" when the audit ran
    causal_gap: float | None = None  # see CAUSAL_TOLERANCE

    @property
    def causal(self) -> bool:
        return self.causal_gap is not None and self.causal_gap <= CAUSAL_TOLERANCE


def matches(printed: float, audited: float | None, tolerance: float = AUDIT_TOLERANCE) -> bool:
    """Does train.py's printed val_bpb agree with the audited one (relative `tolerance`)?"""
    if audited is None or printed is None or not audited > 0:
        return False
    return abs(printed - audited) <= tolerance * audited


def audit_model(
    prepare_py_text: str,
    model_path: Path,
    env: Mapping[str, str],
    splits: Sequence[str] = ("val", "heldout"),
    timeout: float = AUDIT_TIMEOUT,
) -> AuditResult:
    """Evaluate the handed-over model at `model_path` with `prepare_py_text` in a fresh process.

    `env` is the lab's environment (AUTORESEARCH_CACHE, _PROFILE, _SOURCE, _EVAL_TOKENS as for
    training). Failures (no model, a model the lab cannot load, a timeout) come back as `error`.
    """
    start = time.monotonic()
    model_path = Path(model_path)
    if not model_path.is_file():
        return AuditResult(None, None, 0.0, "train.py handed over no model (call prepare.handoff_model)")
    with tempfile.TemporaryDirectory(prefix="autoresearch-audit-") as folder:
        (Path(folder) / "prepare.py").write_text(prepare_py_text)
        (Path(folder) / "audit_driver.py").write_text(_DRIVER)
        child_env = {k: v for k, v in env.items() if k != "AUTORESEARCH_HANDOFF"}
        child_env["PYTHONDONTWRITEBYTECODE"] = "1"
        # -E: no PYTHONPATH/PYTHONSTARTUP from the environment can put other code in front of ours
        command = [sys.executable, "-E", str(Path(folder) / "audit_driver.py"), folder, str(model_path.resolve()), *splits]
        proc = subprocess.Popen(command, cwd=folder, env=child_env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return AuditResult(None, None, time.monotonic() - start, f"audit timed out after {timeout:.0f} s")
    seconds = time.monotonic() - start
    lines = [line for line in out.splitlines() if line.startswith("AUDIT ")]
    if proc.returncode != 0 or not lines:
        return AuditResult(None, None, seconds, f"audit failed (exit {proc.returncode}): {_last_line(err)}")
    result = json.loads(lines[-1][len("AUDIT "):])
    return AuditResult(result.get("val"), result.get("heldout"), seconds, "", result.get("causal_gap"))


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith(" ")]
    line = lines[-1] if lines else "no output"
    for prefix in ("prepare.LabError: ", "LabError: "):
        line = line.removeprefix(prefix)
    return line[:200]
