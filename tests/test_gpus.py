"""GPUs as the machine presents them, and refusing at once what cannot train.

This machine has no GPU and a CPU build of torch, which is itself one of the cases. The others are
made with a real `nvidia-smi` executable written by the test onto PATH (it prints what the real
one prints for the machine described), and with diagnose() fed a torch build and a driver.
"""

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import git
import pytest
import torch

from autoresearch.config import RunConfig
from autoresearch.errors import AutoresearchError
from autoresearch.gpus import (Driver, TorchBuild, diagnose, nvidia_smi, parse_gpus, resolve_gpus, torch_install_fix,
                               visible_devices, worker_gpus)
from autoresearch.runner import run_training, training_defaults
from autoresearch.trainers import LocalTrainer
from conftest import REPO_ROOT
from trainer_lab import job

no_gpu = pytest.mark.skipif(torch.cuda.is_available() or torch.version.cuda is not None,
                            reason="needs this machine's CPU build of torch")
UUID0 = "GPU-8c2a1f7e-3b4d-4e5f-9a1b-2c3d4e5f6a7b"
UUID1 = "GPU-1f2e3d4c-5b6a-4798-8a9b-0c1d2e3f4a5b"
MIG = ["MIG-6e1d8a0c-2b3f-5d4e-9f8a-7b6c5d4e3f2a", "MIG-0a9b8c7d-6e5f-5a4b-8c3d-2e1f0a9b8c7d"]


