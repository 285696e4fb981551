"""The GPUs as this machine presents them, and the start-up checks on them.

A run's workers are resolved and checked here before anything is created (loop.run calls
`check_workers` next to the preflight), so a run that cannot train refuses in a second with one
line instead of leaving a branch, a worktree and results/<tag> behind:

    --ray ADDRESS   Ray must import (the cluster places the workers)
    --gpus LIST     each entry an index, a GPU UUID (GPU-...) or a MIG identifier (MIG-...); an
                    index counts among the GPUs CUDA_VISIBLE_DEVICES already shows (SLURM,
                    Kubernetes), so worker i gets the i-th visible device, the string from that
                    variable, not physical GPU i
    --gpus all      CUDA_VISIBLE_DEVICES's entries when it is set, else nvidia-smi -L's GPUs (a
                    MIG-enabled GPU gives one worker per MIG instance)
    then            a fresh Python, pinned as the workers will be, must see every one of them
                    through torch; when it does not, `diagnose` says why (a CPU build of torch,
                    torch built for a newer CUDA than the driver, CUDA_VISIBLE_DEVICES, no
                    /dev/nvidia-uvm) and how to fix it

torch is only ever imported in a subprocess: the harness itself never initialises CUDA (a CUDA
context in the harness would hold GPU memory for the whole night and be inherited by nothing).
Trainings get CUDA_DEVICE_ORDER=PCI_BUS_ID unless the user set an order, so an index means the
GPU nvidia-smi shows under that index.

    python -m autoresearch.gpus      one line; exit 0 torch sees a GPU, 1 a GPU that torch cannot
                                     use (the fix is on the line), 2 no GPU on this machine
"""

import ast
import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from autoresearch.errors import AutoresearchError

DEVICE = re.compile(r"^(\d+|GPU-[0-9A-Fa-f-]+|MIG-[0-9A-Za-z/-]+)$")  # what CUDA_VISIBLE_DEVICES accepts
ORDER = "PCI_BUS_ID"  # nvidia-smi's numbering; CUDA's own default is fastest first
RAY_MISSING = "--ray needs Ray: pip install 'autoresearch[ray]'"
PROBE_TIMEOUT = 120.0  # seconds for a fresh Python to import torch and count its GPUs
SMI_TIMEOUT = 30.0
_GPU_LINE = re.compile(r"^GPU (\d+): (.*?)(?: \(UUID: (GPU-[^)]+)\))?\s*$")
_MIG_LINE = re.compile(r"^\s+MIG .*\(UUID: (MIG-[^)]+)\)")
# Run in a fresh Python with the workers' pinning: what torch sees there, as one JSON line.
_PROBE = """
import json
out = {"torch": "", "cuda": None, "hip": None, "count": 0, "names": [], "error": ""}
try:
    import torch
    out.update(torch=torch.__version__, cuda=torch.version.cuda, hip=getattr(torch.version, "hip", None))
    torch.cuda.init()
    out["count"] = torch.cuda.device_count()
    out["names"] = [torch.cuda.get_device_name(i) for i in range(out["count"])]
except Exception as exc:
    out["error"] = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
print("PROBE " + json.dumps(out))
"""


# ---------------------------------------------------------------------------
# What the machine shows: torch's build, nvidia-smi, CUDA_VISIBLE_DEVICES
# ---------------------------------------------------------------------------


@dataclass
class TorchBuild:
    version: str  # "" when torch is not installed
    cuda: str | None = None  # torch.version.cuda: None for a CPU (or ROCm) build
    hip: str | None = None  # torch.version.hip: ROCm builds

    @property
    def gpu(self) -> bool:
        return bool(self.cuda or self.hip)


