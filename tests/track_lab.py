"""Shared by the trackers' tests: `autoresearch run` on the stand-in lab as a real subprocess,
with the stand-in agent playing a script of changes."""

import json
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
AGENT = f"{sys.executable} {TESTS / 'standin_agent.py'}"
# Four experiments: the baseline (two trials), a keep, a discard, a crash (no fix comes).
SCRIPT = [{"VAL": 0.99}, {"VAL": 0.995}, {"MODE": "crash"}]


def run_cli(lab: Path, env: dict, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoresearch", *args], cwd=lab, env=env,
                          capture_output=True, text=True, timeout=timeout)


def run_lab(lab: Path, env: dict, experiments: int, *args: str) -> subprocess.CompletedProcess:
    return run_cli(lab, env, "run", "--tag", "t", "--profile", "cpu", "--time-budget", "5", "--timeout", "60",
                   "--keep-rule", "greedy", "--baseline-repeats", "2", "--audit", "off", "--no-speculate",
                   "--proposer", "command", "--command", AGENT, "--max-experiments", str(experiments), *args)


def lab_env(tmp_path: Path, steps: list, **extra) -> dict:
    script = tmp_path / "script.json"
    script.write_text(json.dumps(steps))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "WANDB_"))}
    return {**env, "STANDIN_SCRIPT": str(script), **extra}


def more_steps(tmp_path: Path, steps: list) -> None:
    (tmp_path / "script.json").write_text(json.dumps(steps))