def fake_nvidia_smi(folder: Path, driver: str = "570.86.15", cuda: str = "12.8", mig: bool = False,
                    fails: bool = False) -> Path:
    """A real executable named nvidia-smi: -L lists two H100s (the second with two MIG instances
    when `mig`), no arguments prints the header with the driver and CUDA versions."""
    folder.mkdir(parents=True, exist_ok=True)
    listing = [f"GPU 0: NVIDIA H100 80GB HBM3 (UUID: {UUID0})", f"GPU 1: NVIDIA H100 80GB HBM3 (UUID: {UUID1})"]
    if mig:
        listing += [f"  MIG 3g.40gb     Device  {i}: (UUID: {m})" for i, m in enumerate(MIG)]
    fail = 'echo "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver."; exit 9'
    lines = ["#!/bin/sh", fail if fails else "", 'if [ "$1" = "-L" ]; then', "cat <<'EOF'", *listing, "EOF",
             "exit 0", "fi",
             f'echo "| NVIDIA-SMI {driver}     Driver Version: {driver}     CUDA Version: {cuda}     |"']
    script = folder / "nvidia-smi"
    script.write_text("\n".join(lines) + "\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return folder


@pytest.fixture
def lab(tmp_path) -> Path:
    """A checkout of the real lab files in a git repo of their own."""
    root = tmp_path / "lab"
    root.mkdir()
    for name in ("prepare.py", "train.py"):
        shutil.copy(REPO_ROOT / name, root / name)
    repo = git.Repo.init(root, initial_branch="main")
    with repo.config_writer() as cfg:
        cfg.set_value("user", "name", "Test User")
        cfg.set_value("user", "email", "test@example.com")
    repo.index.add(["prepare.py", "train.py"])
    repo.index.commit("lab")
    return root


def cli(lab: Path, *args: str, path: Path | None = None, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **env}
    if path is not None:
        full["PATH"] = f"{path}:{os.environ['PATH']}"
    return subprocess.run([sys.executable, "-m", "autoresearch", *args], cwd=lab, env=full, capture_output=True,
                          text=True, timeout=300)


def nothing_created(lab: Path, tag: str) -> None:
    repo = git.Repo(lab)
    assert [h.name for h in repo.heads] == ["main"]
    assert len(repo.git.worktree("list").splitlines()) == 1
    assert not (lab / "results" / tag).exists() and not (lab / ".autoresearch").exists()


# ---------------------------------------------------------------------------
# Refuse at once, create nothing
# ---------------------------------------------------------------------------


@no_gpu
def test_gpus_0_without_a_gpu_refuses_in_one_line_and_creates_nothing(lab):
    done = cli(lab, "run", "--tag", "g0", "--gpus", "0")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "--gpus 0: no GPU 0 visible to torch" in done.stderr
    assert "is a CPU build (torch.version.cuda is None)" in done.stderr and "drop --gpus" in done.stderr
    nothing_created(lab, "g0")


def test_ray_without_ray_installed_refuses_and_creates_nothing(lab, monkeypatch):
    from autoresearch.loop import run

    monkeypatch.setitem(sys.modules, "ray", None)  # how Python sees a package that is not installed
    with pytest.raises(AutoresearchError, match=r"^--ray needs Ray: pip install"):
        run(RunConfig(repo_root=lab, tag="r0", ray="auto", preflight=False))
    nothing_created(lab, "r0")


@no_gpu
def test_gpus_named_by_cuda_visible_devices_that_hides_them_all_refuse(lab):
    done = cli(lab, "run", "--tag", "g1", "--gpus", "all", CUDA_VISIBLE_DEVICES="")
    assert done.returncode == 1 and "CUDA_VISIBLE_DEVICES='' hides every GPU" in done.stderr, done.stderr
    nothing_created(lab, "g1")


# ---------------------------------------------------------------------------
# nvidia-smi lists GPUs, torch sees none: doctor and preflight say why, with the fix
# ---------------------------------------------------------------------------


@no_gpu
def test_doctor_names_a_cpu_torch_on_a_gpu_machine_with_the_torch_for_its_driver(lab, tmp_path):
    bin_dir = fake_nvidia_smi(tmp_path / "bin", cuda="12.8")
    done = cli(lab, "doctor", path=bin_dir, COLUMNS="400")  # no --profile: the machine has GPUs, so gpu
    assert done.returncode == 1
    gpu = next(line for line in done.stdout.splitlines() if line.lstrip("│ ").startswith("gpu"))
    assert "nvidia-smi lists 2 GPUs (NVIDIA H100 80GB HBM3, ...; driver 570.86.15, CUDA 12.8)" in gpu
    assert "torch.version.cuda is None" in gpu and "pip install torch==2.10.0" in gpu
    done = subprocess.run([sys.executable, "-m", "autoresearch.gpus"], env={**os.environ, "PYTHONPATH": str(REPO_ROOT),
                          "PATH": f"{bin_dir}:{os.environ['PATH']}"}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "fix: pip install torch==2.10.0" in done.stdout  # a GPU torch cannot use


@no_gpu
def test_preflight_refuses_a_run_on_a_gpu_machine_whose_torch_is_a_cpu_build(lab, tmp_path):
    bin_dir = fake_nvidia_smi(tmp_path / "bin", cuda="13.0")
    done = cli(lab, "run", "--tag", "p0", path=bin_dir)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: gpu: profile gpu but no CUDA device is visible to torch: nvidia-smi lists 2")
    assert "fix: pip install --force-reinstall torch" in done.stderr
    nothing_created(lab, "p0")


def test_a_torch_for_a_newer_cuda_than_the_driver_is_named_with_the_torch_to_install():
    driver = Driver(True, version="570.86.15", cuda="12.8", gpus=[("0", "NVIDIA H100 80GB HBM3", UUID0, [])])
    detail, fix = diagnose(TorchBuild("2.13.0", "13.0"), driver, {}, ["/dev/nvidia0"])
    assert detail == ("nvidia-smi lists 1 GPU (NVIDIA H100 80GB HBM3; driver 570.86.15, CUDA 12.8) but torch 2.13.0 "
                      "is built for CUDA 13.0, newer than the driver's CUDA 12.8")
    assert fix.startswith("pip install torch==2.10.0")
    # the same major version runs (CUDA's minor version compatibility): left to the probe
    older = Driver(True, version="550.1", cuda="12.4", gpus=driver.gpus)
    nodes = ["/dev/nvidia-uvm", "/dev/nvidia0", "/dev/nvidiactl"]
    assert diagnose(TorchBuild("2.10.0", "12.8"), older, {}, nodes, "boom")[0].endswith("sees no GPU: boom")
    # a sandbox started before anything loaded nvidia-uvm cannot load it: the node is missing
    detail, fix = diagnose(TorchBuild("2.10.0", "12.8"), older, {}, nodes[1:], "CUDA unknown error")
    assert detail.startswith("/dev/nvidia-uvm is missing") and "nvidia-modprobe -u" in fix
    assert torch_install_fix("11.4").startswith("update the NVIDIA driver")
    assert torch_install_fix("13.1").startswith("pip install --force-reinstall torch")


def test_a_failing_driver_and_a_machine_without_gpus_are_told_apart(tmp_path):
    failing = Driver(True, error="NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.")
    detail, fix = diagnose(TorchBuild("2.10.0", "12.8"), failing, {}, ["/dev/nvidia0"])
    assert detail.startswith("nvidia-smi fails: NVIDIA-SMI has failed") and "driver" in fix
    detail, fix = diagnose(TorchBuild("2.10.0", "12.8"), Driver(False), {}, [])
    assert detail.startswith("this machine shows no NVIDIA GPU") and fix.endswith("--profile cpu")
    driver = nvidia_smi({"PATH": f"{fake_nvidia_smi(tmp_path / 'bin', fails=True)}:/usr/bin:/bin"})
    assert driver.found and driver.error.startswith("NVIDIA-SMI has failed") and not driver.gpus
    assert diagnose(TorchBuild("2.10.0", "12.8"), driver, {}, [])[0].startswith("nvidia-smi fails: NVIDIA-SMI")


# ---------------------------------------------------------------------------
# --gpus as the machine presents them
# ---------------------------------------------------------------------------


def test_gpus_accepts_indices_uuids_and_mig_identifiers():
    assert parse_gpus(f"0, {UUID1},{MIG[0]}") == ["0", UUID1, MIG[0]]
    assert parse_gpus("ALL") is None
    for bad in ("0,x", "-1", "gpu0", ""):
        with pytest.raises(AutoresearchError, match="bad --gpus"):
            parse_gpus(bad)


def test_an_inherited_cuda_visible_devices_maps_worker_i_to_its_ith_entry():
    env = {"CUDA_VISIBLE_DEVICES": "2,3"}  # SLURM gave this job physical GPUs 2 and 3
    assert resolve_gpus("all", env) == ["2", "3"]
    assert resolve_gpus("1", env) == ["3"]
    assert resolve_gpus("1,0", env) == ["3", "2"]
    with pytest.raises(AutoresearchError, match=r"no GPU 2: CUDA_VISIBLE_DEVICES='2,3' shows 2"):
        resolve_gpus("0,2", env)
    uuids = {"CUDA_VISIBLE_DEVICES": f"{UUID0},{UUID1}"}  # Kubernetes' device plugin hands out UUIDs
    assert resolve_gpus("all", uuids) == [UUID0, UUID1]
    assert resolve_gpus("1", uuids) == [UUID1]
    with pytest.raises(AutoresearchError, match="named twice"):
        resolve_gpus(f"1,{UUID1}", uuids)
    assert resolve_gpus(UUID1, uuids) == [UUID1]
    with pytest.raises(AutoresearchError, match="is not among the GPUs"):
        resolve_gpus(MIG[0], uuids)
    # CUDA stops at the first entry it cannot read: "0,-1,1" shows GPU 0 only
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "0,-1,1"}) == ["0"]
    assert visible_devices({}) is None


