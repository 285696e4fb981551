"""run_training and kill_orphan with real stand-in training scripts and real processes."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from autoresearch.records import RunLock
from autoresearch.process import kill_orphan
from autoresearch.runner import (
    MARKER,
    crash_reason,
    last_exception,
    run_training,
    training_env,
)

DATA = Path(__file__).parent / "data"
REPO_ROOT = Path(__file__).resolve().parent.parent

SUMMARY = """
print("---")
print("val_bpb:          1.234567")
print("training_seconds: 1.0")
print("total_seconds:    1.5")
print("peak_vram_mb:     0.0")
print("num_steps:        7")
print("depth:            2")
print("device:           cpu")
"""


def script(tmp_path: Path, *parts: str) -> Path:
    """A stand-in train.py (the parts, each dedented, in order) in its own folder."""
    folder = tmp_path / "lab"
    folder.mkdir(exist_ok=True)
    (folder / "train.py").write_text("".join(textwrap.dedent(p) for p in parts))
    return folder


def run(folder: Path, timeout: float = 60, **kw):
    env = training_env(os.environ)
    return run_training(folder, folder.parent / "runs" / "0001" / "run.log", timeout, env, **kw)


def gone(pid: int, wait: float = 5.0) -> bool:
    """True once `pid` is dead (a zombie counts: PID 1 here need not reap reparented processes)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def wait_for_file(path: Path, wait: float = 20.0) -> str:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def test_ok_run_parses_the_summary_and_logs_everything(tmp_path):
    folder = script(tmp_path, 'print("step 1 loss 3.0")\nimport sys; print("warn", file=sys.stderr)\n' + SUMMARY)
    result = run(folder)
    assert result.status == "ok" and result.reason == ""
    assert result.returncode == 0
    assert result.metrics["val_bpb"] == 1.234567 and result.metrics["num_steps"] == 7
    log = result.log_path.read_text()
    assert "step 1 loss 3.0" in log and "warn" in log and "val_bpb:" in log
    assert result.log_path == tmp_path / "runs" / "0001" / "run.log"
    assert result.seconds > 0


def test_exception_is_a_crash_with_the_exception_line(tmp_path):
    folder = script(tmp_path, """
        print("starting")
        def step():
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        step()
    """)
    result = run(folder)
    assert result.status == "crash" and result.returncode == 1
    assert result.reason == "exit 1: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"


def test_syntax_error_is_a_crash_naming_it(tmp_path):
    folder = script(tmp_path, "x = (\n")
    result = run(folder)
    assert result.status == "crash"
    assert result.reason.startswith("exit 1: SyntaxError:")


def test_nan_val_bpb_is_a_crash(tmp_path):
    folder = script(tmp_path, SUMMARY.replace("1.234567", "nan"))
    result = run(folder)
    assert result.status == "crash" and result.reason == "val_bpb is nan"


def test_fail_line_is_diverged_even_with_exit_1(tmp_path):
    folder = script(tmp_path, """
        import sys
        print("\\rstep 00003 | loss: 91.2    ", end="", flush=True)
        print("FAIL loss is nan")
        sys.exit(1)
    """)
    result = run(folder)
    assert result.status == "diverged" and result.returncode == 1
    assert result.reason == "diverged: FAIL loss is nan"


def test_exit_0_without_summary_is_a_crash(tmp_path):
    folder = script(tmp_path, 'print("trained, forgot to print")\n')
    result = run(folder)
    assert result.status == "crash" and result.reason == "no summary (exit 0)"


def test_summary_then_nonzero_exit_is_still_a_crash(tmp_path):
    folder = script(tmp_path, SUMMARY + "import sys; sys.exit(3)\n")
    result = run(folder)
    assert result.status == "crash" and result.reason == "exit 3"
    assert result.metrics["val_bpb"] == 1.234567  # kept for the log, not trusted


