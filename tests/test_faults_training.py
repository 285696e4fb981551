"""train.py faults through the real loop: each is a crash row with a clear reason, the change is
reverted, the loop goes on to the next experiment, and every invariant of issue #5 holds.

Each case: baseline (keep), the faulty train.py (crash), a good change (keep). The faulty
train.py versions are small stand-in scripts swapped in by a scripted proposer; they run as real
subprocesses in the run's worktree, with SECRETS in the harness's environment.
"""

import json
import os
import re
import textwrap
from pathlib import Path

import git
import psutil
import pytest

from autoresearch.loop import RunConfig, run
from autoresearch.records import COLUMNS
from invariants import SECRETS, check_invariants
from reliability import make_user_lab, replace_with
from standin import ScriptedProposer
from test_loop import RecordingView

SUMMARY = '''
print("---")
print("val_bpb:          {val}")
print("training_seconds: 1.0")
print("peak_vram_mb:     100.0")
print("num_steps:        3")
'''


def script(body: str, summary: str | None = None) -> str:
    """A stand-in train.py: `body`, then a summary block if `summary` (the val_bpb text) is given."""
    head = "import os, sys, time, signal, subprocess, threading, resource\n"
    text = head + textwrap.dedent(body)
    if summary is not None:
        text += SUMMARY.format(val=summary)
    return text


STEPS = """
for step in range(3):
    print(f"step {step:05d} | loss {3.0 - step * 0.1:.4f}", flush=True)
"""

# The user's results/<tag>/ seen from a training's folder (.autoresearch/workers/<tag>/<worker>/<job>/lab):
# unsandboxed, a training can reach it by a path; six levels up, the tag three.
RUN_DIR = ('os.path.join(*[".."] * 6, "results", '
           'os.path.basename(os.path.dirname(os.path.dirname(os.path.dirname(os.getcwd())))))')
RESULTS = f'os.path.join({RUN_DIR}, "results.tsv")'
FORGED_ROW = "\\t".join(["deadbee", "0.100000", "1.0", "keep", "forged by train.py", "1"] + [""] * (len(COLUMNS) - 6))

