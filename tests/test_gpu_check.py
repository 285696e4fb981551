"""bench/gpu_check.sh: refusing a GPU that torch cannot use (a real fake nvidia-smi on PATH),
and end to end in its CPU fallback, with budgets of a few seconds."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from autoresearch.gpus import inspect
from conftest import REPO_ROOT
from test_gpus import fake_nvidia_smi

NUMBER = r"\d+(\.\d+)?"
SCRIPT = REPO_ROOT / "bench" / "gpu_check.sh"
HAS_GPU = inspect().present
no_gpu_here = pytest.mark.skipif(HAS_GPU, reason="checks the fallback of a machine without a GPU")


def gpu_check(*args: str, timeout: float = 600, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(SCRIPT), *args], env=full, capture_output=True, text=True, timeout=timeout)


def without_compilers(folder: Path) -> Path:
    """A PATH folder with every program of /usr/bin and /bin except the C compilers."""
    folder.mkdir()
    compiler = re.compile(r"^(cc|c89|c99|gcc.*|clang.*|.*-gcc(-\d+)?|.*-cc)$")
    for bin_dir in (Path("/usr/bin"), Path("/bin")):
        for program in bin_dir.iterdir():
            if not compiler.match(program.name) and not (folder / program.name).exists():
                (folder / program.name).symlink_to(program)
    return folder


@no_gpu_here
def test_a_gpu_that_torch_cannot_use_stops_the_check_in_one_line_before_anything_runs(tmp_path):
    bin_dir = fake_nvidia_smi(tmp_path / "bin", cuda="12.8")
    done = gpu_check(PATH=f"{bin_dir}:{os.environ['PATH']}", GPU_CHECK_DIR=str(tmp_path / "check"), timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: cannot run the gpu profile here: nvidia-smi lists 2 GPUs")
    assert "is a CPU build (torch.version.cuda is None); fix: pip install torch==2.10.0" in lines[0]
    assert "falling back" not in done.stdout and not (tmp_path / "check").exists()  # nothing ran


@no_gpu_here
def test_what_triton_needs_is_named_on_the_same_line(tmp_path):
    bin_dir = fake_nvidia_smi(tmp_path / "bin", cuda="13.0")
    path = f"{bin_dir}:{Path(sys.executable).parent}:{without_compilers(tmp_path / 'nocc')}"
    done = gpu_check(PATH=path, GPU_CHECK_INSTALL="0", timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    [line] = done.stdout.splitlines()
    assert "fix: pip install --force-reinstall torch" in line
    assert line.endswith("no C compiler (gcc or clang; triton compiles its launcher with it): apt-get install gcc")
    assert gpu_check("nightly").returncode == 2


@no_gpu_here
@pytest.mark.slow
def test_without_a_gpu_the_full_check_falls_back_to_the_cpu_profile_and_prints_a_table_of_numbers(tmp_path):
    done = gpu_check("full", GPU_CHECK_BUDGET="3", GPU_CHECK_RUN_BUDGET="2", GPU_CHECK_CORPUS_MB="1",
                     GPU_CHECK_DIR=str(tmp_path / "check"), AUTORESEARCH_EVAL_TOKENS="16384")
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "no GPU on this machine: falling back to the cpu profile" in out
    assert "gpu_check: full, profile cpu, baseline 3s, run 2 x 2s (timeout 902s)" in out and "FAILED" not in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("run "))
    assert lines[header - 1].startswith("note: the corpus is made offline") and "0.9979" in lines[header - 1]
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


@pytest.mark.slow
def test_the_smoke_check_runs_the_loop_only_with_one_baseline_trial(tmp_path):
    done = gpu_check(GPU_CHECK_PROFILE="cpu", GPU_CHECK_RUN_BUDGET="2", GPU_CHECK_CORPUS_MB="1",
                     GPU_CHECK_DIR=str(tmp_path / "check"), AUTORESEARCH_EVAL_TOKENS="16384")
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "gpu_check: smoke, profile cpu, run 2 x 2s" in out and "baseline ok" not in out
    assert re.search(r"^gpu_check: smoke, cpu profile, \d+s in all", out, re.M)
    rows = [line for line in out.splitlines() if line.startswith(("exp ", "baseline"))]
    assert [r.split()[:2] for r in rows][:1] == [["exp", "0"]] and len(rows) == 2, out  # baseline once, one idea
    assert not any(line.startswith("crashed:") for line in out.splitlines())
