"""Run training inside bubblewrap: a read-only machine, no network, the held-out split hidden.

Layout of the sandbox (in mount order; later mounts cover earlier ones):

    /                 the host's root, read-only (--ro-bind / /)
    /dev, /proc       a minimal /dev and the sandbox's own /proc (new pid namespace)
    /tmp              an empty tmpfs (compile caches, temp files; gone after the run)
    $HOME             an empty read-only tmpfs (keys and configs in it are not readable) with the
                      Python installation re-bound read-only where it lives under it
    worktree, cache   read-only binds (they may lie under /tmp or $HOME)
    run_dir, scratch  the only writable host paths: the run's folder and the worktree's scratch
    held-out files    covered by /dev/null (files) or an empty tmpfs (folders): unreadable
    /dev/nvidia*, /dev/dri   device binds when present, so CUDA works

Namespaces: network (only a private loopback), pid, ipc, uts, cgroup; all capabilities dropped
(bwrap started by root would keep them, and CAP_SYS_ADMIN could remount / read-write); the
sandbox dies with its parent and runs in a new session (no TIOCSTI into the harness's terminal).
"""

import glob
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Sequence

from autoresearch.errors import AutoresearchError

NAMESPACES = ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
DEVICE_GLOBS = ["/dev/nvidia*", "/dev/nvidia-caps", "/dev/dri", "/dev/kfd"]  # NVIDIA, DRM render nodes, ROCm


def _under(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


class Sandbox:
    """bubblewrap, when it is installed and works here (see `detect`)."""

    def __init__(self, bwrap: str | None, reason: str = ""):
        self.bwrap = bwrap
        self.reason = reason  # why there is no sandbox; "" when available

    @property
    def available(self) -> bool:
        return self.bwrap is not None

    @classmethod
    def detect(cls) -> "Sandbox":
        """bwrap on PATH and a trial sandbox with our namespaces that runs `true`."""
        if not sys.platform.startswith("linux"):
            return cls(None, "sandboxing needs Linux (bubblewrap)")
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            return cls(None, "bwrap not found (install bubblewrap)")
        trial = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", *NAMESPACES,
                 "--cap-drop", "ALL", "--die-with-parent", "--", "true"]
        try:
            done = subprocess.run(trial, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return cls(None, f"bwrap does not run: {exc}")
        if done.returncode != 0:
            first = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[0]
            return cls(None, f"bwrap does not work here: {first}")
        return cls(bwrap)

    def wrap(
        self,
        argv: Sequence[str],
        *,
        worktree: Path,
        run_dir: Path,
        cache_dir: Path,
        heldout_paths: Iterable[Path] = (),
        scratch: Path,
        hide_home: bool = True,
        extra_ro: Iterable[Path] = (),
    ) -> list[str]:
        """`argv` run inside the sandbox, as an argv for runner.run_training(command=...)."""
        if not self.available:
            raise AutoresearchError(f"no sandbox: {self.reason}")
        worktree, run_dir, cache_dir, scratch = (Path(p).resolve() for p in (worktree, run_dir, cache_dir, scratch))
        run_dir.mkdir(parents=True, exist_ok=True)
        scratch.mkdir(parents=True, exist_ok=True)
        args = [self.bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
        home = Path.home().resolve()
        covered = [Path("/tmp")]
        if hide_home and home != Path("/"):
            args += ["--tmpfs", str(home)]
            covered.append(home)
        # Read-only re-binds of what the run needs under a covered folder, shallow before deep.
        needed = {worktree, cache_dir, *(Path(p).resolve() for p in extra_ro), *_python_paths()}
        for path in sorted(needed, key=lambda p: len(p.parts)):
            if path.exists() and any(_under(path, c) for c in covered):
                args += ["--ro-bind", str(path), str(path)]
        if not any(_under(cache_dir, c) for c in covered):
            args += ["--ro-bind", str(cache_dir), str(cache_dir)]  # explicit: read-only even if / changes
        for path in (run_dir, scratch):
            args += ["--bind", str(path), str(path)]
        for path in heldout_paths:
            for real in {Path(path), Path(path).resolve()}:  # a symlinked cache path reaches it either way
                if real.is_dir():
                    args += ["--tmpfs", str(real), "--remount-ro", str(real)]
                elif real.exists():
                    args += ["--ro-bind", "/dev/null", str(real)]
        for pattern in DEVICE_GLOBS:
            for dev in sorted(glob.glob(pattern)):
                args += ["--dev-bind", dev, dev]
        if hide_home and home != Path("/"):
            args += ["--remount-ro", str(home)]
        args += [*NAMESPACES, "--cap-drop", "ALL", "--die-with-parent", "--new-session", "--chdir", str(worktree)]
        # Caches that default to $HOME (read-only here) go to the scratch folder, which persists
        # across runs of this worktree: Triton, Inductor and CUDA's JIT reuse their compiled kernels.
        for name, sub in (("XDG_CACHE_HOME", "cache"), ("TRITON_CACHE_DIR", "triton"),
                          ("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("CUDA_CACHE_PATH", "cuda"),
                          ("MPLCONFIGDIR", "matplotlib")):
            args += ["--setenv", name, str(scratch / sub)]
        args += ["--setenv", "TMPDIR", "/tmp", "--"]
        return args + list(argv)


def _python_paths() -> set[Path]:
    """Where this Python and its packages live (the training process uses the same interpreter)."""
    found = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix), Path(sys.executable).parent}
    try:
        found.add(Path(site.getusersitepackages()))
    except AttributeError:
        pass
    found |= {Path(p) for p in sys.path if p and os.path.isabs(p)}
    return {p.resolve() for p in found if p.exists()}