# name -> (train.py, reason as a regular expression, timeout for the run)
FAULTS = {
    "syntax_error": (script("def broken(:\n    pass\n"), r"exit 1: SyntaxError", 60),
    "exception_before_first_step": (
        script('raise ValueError("bad config: DEPTH must be even")\n' + STEPS),
        r"^exit 1: ValueError: bad config: DEPTH must be even$", 60),
    "exception_mid_training": (
        script(STEPS + 'raise RuntimeError("CUDA error: an illegal memory access was encountered")\n'),
        r"^exit 1: RuntimeError: CUDA error: an illegal memory access", 60),
    "nan_loss_fail": (script(STEPS + 'print("step 00003 | loss nan")\nprint("FAIL")\nsys.exit(1)\n'),
                      r"^diverged: FAIL$", 60),
    "nan_val_bpb": (script(STEPS, summary="nan"), r"^val_bpb is nan$", 60),
    "loss_explosion": (
        script(STEPS + 'print("step 00004 | loss 312345.0")\nprint("FAIL: loss exploded (312345.0 > 100)")\nsys.exit(1)\n'),
        r"^diverged: FAIL: loss exploded", 60),
    "loss_explosion_inf_val_bpb": (script(STEPS, summary="inf"), r"^val_bpb is inf$", 60),
    "hang_sleep": (script(STEPS + "time.sleep(3600)\n"), r"^timeout after 4 s$", 4),
    "hang_lock_acquired_twice": (
        script(STEPS + "lock = threading.Lock()\nlock.acquire()\nlock.acquire()\n"), r"^timeout after 4 s$", 4),
    "hang_two_threads_deadlock": (
        script(STEPS + """
a, b, barrier = threading.Lock(), threading.Lock(), threading.Barrier(2)
def grab(first, second):
    with first:
        barrier.wait()
        with second:
            pass
threads = [threading.Thread(target=grab, args=(a, b)), threading.Thread(target=grab, args=(b, a))]
for t in threads: t.start()
for t in threads: t.join()
"""), r"^timeout after 4 s$", 4),
    "ignores_time_budget_and_sigterm": (
        script("signal.signal(signal.SIGTERM, signal.SIG_IGN)\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
               "step = 0\nwhile True:\n    step += 1\n    print(f'step {step} | loss 2.0', flush=True)\n"
               "    time.sleep(0.05)\n"),
        r"^timeout after 4 s$", 4),
    "exits_0_without_summary": (script(STEPS), r"^no summary \(exit 0\)$", 60),
    "garbage_summary_text": (script(STEPS, summary="banana"), r"^val_bpb is banana$", 60),
    "garbage_summary_negative_val_bpb": (script(STEPS, summary="-1.000000"), r"^val_bpb is -1\.0$", 60),
    "garbage_summary_zero_val_bpb": (script(STEPS, summary="0.000000"), r"^val_bpb is 0\.0$", 60),
    "garbage_summary_binary": (
        script(STEPS + 'sys.stdout.flush()\nos.write(1, b"---\\n\\x00\\xff\\xfe val_bpb \\x1b[31m\\n" * 1000)\n'),
        r"^no summary \(exit 0\)$", 60),
    "garbage_summary_truncated": (
        script(STEPS + 'sys.stdout.write("---\\nval_bpb:          0.99"); sys.stdout.flush(); os._exit(0)\n'),
        r"^no summary \(exit 0\)$", 60),
    "writes_prepare_py": (script('open("prepare.py", "a").write("EVAL_TOKENS = 1\\n")\n', summary="1.5"),
                          r"^modified prepare\.py$", 60),
    # A training runs in its worker's folder holding the lab's files: the checkout's other files
    # are not there to delete, and git finds no repository to commit to (GIT_CEILING_DIRECTORIES).
    "deletes_a_tracked_file": (script('os.remove("program.md")\n', summary="1.5"), r"^exit 1: FileNotFoundError", 60),
    "writes_files_in_the_worktree": (
        script('os.makedirs("ckpt/deep", exist_ok=True)\nopen("ckpt/deep/model.pt", "wb").write(b"\\0" * 100)\n'
               'open(".hidden", "w").write("x")\nos.symlink("/etc/passwd", "link")\n', summary="1.5"),
        r"^wrote files: \.hidden, ckpt/deep/model\.pt, link$", 60),
    "commits_to_the_run_branch": (
        script('open("prepare.py", "a").write("EVAL_TOKENS = 1\\n")\n'
               'subprocess.run(["git", "commit", "-qam", "sneaky", "--author", "x <x@x>"], check=True,\n'
               '               env={**os.environ, "GIT_COMMITTER_NAME": "x", "GIT_COMMITTER_EMAIL": "x@x"})\n',
               summary="0.5"),
        r"^modified prepare\.py", 60),
    "detaches_head": (
        script('subprocess.run(["git", "checkout", "-q", "--detach"], check=True)\n', summary="0.5"),
        r"^exit 1: .*CalledProcessError", 60),
    "writes_to_results_tsv": (
        script(f'open({RESULTS}, "a").write("{FORGED_ROW}\\n")\n', summary="0.5"),
        r"^modified results\.tsv \(restored\)$", 60),
    "truncates_results_tsv": (script(f'open({RESULTS}, "w").close()\n', summary="0.5"),
                              r"^modified results\.tsv \(restored\)$", 60),
    "deletes_results_tsv": (script(f"os.remove({RESULTS})\n", summary="0.5"), r"^modified results\.tsv \(restored\)$", 60),
    "rewrites_run_json": (
        script(f'p = os.path.join({RUN_DIR}, "run.json")\n'
               'open(p, "w").write("{}")\n', summary="0.5"),
        r"^modified run\.json \(restored\)$", 60),
    "fills_memory": (
        script("resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # a test-sized ceiling\n"
               "hog = []\nwhile True:\n    hog.append(bytearray(64 << 20))\n"),
        r"^exit 1: MemoryError", 60),
    "killed_by_a_signal": (
        script("hog = [bytearray(16 << 20) for _ in range(4)]\nos.kill(os.getpid(), signal.SIGKILL)\n"),
        r"^killed by SIGKILL$", 60),
}

