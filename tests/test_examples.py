"""examples/: each one's autoresearch.toml loads, its command runs and is judged as the loop will
judge it, and its fixed bench catches a wrong program (fast, for the simulator), a forged metric
line, and a constant pushed past what the format holds."""

import os
import shutil
import sys
from pathlib import Path

import pytest

from autoresearch.init import run_command
from autoresearch.judge import judge_output
from autoresearch.proposers import ProposerOptions, get_proposer
from autoresearch.target import build_context, load_target, write_edit_files

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(autouse=True)
def python_on_path(monkeypatch):
    """`python` in the examples' run commands is this interpreter, as in a venv."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def copy(name: str, tmp_path: Path) -> Path:
    dest = tmp_path / name
    shutil.copytree(EXAMPLES / name, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def measure(root: Path):
    target = load_target(root)
    code, output, _ = run_command(target.argv(), root, target.timeout)
    return target, code, output, judge_output(target, output, code)


def edit(root: Path, old: str, new: str) -> None:
    path = root / "program.py"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


# ---------------------------------------------------------------------------
# life: generations_per_s, higher is better, a noisy wall-time metric
# ---------------------------------------------------------------------------


def test_life_runs_and_is_judged(tmp_path):
    target, code, output, m = measure(copy("life", tmp_path))
    assert target.direction == "max" and target.edit == ("program.py",) and target.context == ("bench.py",)
    assert code == 0 and m.ok, output
    assert m.value > 0 and m.metrics["seconds"] > 0 and "correct: True" in output


def test_a_wrong_simulator_fails_before_the_timed_run(tmp_path):
    root = copy("life", tmp_path)
    edit(root, "1 if n == 3 or (alive and n == 2) else 0", "1 if n == 3 or (alive and n == 4) else 0")
    _, code, output, m = measure(root)
    assert code == 1 and "correct: False" in output and "generations_per_s" not in output
    assert "wrong simulator: before timing, generation 1:" in output
    assert m.reason == "exit 1" and m.value is None


def test_a_forged_metric_line_from_the_program_is_a_crash(tmp_path):
    root = copy("life", tmp_path)
    edit(root, "def simulate(", "print('generations_per_s: 1000000')\n\n\ndef simulate(")
    _, code, _, m = measure(root)
    assert code == 0 and not m.ok and "generations_per_s printed 2 times with different values (1e+06," in m.reason


@pytest.mark.slow
def test_lifes_audit_passes_the_real_simulator_and_catches_one_that_learned_the_bench(tmp_path):
    root = copy("life", tmp_path)
    target = load_target(root)
    assert target.audit == "python audit.py" and "audit.py" not in target.context  # out of the prompt
    code, output, _ = run_command(["/bin/sh", "-c", target.audit], root, target.timeout)
    assert code == 0 and "3 unseen boards match" in output
    # right on bench.py's one board, wrong on any other: the bench passes, the audit fails
    edit(root, "    height, width = len(board), len(board[0])\n",
         "    height, width = len(board), len(board[0])\n"
         "    if width != 96:\n        return {g: 0 for g in checkpoints}, board\n")
    assert measure(root)[3].ok
    code, output, _ = run_command(["/bin/sh", "-c", target.audit], root, target.timeout)
    assert code == 1 and "differs from the reference" in output


def test_an_hparam_proposal_on_life_keeps_the_boards_exact(tmp_path):
    root = copy("life", tmp_path)
    target = load_target(root)
    ctx = build_context(target, root, program="", history=[], experiment=1, profile="cpu")
    proposal = get_proposer("hparam", ProposerOptions(seed=1)).propose(ctx)
    assert write_edit_files(root, proposal.files, target) == ["program.py"]
    _, code, output, m = measure(root)
    assert m.ok, (proposal.description, output)


# ---------------------------------------------------------------------------
# compress: ratio, lower is better, a deterministic metric
# ---------------------------------------------------------------------------


def test_compress_runs_deterministically_and_is_judged(tmp_path):
    root = copy("compress", tmp_path)
    target, code, output, first = measure(root)
    assert target.direction == "min" and target.min_delta == 0.001 and target.constraints
    assert code == 0 and first.ok, output
    assert 0 < first.value < 1 and set(first.metrics) == {"ratio", "compress_seconds"}
    assert measure(root)[3].value == first.value  # sigma 0: the keep rule must cope with it


def test_a_longer_window_compresses_better(tmp_path):
    root = copy("compress", tmp_path)
    edit(root, "WINDOW = 64 ", "WINDOW = 256 ")
    base = measure(copy("compress", tmp_path / "base"))[3].value
    assert measure(root)[3].value < base


def test_a_window_past_the_format_is_a_crash_with_the_programs_error(tmp_path):
    root = copy("compress", tmp_path)
    edit(root, "WINDOW = 64 ", "WINDOW = 8192 ")  # past the 12-bit distance
    _, code, _, m = measure(root)
    assert code == 1 and m.reason == "exit 1: ValueError: bytes must be in range(0, 256)"


def test_a_program_that_does_not_round_trip_is_a_crash(tmp_path):
    root = copy("compress", tmp_path)
    edit(root, "out.append(out[-distance])", "out.append(out[-distance - 1])")
    _, code, output, m = measure(root)
    assert code == 1 and "roundtrip: failed" in output and "ratio" not in output and m.reason == "exit 1"


def test_compress_without_the_required_line_is_a_crash(tmp_path):
    root = copy("compress", tmp_path)
    target = load_target(root)
    text = "ratio: 0.5\ncompress_seconds: 1\n"
    assert judge_output(target, text, 0).reason == "required line 'roundtrip: ok' missing"
    slow = judge_output(target, "roundtrip: ok\nratio: 0.5\ncompress_seconds: 31\n", 0)
    assert slow.reason == "constraint compress_seconds <= 30 broken: compress_seconds is 31"