@dataclass
class Driver:
    """What nvidia-smi says; found False when there is no nvidia-smi."""

    found: bool
    error: str = ""  # nvidia-smi ran and failed: its first line
    version: str = ""  # the driver's version
    cuda: str = ""  # the newest CUDA the driver runs
    gpus: list[tuple[str, str, str, list[str]]] = field(default_factory=list)  # (index, name, uuid, MIG uuids)

    def devices(self) -> list[str]:
        """One entry per usable device: the GPU's index, or its MIG instances' identifiers."""
        return [m for index, _, _, migs in self.gpus for m in (migs or [index])]


def torch_build() -> TorchBuild:
    """torch's version and CUDA build, read from torch/version.py without importing torch (~2 s)."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return TorchBuild("")
    found = {}
    try:
        tree = ast.parse((Path(list(spec.submodule_search_locations)[0]) / "version.py").read_text())
    except (OSError, SyntaxError):
        return TorchBuild("unknown")
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and getattr(node, "value", None) is not None:
            try:
                found[target.id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return TorchBuild(str(found.get("__version__", "unknown")), found.get("cuda"), found.get("hip"))


def nvidia_smi(env: Mapping[str, str]) -> Driver:
    """nvidia-smi -L's GPUs and the driver's versions (nvidia-smi ignores CUDA_VISIBLE_DEVICES)."""
    smi = shutil.which("nvidia-smi", path=env.get("PATH", os.defpath))
    if smi is None:
        return Driver(False)
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=SMI_TIMEOUT, env=dict(env),
                                stdin=subprocess.DEVNULL)
        header = subprocess.run([smi], capture_output=True, text=True, timeout=SMI_TIMEOUT, env=dict(env),
                                stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Driver(True, error=f"nvidia-smi does not run: {exc}")
    if listed.returncode != 0:
        said = (listed.stdout + listed.stderr).strip().splitlines()
        return Driver(True, error=(said or [f"exit {listed.returncode}"])[0][:200])
    gpus = []
    for line in listed.stdout.splitlines():
        if match := _GPU_LINE.match(line):
            gpus.append((match.group(1), match.group(2), match.group(3) or "", []))
        elif (match := _MIG_LINE.match(line)) and gpus:
            gpus[-1][3].append(match.group(1))
    version = re.search(r"Driver Version:\s*([\d.]+)", header.stdout)
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", header.stdout)
    return Driver(True, version=version.group(1) if version else "", cuda=cuda.group(1) if cuda else "", gpus=gpus)


def device_nodes() -> list[str]:
    """GPU device files (NVIDIA's, WSL's /dev/dxg, ROCm's /dev/kfd): a GPU is here even without nvidia-smi."""
    return sorted(glob.glob("/dev/nvidia*") + glob.glob("/dev/dxg") + glob.glob("/dev/kfd"))


def _has_gpu_node(nodes: Sequence[str]) -> bool:
    return any(re.fullmatch(r"/dev/(nvidia\d+|dxg|kfd)", n) for n in nodes)


def visible_devices(env: Mapping[str, str]) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as CUDA reads it: None when unset, else its entries up to the first
    one CUDA stops at (-1, a word): [] hides every GPU."""
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    entries = []
    for part in raw.split(","):
        if not DEVICE.match(part.strip()):
            break
        entries.append(part.strip())
    return entries


def pin_env(device: str, env: Mapping[str, str]) -> dict[str, str]:
    """The variables that pin a process to `device` (an entry, or several joined by commas)."""
    return {"CUDA_VISIBLE_DEVICES": device, "CUDA_DEVICE_ORDER": env.get("CUDA_DEVICE_ORDER") or ORDER}


# ---------------------------------------------------------------------------
# Why torch sees no GPU, and the fix
# ---------------------------------------------------------------------------


def _major(version: str | None) -> int | None:
    match = re.match(r"(\d+)", version or "")
    return int(match.group(1)) if match else None


def torch_install_fix(driver_cuda: str) -> str:
    """The torch to install for a driver that runs CUDA `driver_cuda` (PyPI: 2.11 and newer are
    built for CUDA 13; 2.10.0 is the last build for CUDA 12, which runs on any CUDA 12 driver)."""
    major = _major(driver_cuda)
    if major is None:
        return "pip install torch (a CUDA build: https://pytorch.org/get-started/locally/)"
    if major >= 13:
        return "pip install --force-reinstall torch (PyPI's builds are for CUDA 13)"
    if major == 12:
        return f"pip install torch==2.10.0 (PyPI's last build for CUDA 12; this driver runs CUDA {driver_cuda})"
    return f"update the NVIDIA driver (it runs CUDA {driver_cuda}): 525+ runs torch==2.10.0, 580+ the newest torch"


@dataclass
class GpuReport:
    ok: bool  # torch, in a fresh process, sees a CUDA device
    present: bool  # this machine has a GPU at all (nvidia-smi lists one, or /dev/nvidia0)
    detail: str  # what was seen, one line
    fix: str = ""  # empty when ok
    count: int = 0  # devices torch sees


def blocker(build: TorchBuild, driver: Driver, env: Mapping[str, str], nodes: Sequence[str] = ()) -> tuple[str, str] | None:
    """(why torch cannot see a GPU, the fix) when that is clear without starting torch, else None."""
    listed = f"nvidia-smi lists {len(driver.gpus)} GPU{'s' * (len(driver.gpus) != 1)}" + (
        f" ({driver.gpus[0][1]}{', ...' if len(driver.gpus) > 1 else ''}; driver {driver.version}, CUDA {driver.cuda})"
        if driver.gpus else "")
    if not build.version:
        return "torch is not installed", torch_install_fix(driver.cuda)
    if not build.gpu:
        why = f"torch {build.version} is a CPU build (torch.version.cuda is None)"
        if driver.gpus:
            return f"{listed} but {why}", torch_install_fix(driver.cuda)
        if not driver.found and not _has_gpu_node(nodes):
            return (f"{why}, and this machine shows no NVIDIA GPU (no nvidia-smi, no /dev/nvidia*)",
                    "run on a machine with an NVIDIA GPU and a CUDA build of torch, or use --profile cpu")
        return why, torch_install_fix(driver.cuda)
    if visible_devices(env) == []:
        return (f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']!r} hides every GPU",
                "unset CUDA_VISIBLE_DEVICES, or name GPUs in it (0,1 or GPU-... UUIDs)")
    if build.hip:  # ROCm: nvidia-smi has nothing to say; the probe decides
        return None
    if not driver.found and not _has_gpu_node(nodes):
        return ("this machine shows no NVIDIA GPU (no nvidia-smi, no /dev/nvidia*)",
                "run on a machine with an NVIDIA GPU, or use --profile cpu")
    if driver.error:
        return f"nvidia-smi fails: {driver.error}", "load the NVIDIA driver (reboot after a driver update) and check nvidia-smi"
    if driver.found and not driver.gpus:
        return "nvidia-smi lists no GPU", "check the driver with nvidia-smi, or use --profile cpu"
    if build.cuda and driver.cuda and (_major(build.cuda) or 0) > (_major(driver.cuda) or 0):
        return (f"{listed} but torch {build.version} is built for CUDA {build.cuda}, newer than the driver's "
                f"CUDA {driver.cuda}"), torch_install_fix(driver.cuda) + ", or update the NVIDIA driver"
    return None


def diagnose(build: TorchBuild, driver: Driver, env: Mapping[str, str], nodes: Sequence[str] = (),
             error: str = "") -> tuple[str, str]:
    """(why torch sees no GPU, the fix), from what was seen; `error` is torch.cuda.init()'s."""
    found = blocker(build, driver, env, nodes)
    if found:
        return found
    if any(re.fullmatch(r"/dev/nvidia\d+", n) for n in nodes) and "/dev/nvidia-uvm" not in nodes:
        return ("/dev/nvidia-uvm is missing (the nvidia-uvm module is not loaded, and a sandbox cannot load it)",
                "sudo nvidia-modprobe -u -c=0 (or run any CUDA program once outside the sandbox)")
    seen = f"nvidia-smi lists {len(driver.gpus)} GPU(s), but " if driver.gpus else ""
    return (f"{seen}torch {build.version} (CUDA {build.cuda or build.hip}) sees no GPU: {error or 'device count 0'}",
            "check the driver (nvidia-smi), the permissions of /dev/nvidia*, and CUDA_VISIBLE_DEVICES")


def probe_torch(env: Mapping[str, str], python: str = sys.executable) -> dict:
    """What torch sees in a fresh Python with `env`: {torch, cuda, hip, count, names, error}."""
    try:
        done = subprocess.run([python, "-c", _PROBE], env=dict(env), capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"count": 0, "error": f"the probe did not run: {exc}"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    if not lines:
        last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return {"count": 0, "error": f"the probe failed: {last[:200]}"}
    return json.loads(lines[-1][6:])


_SEEN: dict[tuple, GpuReport] = {}  # a run's start asks up to three times (profile, preflight, --gpus)
_KEYS = ("PATH", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "LD_LIBRARY_PATH")


def inspect(env: Mapping[str, str] | None = None, python: str = sys.executable) -> GpuReport:
    """Whether torch, pinned as `env` pins it, sees a GPU; and if not, why and the fix. The
    cheap checks come first: a CPU build of torch or a machine without a GPU answers at once.
    Asked once per process and environment."""
    env = dict(os.environ if env is None else env)
    env.setdefault("CUDA_DEVICE_ORDER", ORDER)
    key = (python, *(env.get(name) for name in _KEYS))
    if key not in _SEEN:
        _SEEN[key] = _inspect(env, python)
    return _SEEN[key]


def _inspect(env: dict[str, str], python: str) -> GpuReport:
    build, driver, nodes = torch_build(), nvidia_smi(env), device_nodes()
    present = bool(driver.gpus) or _has_gpu_node(nodes)
    found = blocker(build, driver, env, nodes)
    if found:
        return GpuReport(False, present, *found)
    seen = probe_torch(env, python)
    count = int(seen.get("count") or 0)
    if count > 0:
        names = seen.get("names") or ["?"]
        more = f" +{len(names) - 1}" if len(names) > 1 else ""
        return GpuReport(True, True, f"{names[0]}{more} ({count} visible to torch {seen.get('torch')}, "
                                     f"CUDA {seen.get('cuda') or seen.get('hip')})", count=count)
    return GpuReport(False, present, *diagnose(build, driver, env, nodes, seen.get("error", "")))


# ---------------------------------------------------------------------------
# --gpus, --workers, --ray: the workers of a run
# ---------------------------------------------------------------------------


def parse_gpus(text: str) -> list[str] | None:
    """--gpus: "all" (None: ask the machine), or distinct devices: indices, GPU-... or MIG-..."""
    if text.strip().lower() == "all":
        return None
    gpus = [part.strip() for part in text.split(",") if part.strip()]
    if not gpus or not all(DEVICE.match(g) for g in gpus):
        raise AutoresearchError(f"bad --gpus {text!r}: GPU indices like 0,1,2,3, UUIDs (GPU-...), "
                                f"MIG identifiers (MIG-...), or all")
    if len(set(gpus)) != len(gpus):
        raise AutoresearchError(f"bad --gpus {text!r}: a GPU named twice (one worker per GPU)")
    return gpus


def resolve_gpus(text: str, env: Mapping[str, str]) -> list[str]:
    """--gpus as the CUDA_VISIBLE_DEVICES value of each worker (see the module's docstring)."""
    named = parse_gpus(text)
    visible = visible_devices(env)
    shown = f"CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES')!r}"
    if visible == []:
        raise AutoresearchError(f"--gpus {text}: {shown} hides every GPU; unset it, or name GPUs in it")
    if named is None:
        if visible is not None:
            return visible
        driver = nvidia_smi(env)
        if not driver.found:
            raise AutoresearchError("--gpus all: nvidia-smi is not available here; name the GPUs (--gpus 0,1) "
                                    "or use --workers N")
        if not driver.devices():
            raise AutoresearchError(f"--gpus all: nvidia-smi -L lists no GPU{': ' + driver.error if driver.error else ''}")
        return driver.devices()
    if visible is None and any(g.isdigit() for g in named):
        listed = nvidia_smi(env).gpus  # (without nvidia-smi the torch probe decides)
        past = [g for g in named if g.isdigit() and listed and int(g) >= len(listed)]
        if past:
            raise AutoresearchError(f"--gpus {text}: no GPU {past[0]}: nvidia-smi -L lists {len(listed)} "
                                    f"(indices 0-{len(listed) - 1})")
    devices = []
    for g in named:
        if g.isdigit() and visible is not None:
            if int(g) >= len(visible):
                raise AutoresearchError(f"--gpus {text}: no GPU {g}: {shown} shows {len(visible)} "
                                        f"(indices 0-{len(visible) - 1} count among them)")
            g = visible[int(g)]
        elif not g.isdigit() and visible is not None and all(not v.isdigit() for v in visible) and not any(
                v.startswith(g) or g.startswith(v) for v in visible):
            raise AutoresearchError(f"--gpus {text}: {g} is not among the GPUs {shown} shows")
        devices.append(g)
    if len(set(devices)) != len(devices):
        raise AutoresearchError(f"bad --gpus {text!r}: a GPU named twice ({shown} maps indices to its entries)")
    return devices


def worker_gpus(config, env: Mapping[str, str] | None = None) -> list[str | None]:
    """The local workers of a run: one per --gpus device (pinned), or --workers N unpinned."""
    env = os.environ if env is None else env
    if config.gpus:
        return list(resolve_gpus(config.gpus, env))
    return [None] * (config.workers or 1)


def check_workers(config, env: Mapping[str, str] | None = None) -> list[str | None]:
    """Every start-up check on the workers, before anything is created: Ray imports (--ray);
    --gpus resolves, and (unless config.preflight is off) torch in a fresh process sees every
    device named. Returns the local workers (empty with --ray). One-line AutoresearchError."""
    env = os.environ if env is None else env
    if config.ray is not None:
        import_ray()
        return []
    gpus = worker_gpus(config, env)
    if config.gpus and config.preflight:
        check_torch_sees(gpus, env, config.gpus)
    return gpus


def check_torch_sees(devices: list[str], env: Mapping[str, str], text: str = "") -> None:
    """Raise unless torch, pinned to `devices` as the workers are, sees each of them."""
    named = f"--gpus {text or ','.join(devices)}"
    report = inspect({**env, **pin_env(",".join(devices), env)})
    if not report.ok:
        what = f"GPU {devices[0]}" if len(devices) == 1 else f"GPUs {','.join(devices)}"
        fix = report.fix.replace("use --profile cpu", "drop --gpus (--workers N trains on the CPU)")
        raise AutoresearchError(f"{named}: no {what} visible to torch: {report.detail}; fix: {fix}")
    if report.count < len(devices):  # one at a time (a process sees only one MIG instance anyway)
        missing = [d for d in devices if not inspect({**env, **pin_env(d, env)}).ok]
        if missing:
            raise AutoresearchError(f"{named}: torch sees {report.count} of the {len(devices)} GPUs named; not "
                                    f"visible: {', '.join(missing)} (check nvidia-smi and CUDA_VISIBLE_DEVICES)")


def main() -> int:
    report = inspect()
    if report.ok:
        print(f"gpu: {report.detail}")
        return 0
    print(f"gpu: {report.detail}; fix: {report.fix}")
    return 1 if report.present else 2


if __name__ == "__main__":
    sys.exit(main())


def import_ray():
    """Ray, or the one-line error naming the extra (autoresearch[ray])."""
    try:
        import ray
    except ImportError:
        raise AutoresearchError(RAY_MISSING) from None
    return ray