@pytest.fixture
def user_lab(tmp_repo, monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    return make_user_lab(tmp_repo)


def run_case(root: Path, steps, timeout: float = 60, experiments: int = 3, **overrides):
    proposer = ScriptedProposer(steps)
    proposer.can_fix = False
    cfg = dict(repo_root=root, tag="t", profile="cpu", time_budget=5, timeout=timeout,
               pause_seconds=0.01, max_experiments=experiments,
               keep_rule="greedy", baseline_repeats=1, audit="off",  # one trial each: these tests are about faults
               sandbox="off")  # the unsandboxed guards (tests/test_faults_trust.py runs the sandbox)
    cfg.update(overrides)
    view = RecordingView()
    outcome = run(RunConfig(**cfg), proposer=proposer, view=view)
    return outcome, view


@pytest.mark.parametrize("name", FAULTS)
def test_faulty_train_py_is_a_crash_with_its_reason_reverted_and_the_loop_goes_on(user_lab, name):
    root, user = user_lab
    fault, reason, timeout = FAULTS[name]
    outcome, _ = run_case(root, [replace_with(fault, f"fault {name}"), {"VAL": 0.9}], timeout=timeout)

    assert outcome.state == "done"
    rows = check_invariants(root, "t", user, rows=3)
    assert [r.status for r in rows] == ["keep", "crash", "keep"], [(r.status, r.reason) for r in rows]
    assert pytest.approx(rows[2].val_bpb) == 0.9 and rows[1].description == f"fault {name}"
    assert re.search(reason, rows[1].reason), rows[1].reason
    assert len(rows[1].reason) <= 300 and "\n" not in rows[1].reason
    # The crashed change left nothing: the kept experiment started from the baseline.
    assert rows[2].parent == rows[0].commit
    branch = git.Repo(root).git.log("--format=%s", "autoresearch/t").splitlines()
    assert branch == ["set VAL 0.9", "stand-in lab"]


@pytest.mark.parametrize("how", ["same_group", "setsid", "double_fork_daemon", "daemon_without_marker"])
def test_processes_spawned_by_train_py_are_killed_with_it(user_lab, tmp_path, how):
    root, user = user_lab
    out = tmp_path / "pids"
    out.mkdir()
    spawn = {
        "same_group": 'p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])\n'
                      'open(os.path.join(OUT, "child"), "w").write(str(p.pid))\n',
        "setsid": 'p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)\n'
                  'open(os.path.join(OUT, "child"), "w").write(str(p.pid))\n',
        "double_fork_daemon": """
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        open(os.path.join(OUT, "child"), "w").write(str(os.getpid()))
        time.sleep(600)
    os._exit(0)
os.wait()
""",
        # Leaves the group, the session and the marker variable at once (exec with an empty
        # environment after a double fork, before the runner's first look at its children).
        "daemon_without_marker": """
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        open(os.path.join(OUT, "child"), "w").write(str(os.getpid()))
        os.execve(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)"], {})
    os._exit(0)
os.wait()
""",
    }[how]
    body = 'OUT = os.environ["STANDIN_OUT"]\n' + spawn + 'while not os.path.exists(os.path.join(OUT, "child")):\n    time.sleep(0.01)\n'
    fault = script(body, summary="1.5")
    outcome, _ = run_case(root, [replace_with(fault, f"spawn {how}"), {"VAL": 0.9}],
                          extra_env={"STANDIN_OUT": str(out)})

    child = int((out / "child").read_text())
    try:
        assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    finally:
        _kill(child)
    rows = check_invariants(root, "t", user, rows=3)
    # The run itself finished with a summary: it is judged on its val_bpb, and the loop goes on.
    assert [r.status for r in rows] == ["keep", "discard", "keep"]


def test_training_environment_has_no_secrets_but_keeps_the_lab_settings(user_lab):
    root, user = user_lab
    run_case(root, [], experiments=1)
    log = (root / "results/t/runs/0000/run.log").read_text()
    env = json.loads(log.split("env: ", 1)[1].split("\n", 1)[0])
    assert not set(SECRETS) & set(env), set(SECRETS) & set(env)
    assert env["AUTORESEARCH_PROFILE"] == "cpu" and env["AUTORESEARCH_TIME_BUDGET"] == "5"
    assert env["PATH"] == os.environ["PATH"]
    check_invariants(root, "t", user, rows=1)


def test_a_fault_with_fix_attempts_that_fault_again_still_leaves_everything_consistent(user_lab):
    root, user = user_lab
    crash, _, _ = FAULTS["exception_mid_training"]
    nan, _, _ = FAULTS["nan_loss_fail"]
    proposer = ScriptedProposer([replace_with(crash, "idea"), replace_with(nan, "fix 1"),
                                 replace_with(FAULTS["syntax_error"][0], "fix 2"), {"VAL": 0.9}])
    run(RunConfig(repo_root=root, tag="t", profile="cpu", time_budget=5, timeout=60, max_experiments=3,
                  keep_rule="greedy", baseline_repeats=1, audit="off"),
        proposer=proposer, view=RecordingView())
    rows = check_invariants(root, "t", user, rows=3)
    assert [r.status for r in rows] == ["keep", "crash", "keep"]
    assert rows[1].reason.startswith("exit 1: SyntaxError") and rows[1].description == "idea"
    assert len([c for c in proposer.contexts if c.feedback]) == 2


def _kill(pid: int) -> None:
    try:
        psutil.Process(pid).kill()
    except psutil.Error:
        pass
