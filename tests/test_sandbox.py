"""The bubblewrap sandbox and the held-out watch, with the real bwrap and real processes."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import psutil
import pytest

from autoresearch.heldout_watch import HeldoutWatch
from autoresearch.runner import run_training, training_env
from autoresearch.sandbox import Sandbox

SANDBOX = Sandbox.detect()
needs_bwrap = pytest.mark.skipif(not SANDBOX.available, reason=f"no sandbox: {SANDBOX.reason}")

PROBE = textwrap.dedent("""\
    import json, os, socket, sys
    port, home, checkout, run_dir, cache, heldout = sys.argv[1:]
    out = {}
    def attempt(name, fn):
        try:
            out[name] = fn()
        except OSError as exc:
            out[name] = "error: " + type(exc).__name__
    def write(path):
        with open(path, "w") as f:
            f.write("x")
        return "wrote"
    attempt("home", lambda: write(os.path.join(home, "sandbox-probe")))
    attempt("checkout", lambda: write(os.path.join(checkout, "sandbox-probe")))
    attempt("run_dir", lambda: write(os.path.join(run_dir, "sandbox-probe")))
    attempt("cache", lambda: open(os.path.join(cache, "tokens", "train.npy")).read())
    attempt("cache_write", lambda: write(os.path.join(cache, "tokens", "new")))
    attempt("heldout", lambda: open(heldout).read())
    attempt("tcp", lambda: socket.create_connection(("127.0.0.1", int(port)), timeout=5) and "connected")
    print(json.dumps(out))
