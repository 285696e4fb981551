"""train.py, the file the agent edits: the real script in a subprocess on the cpu profile.

Each run copies train.py (maybe with one hyperparameter line changed) and prepare.py into a tmp
folder and trains on the session's small stdlib cache (conftest.lab_cache).
"""

import ast
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autoresearch.proposers.hparam import find_params
from autoresearch.summary import SUMMARY_KEYS, diverged, parse_summary
from conftest import REPO_ROOT, lab_env

TRAIN_PY = (REPO_ROOT / "train.py").read_text()
SIZE_NAMES = ["DEPTH", "ASPECT_RATIO", "HEAD_DIM", "TOTAL_BATCH_SIZE", "DEVICE_BATCH_SIZE"]


def with_line(text: str, name: str, value: str) -> str:
    """train.py with the module-level `NAME = ...` assignment set to `value` (comment kept)."""
    new, count = re.subn(rf"^{name} = \S+", f"{name} = {value}", text, count=1, flags=re.M)
    assert count == 1, f"no module-level {name} line in train.py"
    return new


def run_train(tmp_path: Path, cache: Path, train_py: str = TRAIN_PY, budget: float = 3, timeout: float = 300):
    """Run train.py as the harness does: `python train.py` in a folder holding it and prepare.py."""
    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "train.py").write_text(train_py)
    (lab / "prepare.py").write_text((REPO_ROOT / "prepare.py").read_text())
    env = {**os.environ, **lab_env(cache), "AUTORESEARCH_TIME_BUDGET": str(budget)}
    return subprocess.run([sys.executable, "train.py"], cwd=lab, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_cpu_run_trains_evaluates_and_prints_every_summary_key_in_order(tmp_path, lab_cache):
    done = run_train(tmp_path, lab_cache, budget=4)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    block = done.stdout.split("\n---\n")[-1].splitlines()
    keys = [line.split(":", 1)[0] for line in block]
    assert keys == [*SUMMARY_KEYS, "mfu_reference", "attention"]
    assert all(re.fullmatch(r"[a-z_]+(_M)?: +\S.*", line) and len(line.split(":")[0]) + 1 <= 18 for line in block)
    assert block[0] == f"val_bpb:          {float(block[0].split()[1]):.6f}"  # upstream's alignment and 6 decimals

    s = parse_summary(done.stdout)
    # each token is at least one byte, so even uniform guessing scores below log2(vocab) bits per byte
    assert math.isfinite(s["val_bpb"]) and 0 < s["val_bpb"] < math.log2(2048)
    assert s["profile"] == "cpu" and s["device"] == "cpu" and s["time_budget"] == 4
    assert s["training_seconds"] >= 4 and s["num_steps"] >= 2 and s["depth"] >= 1
    assert 0 < s["startup_seconds"] < s["total_seconds"] and s["total_seconds"] > s["training_seconds"]
    assert s["peak_vram_mb"] > 0 and s["num_params_M"] > 0 and s["mfu_percent"] > 0
    assert re.fullmatch(r"cpu fp32 matmul [\d.]+ GFLOPS .*", s["mfu_reference"])
    assert s["attention"] == "sdpa" and "\nAttention: sdpa\n" in done.stdout  # the CPU's only kernels, said once
    # the loss printed on the progress lines went down from ~ln(2048) = 7.6
    losses = [float(m) for m in re.findall(r"^step \d+ .*?\| loss ([\d.]+)", done.stdout, flags=re.M)]
    assert losses and losses[0] > 7 and diverged(done.stdout) is None


def test_nan_loss_prints_fail_at_the_first_step_and_exits_1(tmp_path, lab_cache):
    # a NaN soft-cap makes every logit NaN; a `loss > limit` check alone would let it through
    done = run_train(tmp_path, lab_cache, with_line(TRAIN_PY, "SOFTCAP", 'float("nan")'), budget=60)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert diverged(done.stdout) == "FAIL: training loss is nan at step 0"
    assert parse_summary(done.stdout) == {} and "Traceback" not in done.stderr


def test_exploding_learning_rate_prints_fail_and_exits_1(tmp_path, lab_cache):
    # the soft-cap bounds the loss near 2*SOFTCAP, so a blow-up shows as a loss far above ln(vocab), not NaN
    done = run_train(tmp_path, lab_cache, with_line(TRAIN_PY, "UNEMBEDDING_LR", "1000.0"), budget=60)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    reason = diverged(done.stdout)
    assert reason is not None and reason.startswith("FAIL: training loss") and "diverged" in reason
    assert parse_summary(done.stdout) == {}


@pytest.mark.parametrize("profile", ["gpu", "cpu"])
def test_each_profile_has_its_own_size_block_the_hparam_proposer_can_edit(profile):
    found = {p.name: p for p in find_params(TRAIN_PY, profile)}
    assert set(SIZE_NAMES) <= set(found)
    for name in SIZE_NAMES:
        line = TRAIN_PY.splitlines()[found[name].lineno - 1]
        assert re.fullmatch(rf"    {name} = (\d+|\d+\.\d+|2\*\*\d+) +# \S.*", line), line
    other = find_params(TRAIN_PY, "cpu" if profile == "gpu" else "gpu")
    assert {p.name: p.lineno for p in other if p.name in SIZE_NAMES} != {n: found[n].lineno for n in SIZE_NAMES}


def test_gpu_profile_keeps_upstreams_h100_scale():
    gpu = {p.name: p for p in find_params(TRAIN_PY, "gpu")}
    assert gpu["DEPTH"].value == 8 and gpu["ASPECT_RATIO"].value == 64 and gpu["HEAD_DIM"].value == 128
    assert (gpu["TOTAL_BATCH_SIZE"].base, gpu["TOTAL_BATCH_SIZE"].value) == (2, 19)
    assert gpu["DEVICE_BATCH_SIZE"].value == 128


def model_section():
    """train.py's model and optimizer code (everything before the hyperparameters), as a namespace.

    The flex-attention import is normally CUDA-only; here it is made unconditional so the GPU's
    sliding-window path can be checked on CPU. The model needs nothing from prepare.py.
    """
    head = TRAIN_PY[: TRAIN_PY.index("# Hyperparameters")]
    head = head[: head.rindex("# ----")]
    head, count = re.subn(r"^from prepare import .*$", "", head, count=1, flags=re.M)
    assert count == 1
    guard = 'if DEVICE.type == "cuda":\n    from torch.nn.attention.flex_attention'
    assert guard in head
    head = head.replace(guard, "if True:\n    from torch.nn.attention.flex_attention")
    namespace = {"__name__": "train_model_section"}
    exec(compile(head, str(REPO_ROOT / "train.py"), "exec"), namespace)
    return namespace


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")  # on CUDA it is compiled
def test_flex_block_masks_of_the_gpu_path_match_the_sdpa_masks_of_the_cpu_path():
    ns = model_section()
    config = ns["GPTConfig"](seq_len=64, vocab_size=256, n_layer=4, n_head=2, n_embd=64, windows=(16, 16, 16, 64),
                             softcap=15.0, ve_gate_channels=32)
    torch.manual_seed(0)
    model = ns["GPT"](config)
    model.init_weights()
    with torch.no_grad():  # zero-initialised projections would hide any difference in attention
        for p in model.parameters():
            if p.dim() == 2 and not p.any():
                p.normal_(0, 0.05)
    x, y = torch.randint(0, 256, (2, 64)), torch.randint(0, 256, (2, 64))
    with torch.no_grad():  # flex_attention has no backward on CPU (it does on CUDA)
        model.set_attention(("sdpa", "sdpa"))
        assert model.masks[-1] is None and model.masks[0].dtype == torch.bool
        sdpa = model(x, y, reduction="none")
        model.set_attention(("flex", "sdpa"))
        assert type(model.masks[0]).__name__ == "BlockMask"
        flex = model(x, y, reduction="none")
        assert torch.allclose(sdpa, flex, atol=1e-4)
        model.masks = [None] * 4  # all layers full causal: the windowed layers really were restricted
        assert not torch.allclose(sdpa, model(x, y, reduction="none"), atol=1e-4)


def test_muon_step_has_the_size_of_an_orthogonal_matrix_and_descends():
    ns = model_section()
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(64, 16))
    grad = torch.randn(64, 16) * 1e-3  # Muon's step size does not depend on the gradient's scale
    w.grad = grad.clone()
    opt = ns["MuonAdamW"]([dict(kind="muon", params=[w], lr=0.1, momentum=0.0, beta2=0.95, ns_steps=5,
                                weight_decay=0.0)])
    before = w.detach().clone()
    opt.step()
    update = (before - w.detach()) / (0.1 * 2)  # lr is scaled by sqrt(rows/cols) = 2 for a 64x16 matrix
    # a 64x16 matrix with all singular values 1 has Frobenius norm 4; NorMuon keeps the norm
    assert 3.5 < update.norm() < 4.5
    assert (update * grad).sum() > 0.5 * update.norm() * grad.norm()  # a descent direction


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756), ("NVIDIA H100 NVL", 835), ("NVIDIA H200", 989.4),
    ("NVIDIA GH200 480GB", 989.4), ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA A100 80GB PCIe", 312),
    ("NVIDIA L40S", 362), ("NVIDIA L40", 181), ("NVIDIA L4", 121), ("NVIDIA A10", 125),
    ("NVIDIA GeForce RTX 4090", 165.2), ("NVIDIA GeForce RTX 3090", 71), ("Tesla V100-SXM2-16GB", 125),
    ("Tesla T4", 65), ("AMD Instinct MI300X", 1307.4),
    ("NVIDIA A10G", 0), ("NVIDIA GeForce GTX 1080", 0),  # unknown: mfu reads 0 rather than a wrong number
])
def test_mfu_uses_the_detected_gpus_own_peak(name, tflops):
    (table,) = [node.value for node in ast.parse(TRAIN_PY).body
                if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "GPU_PEAK_FLOPS"]
    peaks = ast.literal_eval(table)
    # the lookup train.py does: the first pattern found in the device name wins
    assert "next((f for pattern, f in GPU_PEAK_FLOPS if re.search(pattern, gpu_name)), 0.0)" in TRAIN_PY
    found = next((f for pattern, f in peaks if re.search(pattern, name)), 0.0)
    assert found == tflops * 1e12
