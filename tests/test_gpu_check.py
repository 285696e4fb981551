"""bench/gpu_check.sh end to end in its CPU fallback, with budgets of a few seconds."""

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

NUMBER = r"\d+(\.\d+)?"


@pytest.mark.slow
def test_gpu_check_falls_back_to_the_cpu_profile_and_prints_a_table_of_numbers(tmp_path):
    env = {**os.environ, "GPU_CHECK_PROFILE": "cpu", "GPU_CHECK_BUDGET": "3", "GPU_CHECK_RUN_BUDGET": "2",
           "GPU_CHECK_CORPUS_MB": "1", "GPU_CHECK_DIR": str(tmp_path / "check"), "AUTORESEARCH_EVAL_TOKENS": "16384",
           "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO_ROOT / "bench" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=600)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "profile cpu" in out and "FAILED" not in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("run "))
    assert lines[header].split() == ["run", "status", "val_bpb", "steps", "tokens_M", "mfu_%", "peak_mem_GB",
                                     "startup_s", "eval_s", "compile_s"]
    rows = [line for line in lines[header + 1:] if line.strip() and not line.startswith("gpu_check:")]
    baseline = [r for r in rows if r.startswith("baseline")]
    experiments = [r for r in rows if r.startswith("exp ")]
    assert len(baseline) == 1 and len(experiments) >= 2  # the run's baseline (maybe repeated) and an experiment
    for row in baseline + experiments:
        cells = re.split(r"\s{2,}", row.strip())
        assert cells[1] in ("ok", "keep", "discard", "trial"), row
        assert all(re.fullmatch(NUMBER, c) for c in cells[2:9]), row  # val_bpb .. eval_s are numbers
        assert 0 < float(cells[2]) < 12  # bits per byte
    assert (tmp_path / "check" / "lab" / "results" / "check" / "results.tsv").is_file()