def test_killed_by_a_signal_names_the_signal(tmp_path):
    folder = script(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n")
    result = run(folder)
    assert result.status == "crash" and result.reason == "killed by SIGKILL"


def test_missing_interpreter_is_a_crash_not_an_exception(tmp_path):
    folder = script(tmp_path, SUMMARY)
    result = run(folder, command=[str(tmp_path / "no-such-python"), "train.py"])
    assert result.status == "crash" and result.reason.startswith("could not start no-such-python")
    assert result.returncode == 127  # the reaper started; the command it runs could not


def test_hang_times_out_and_the_process_is_gone(tmp_path):
    pid_file = tmp_path / "training.json"
    folder = script(tmp_path, SUMMARY, """
        import os, time
        open("marker", "w").write(os.environ["AUTORESEARCH_TRAINING_ID"])
        time.sleep(1000)
    """)
    result = run(folder, timeout=1.5, pid_file=pid_file)
    assert result.status == "timeout" and result.reason == "timeout after 2 s"
    assert result.metrics["val_bpb"] == 1.234567  # timeout beats a printed summary
    assert result.returncode == -signal.SIGTERM
    assert not pid_file.exists()
    marker = (folder / "marker").read_text()
    assert not [p for p in psutil.process_iter() if _has_marker(p, marker)]


def test_a_run_that_ignores_sigterm_is_killed(tmp_path):
    folder = script(tmp_path, """
        import os, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open("pid", "w").write(str(os.getpid()))
        time.sleep(1000)
    """)
    result = run(folder, timeout=1.5, kill_grace=0.5)
    assert result.status == "timeout" and result.returncode == -signal.SIGKILL
    assert gone(int((folder / "pid").read_text()))


def test_children_that_outlive_train_py_are_killed(tmp_path):
    folder = script(tmp_path, """
        import subprocess, time
        # stays in the group
        a = subprocess.Popen(["sleep", "1000"])
        # leaves the group but inherits the marker variable
        b = subprocess.Popen(["sleep", "1001"], start_new_session=True)
        # leaves the group and drops the environment: only the descendant scan can see it
        c = subprocess.Popen(["sleep", "1002"], start_new_session=True, env={})
        open("pids", "w").write(f"{a.pid} {b.pid} {c.pid}")
        time.sleep(1.5)
    """, SUMMARY)
    result = run(folder)
    assert result.status == "ok"
    pids = [int(p) for p in (folder / "pids").read_text().split()]
    assert all(gone(pid) for pid in pids), [psutil.Process(p).cmdline() for p in pids if not gone(p, 0)]
    # The reaper killed them when train.py ended; none was left for the harness to find.
    assert result.children_killed == 0


def test_children_started_just_before_exit_are_killed(tmp_path):
    # Too quick for the descendant scan: the escaped one is found by the marker variable it
    # inherited, the one without environment by its process group.
    folder = script(tmp_path, """
        import subprocess
        escaped = subprocess.Popen(["sleep", "1003"], start_new_session=True)
        bare = subprocess.Popen(["sleep", "1004"], env={})
        open("pids", "w").write(f"{escaped.pid} {bare.pid}")
    """, SUMMARY)
    result = run(folder)
    assert result.status == "ok"
    assert all(gone(int(pid)) for pid in (folder / "pids").read_text().split())


@pytest.mark.skipif(not Path("/proc/self/oom_score_adj").exists(), reason="Linux only")
def test_training_is_the_oom_killers_first_choice(tmp_path):
    # a train.py that fills memory must be the process the kernel kills, not the harness
    folder = script(tmp_path, """
        import time
        time.sleep(0.2)  # the harness sets it right after the process starts
        open("adj", "w").write(open("/proc/self/oom_score_adj").read())
    """, SUMMARY)
    assert run(folder).status == "ok"
    assert (folder / "adj").read_text().strip() == "1000"


def test_ten_megabytes_of_output_do_not_deadlock(tmp_path):
    folder = script(tmp_path, """
        import sys
        line = "x" * 1023 + "\\n"
        for _ in range(10 * 1024):
            sys.stdout.write(line)
        sys.stderr.write("e" * 100000 + "\\n")
    """, SUMMARY)
    result = run(folder, timeout=120)
    assert result.status == "ok"
    assert result.log_path.stat().st_size > 10 * 1024 * 1024


def test_ctrl_c_during_training_kills_the_group_and_propagates(tmp_path):
    pid_file = tmp_path / "training.json"
    folder = script(tmp_path, """
        import os, subprocess, time
        child = subprocess.Popen(["sleep", "1000"])
        open("pids", "w").write(f"{os.getpid()} {child.pid}")
        time.sleep(1000)
    """)
    main = threading.main_thread().ident

    def interrupt():
        wait_for_file(folder / "pids")
        signal.pthread_kill(main, signal.SIGINT)

    thread = threading.Thread(target=interrupt)
    thread.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run(folder, timeout=60, pid_file=pid_file)
    finally:
        thread.join()
    assert all(gone(int(pid)) for pid in (folder / "pids").read_text().split())
    assert not pid_file.exists()


def test_training_env_strips_credentials_and_the_child_does_not_see_them(tmp_path):
    base = {
        "PATH": os.environ["PATH"],
        "HOME": "/home/u",
        "OPENAI_API_KEY": "sk-proj-abc",
        "ANTHROPIC_API_KEY": "sk-ant-abc",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "AWS_REGION": "us-east-1",
        "HF_TOKEN": "hf_abc",
        "HF_HOME": "/data/hf",
        "GITHUB_TOKEN": "ghp_abc",
        "DB_PASSWORD": "hunter2",
        "SSH_AUTH_SOCK": "/tmp/agent.sock",
        "MY_LLM": "sk-innocent-name",
        "CUDA_VISIBLE_DEVICES": "0",
        "AUTORESEARCH_PROFILE": "gpu",
        "AUTORESEARCH_EVAL_TOKENS": "4096",  # a lab setting, not a credential
    }
    env = training_env(base, {"AUTORESEARCH_PROFILE": "cpu", "AUTORESEARCH_TIME_BUDGET": "5"})
    assert set(env) == {
        "PATH", "HOME", "HF_HOME", "CUDA_VISIBLE_DEVICES", "AUTORESEARCH_PROFILE",
        "AUTORESEARCH_TIME_BUDGET", "AUTORESEARCH_EVAL_TOKENS", "PYTHONDONTWRITEBYTECODE",
        "PYTHONUNBUFFERED",
    }
    assert env["AUTORESEARCH_PROFILE"] == "cpu"
    folder = script(tmp_path, """
        import json, os
        json.dump(dict(os.environ), open("env.json", "w"))
    """, SUMMARY)
    result = run_training(folder, tmp_path / "run.log", 60, env)
    assert result.status == "ok"
    seen = json.loads((folder / "env.json").read_text())
    assert not {k for k in base if k not in env} & set(seen)
    assert not any(v.startswith(("sk-", "hf_", "ghp_")) for v in seen.values())
    assert seen["PYTHONUNBUFFERED"] == "1" and MARKER in seen
    assert not (folder / "__pycache__").exists()


HARNESS = """
import os, sys
from pathlib import Path
from autoresearch.records import RunLock
from autoresearch.runner import run_training, training_env
folder = Path(sys.argv[1])
RunLock(folder.parent / "run.lock").acquire()
run_training(folder, folder / "run.log", 600, training_env(os.environ), pid_file=Path(sys.argv[2]))
"""


def test_kill_orphan_stops_training_left_by_a_killed_harness(tmp_path):
    pid_file = tmp_path / "training.json"
    folder = script(tmp_path, """
        import os, subprocess, time
        child = subprocess.Popen(["sleep", "1000"], start_new_session=True)
        open("pids", "w").write(f"{os.getpid()} {child.pid}")
        time.sleep(1000)
    """)
    harness = subprocess.Popen([sys.executable, "-c", HARNESS, str(folder), str(pid_file)], cwd=REPO_ROOT)
    try:
        pids = [int(p) for p in wait_for_file(folder / "pids").split()]
        recorded = json.loads(wait_for_file(pid_file))
        # The leader is the reaper (process.py); train.py is its child, in its group.
        assert recorded["pid"] == recorded["pgid"] == psutil.Process(pids[0]).ppid()
    finally:
        harness.send_signal(signal.SIGKILL)  # kill -9: no cleanup runs
        harness.wait()
    assert not any(gone(pid, wait=0.5) for pid in pids)  # the orphans really are running
    with RunLock(tmp_path / "run.lock"):  # the orphan did not inherit the harness's lock
        pass
    assert kill_orphan(pid_file, grace=2) is True
    assert all(gone(pid) for pid in pids)
    assert not pid_file.exists()
    assert kill_orphan(pid_file) is False


def test_kill_orphan_leaves_a_reused_pid_alone(tmp_path):
    bystander = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    try:
        pid_file = tmp_path / "training.json"
        ct = psutil.Process(bystander.pid).create_time()
        pid_file.write_text(json.dumps({"pid": bystander.pid, "pgid": bystander.pid, "create_time": ct - 100, "marker": "x" * 32}))
        assert kill_orphan(pid_file) is False
        assert bystander.poll() is None
        assert not pid_file.exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_kill_orphan_tolerates_a_corrupt_file(tmp_path):
    pid_file = tmp_path / "training.json"
    pid_file.write_text('{"pid": 12')
    assert kill_orphan(pid_file) is False
    assert not pid_file.exists()


def test_crash_reason_from_a_saved_chained_traceback():
    text = (DATA / "crash_oom.log").read_text()
    assert last_exception(text).startswith("torch.OutOfMemoryError: CUDA out of memory.")
    reason = crash_reason(text, 1)
    assert reason.startswith("exit 1: torch.OutOfMemoryError: CUDA out of memory.")
    assert len(reason) <= 200
    assert crash_reason("no traceback here\n", 2) == "exit 2"


def _has_marker(proc: psutil.Process, marker: str) -> bool:
    try:
        return proc.environ().get(MARKER) == marker and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_two_trainings_in_two_threads_leave_each_other_alone(tmp_path):
    """Each run's reaper owns its descendants: when the quick run ends, its clean-up must not take
    the slow run's processes for its own orphans (the old runner adopted every harness child)."""
    import threading

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    quick = script(tmp_path / "a", """
        import subprocess
        subprocess.Popen(["sleep", "1000"], start_new_session=True, env={})
    """, SUMMARY)
    slow = script(tmp_path / "b", """
        import os, subprocess, time
        child = subprocess.Popen(["sleep", "1000"])
        open("pids", "w").write(f"{os.getpid()} {child.pid}")
        time.sleep(3)
    """, SUMMARY)
    results = {}
    thread = threading.Thread(target=lambda: results.update(slow=run(slow)))
    thread.start()
    pids = [int(p) for p in wait_for_file(slow / "pids").split()]
    results["quick"] = run(quick)
    assert not any(gone(pid, wait=0.2) for pid in pids)  # the slow run's processes survived it
    thread.join(60)
    assert results["quick"].status == "ok" and results["slow"].status == "ok"
    assert results["slow"].metrics["val_bpb"] == 1.234567
    assert all(gone(pid) for pid in pids)