""")


@pytest.fixture
def layout(tmp_path):
    """A checkout with a worktree and run folder, a cache with a held-out file, a scratch folder."""
    checkout = tmp_path / "checkout"
    worktree = checkout / ".autoresearch" / "worktrees" / "t"
    run_dir = checkout / "results" / "t" / "runs" / "0001"
    cache = tmp_path / "cache" / "stdlib"
    for folder in (worktree, run_dir, cache / "tokens", cache / "heldout"):
        folder.mkdir(parents=True)
    (cache / "tokens" / "train.npy").write_text("TRAIN-TOKENS")
    (cache / "heldout" / "heldout.npy").write_text("HELDOUT-SECRET")
    (worktree / "probe.py").write_text(PROBE)
    return dict(checkout=checkout, worktree=worktree, run_dir=run_dir, cache=cache,
                scratch=tmp_path / "scratch", heldout=cache / "heldout" / "heldout.npy")


@pytest.fixture
def server():
    """A TCP server on 127.0.0.1 outside the sandbox that answers every connection."""
    sock = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def serve():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield sock.getsockname()[1], accepted
    sock.close()


def probe_argv(layout, port, home):
    return [sys.executable, "probe.py", str(port), str(home), str(layout["checkout"]), str(layout["run_dir"]),
            str(layout["cache"]), str(layout["heldout"])]


def test_unsandboxed_probe_can_do_everything(layout, server, tmp_path):
    """The control: the same probe without a sandbox writes, reads and connects."""
    port, accepted = server
    home = tmp_path / "home"
    home.mkdir()
    done = subprocess.run(probe_argv(layout, port, home), cwd=layout["worktree"], capture_output=True, text=True)
    out = json.loads(done.stdout)
    assert out == {"home": "wrote", "checkout": "wrote", "run_dir": "wrote", "cache": "TRAIN-TOKENS",
                   "cache_write": "wrote", "heldout": "HELDOUT-SECRET", "tcp": "connected"}
    assert accepted


@needs_bwrap
def test_sandboxed_probe_writes_only_its_run_folder_and_sees_no_network_or_heldout(layout, server):
    port, accepted = server
    home = Path.home()
    argv = SANDBOX.wrap(probe_argv(layout, port, home), worktree=layout["worktree"], run_dir=layout["run_dir"],
                        cache_dir=layout["cache"], heldout_paths=[layout["heldout"]], scratch=layout["scratch"])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["home"].startswith("error") and not (home / "sandbox-probe").exists()
    # under /tmp (here) the write lands in the sandbox's own tmpfs; elsewhere it fails: never on the host
    assert not (layout["checkout"] / "sandbox-probe").exists()
    assert out["run_dir"] == "wrote" and (layout["run_dir"] / "sandbox-probe").read_text() == "x"
    assert out["cache"] == "TRAIN-TOKENS"
    assert out["cache_write"].startswith("error") and not (layout["cache"] / "tokens" / "new").exists()
    assert out["heldout"] == "" or out["heldout"].startswith("error")
    assert "HELDOUT-SECRET" not in done.stdout
    assert out["tcp"].startswith("error") and not accepted


@needs_bwrap
def test_a_hung_sandboxed_run_is_killed_on_timeout_with_everything_it_started(layout, tmp_path):
    token = uuid.uuid4().hex
    hang = (f"import subprocess, sys, time\n"
            f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', '{token}'])\n"
            f"subprocess.Popen(['setsid', sys.executable, '-c', 'import time; time.sleep(600)', '{token}'])\n"
            f"print('started', flush=True)\ntime.sleep(600)\n")
    (layout["worktree"] / "hang.py").write_text(hang)
    argv = SANDBOX.wrap([sys.executable, "hang.py"], worktree=layout["worktree"], run_dir=layout["run_dir"],
                        cache_dir=layout["cache"], scratch=layout["scratch"])
    result = run_training(layout["worktree"], layout["run_dir"] / "run.log", timeout=3, env=training_env(os.environ),
                          command=argv, pid_file=tmp_path / "training.json", kill_grace=1)
    assert result.status == "timeout"
    assert "started" in result.log_path.read_text()
    left = [p for p in psutil.process_iter(["cmdline"]) if token in " ".join(p.info["cmdline"] or [])]
    assert left == []
    assert not (tmp_path / "training.json").exists()


@needs_bwrap
def test_compile_and_cuda_jit_caches_are_writable_in_the_sandbox_and_outlive_the_run(layout, tmp_path):
    # $HOME (CUDA's default ~/.nv/ComputeCache) and the lab cache are read-only in the sandbox
    write = ("import os\nfor name in ('CUDA_CACHE_PATH', 'TRITON_CACHE_DIR', 'TORCHINDUCTOR_CACHE_DIR'):\n"
             "    os.makedirs(os.environ[name], exist_ok=True)\n"
             "    open(os.path.join(os.environ[name], 'kernel'), 'w').write(name)\n"
             "print('wrote', os.environ['CUDA_CACHE_PATH'])\n")
    (layout["worktree"] / "jit.py").write_text(write)
    argv = SANDBOX.wrap([sys.executable, "jit.py"], worktree=layout["worktree"], run_dir=layout["run_dir"],
                        cache_dir=layout["cache"], scratch=layout["scratch"])
    env = {**training_env(os.environ), "CUDA_CACHE_PATH": str(layout["cache"] / "compile" / "cuda")}
    result = run_training(layout["worktree"], layout["run_dir"] / "run.log", timeout=60, env=env, command=argv)
    assert result.returncode == 0, result.log_path.read_text()
    assert f"wrote {layout['scratch'] / 'cuda'}" in result.log_path.read_text()
    assert (layout["scratch"] / "cuda" / "kernel").read_text() == "CUDA_CACHE_PATH"
    assert (layout["scratch"] / "triton" / "kernel").is_file() and (layout["scratch"] / "inductor" / "kernel").is_file()


def test_heldout_watch_sees_an_open_by_another_process_and_nothing_else(tmp_path):
    heldout, other = tmp_path / "heldout.npy", tmp_path / "train.npy"
    heldout.write_text("HELDOUT")
    other.write_text("TRAIN")
    watch = HeldoutWatch([heldout])
    assert watch.available
    watch.start()
    subprocess.run([sys.executable, "-c", f"open({str(other)!r}).read()"], check=True)
    assert watch.stop() == []
    watch.start()
    link = tmp_path / "link.npy"
    os.link(heldout, link)  # another name for the same file is still the held-out file
    subprocess.run([sys.executable, "-c", f"open({str(link)!r}).read()"], check=True)
    assert watch.stop() == [f"read the held-out file {heldout}"]


@pytest.mark.slow
@needs_bwrap
def test_the_real_train_py_trains_sandboxed_and_hands_over_its_model_without_reading_heldout(tmp_path, lab_cache):
    from autoresearch.cache_guard import CacheGuard
    from conftest import REPO_ROOT, lab_env

    worktree, run_dir = tmp_path / "worktree", tmp_path / "run"
    worktree.mkdir()
    for name in ("train.py", "prepare.py"):
        (worktree / name).write_text((REPO_ROOT / name).read_text())
    guard = CacheGuard(lab_cache / "stdlib" / "manifest.json")
    heldout = guard.heldout_paths()
    env = training_env(os.environ, {**lab_env(lab_cache), "AUTORESEARCH_TIME_BUDGET": "2",
                                    "AUTORESEARCH_HANDOFF": str(run_dir / "model.pt2")})
    argv = SANDBOX.wrap([sys.executable, "train.py"], worktree=worktree, run_dir=run_dir, cache_dir=lab_cache,
                        heldout_paths=heldout, scratch=tmp_path / "scratch")
    watch = HeldoutWatch(heldout)
    watch.start()
    result = run_training(worktree, run_dir / "run.log", timeout=300, env=env, command=argv)
    assert watch.stop() == []  # the sandbox hides them anyway; unsandboxed, the watch would say so
    assert result.status == "ok", result.log_path.read_text()[-3000:]
    assert (run_dir / "model.pt2").is_file()
    assert guard.quick_changes() == []
    assert sorted(p.name for p in worktree.iterdir()) == ["prepare.py", "train.py"]


@pytest.mark.slow
def test_an_unsandboxed_train_py_that_reads_heldout_is_detected(tmp_path, lab_cache):
    from autoresearch.cache_guard import CacheGuard
    from conftest import REPO_ROOT, lab_env

    text = (REPO_ROOT / "train.py").read_text()
    cheat = text.replace('train_loader = make_dataloader(tokenizer, device_batch, MAX_SEQ_LEN, "train")',
                         'train_loader = make_dataloader(tokenizer, device_batch, MAX_SEQ_LEN, "heldout")')
    assert cheat != text
    (tmp_path / "train.py").write_text(cheat)
    (tmp_path / "prepare.py").write_text((REPO_ROOT / "prepare.py").read_text())
    watch = HeldoutWatch(CacheGuard(lab_cache / "stdlib" / "manifest.json").heldout_paths())
    watch.start()
    env = training_env(os.environ, {**lab_env(lab_cache), "AUTORESEARCH_TIME_BUDGET": "1"})
    result = run_training(tmp_path, tmp_path / "run.log", timeout=300, env=env)
    assert result.status == "ok"
    assert any("heldout.npy" in line for line in watch.stop())