def test_gpus_all_lists_nvidia_smi_gpus_and_each_mig_instance(tmp_path):
    env = {"PATH": f"{fake_nvidia_smi(tmp_path / 'bin', mig=True)}:/usr/bin:/bin"}  # sh and cat
    assert resolve_gpus("all", env) == ["0", *MIG]  # GPU 1 is split into two MIG instances
    config = RunConfig(repo_root=tmp_path, tag="t", gpus="all")
    assert worker_gpus(config, env) == ["0", *MIG]
    assert worker_gpus(RunConfig(repo_root=tmp_path, tag="t", workers=3), env) == [None, None, None]
    assert resolve_gpus(f"1,{MIG[1]}", env) == ["1", MIG[1]]
    with pytest.raises(AutoresearchError, match=r"no GPU 2: nvidia-smi -L lists 2 \(indices 0-1\)"):
        resolve_gpus("0,2", env)
    with pytest.raises(AutoresearchError, match="nvidia-smi is not available"):
        resolve_gpus("all", {"PATH": str(tmp_path / "empty")})
    assert resolve_gpus("2,3", {"PATH": str(tmp_path / "empty")}) == ["2", "3"]


def test_a_pinned_worker_trains_on_its_device_in_pci_bus_order_unless_the_user_chose_one(tmp_path):
    for gpu, base, order in ((MIG[1], {}, "PCI_BUS_ID"), ("3", {"CUDA_DEVICE_ORDER": "FASTEST_FIRST"}, "FASTEST_FIRST")):
        trainer = LocalTrainer("w", gpu=gpu, scratch_root=tmp_path / "s",
                               base_env={**os.environ, "CUDA_VISIBLE_DEVICES": "5,6", **base})
        out = trainer.run(job())
        assert out.result.status == "ok", out.log.decode()
        assert f"cuda {gpu}\n".encode() in out.log and f"order {order}\n".encode() in out.log


# ---------------------------------------------------------------------------
# train.py under the gpu profile without CUDA, and the training environment
# ---------------------------------------------------------------------------


@no_gpu
def test_train_py_on_the_gpu_profile_without_cuda_fails_at_start_up_with_the_reason(tmp_path):
    env = {**os.environ, "AUTORESEARCH_PROFILE": "gpu", "AUTORESEARCH_CACHE": str(tmp_path / "cache")}
    result = run_training(REPO_ROOT, tmp_path / "run.log", 120, env)
    log = (tmp_path / "run.log").read_text()
    assert result.status == "crash" and result.returncode == 1
    assert result.reason == ("exit 1: FAIL: profile gpu but no CUDA device: torch "
                             f"{torch.__version__} is a CPU build (torch.version.cuda is None)")
    assert "Device:" not in log and "step" not in log  # nothing built, nothing trained
    assert not (tmp_path / "cache").exists()


def test_training_gets_upstreams_allocator_and_cuda_jit_cache_unless_the_user_set_them(tmp_path):
    env = {"AUTORESEARCH_CACHE": str(tmp_path / "cache")}
    got = training_defaults(env)
    assert got["PYTORCH_ALLOC_CONF"] == "expandable_segments:True"
    assert got["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert got["CUDA_CACHE_PATH"] == str(tmp_path / "cache" / "compile" / "cuda")
    assert (tmp_path / "cache" / "compile" / "cuda").is_dir()
    mine = {**env, "PYTORCH_ALLOC_CONF": "backend:cudaMallocAsync", "CUDA_CACHE_PATH": "/fast/nv",
            "CUDA_DEVICE_ORDER": "FASTEST_FIRST"}
    assert not {"PYTORCH_ALLOC_CONF", "CUDA_CACHE_PATH", "CUDA_DEVICE_ORDER"} & set(training_defaults(mine))
    assert "PYTORCH_ALLOC_CONF" not in training_defaults({**env, "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:False"})
