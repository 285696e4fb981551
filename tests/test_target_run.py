"""`autoresearch run` on a declared target (autoresearch.toml), end to end through the real CLI,
git and processes: both examples, a scripted agent whose every idea is one of the outcomes
(keep, discard, crash, a requirement not met, a fixed file tampered with, a forged metric line),
direction max and min, a deterministic metric (sigma 0), resume after kill -9, two workers and
the report. No timed asserts: the outcomes are decided by what the programs print."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoresearch.records import ResultsFile

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def env() -> dict:
    """`python` in the targets' commands is this interpreter; the CLI imports this checkout."""
    return {**os.environ, **GIT_ENV, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(ROOT)}


def commit_all(repo: Path) -> None:
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "my program"], cwd=repo, check=True, env=env())


def example(name: str, tmp_path: Path) -> Path:
    repo = tmp_path / name
    shutil.copytree(EXAMPLES / name, repo, ignore=shutil.ignore_patterns("__pycache__"))
    commit_all(repo)
    return repo


def cli(repo: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoresearch", *args], cwd=repo, env=env(), capture_output=True,
                          text=True, timeout=timeout)


def rows(repo: Path, tag: str):
    return ResultsFile(repo / "results" / tag / "results.tsv").rows()


def header(repo: Path, tag: str) -> list[str]:
    return (repo / "results" / tag / "results.tsv").read_text().splitlines()[0].split("\t")


def decided(rows_) -> dict[int, object]:
    """The deciding row of each experiment."""
    return {r.experiment: r for r in rows_ if r.status in ("keep", "discard", "crash")}


def check_kept_chain(rows_, higher: bool) -> None:
    """Every kept candidate's mean beats the mean of the best before it, in the target's direction."""
    best = None
    for r in rows_:
        if r.status != "keep":
            continue
        if best is not None and r.role != "baseline":
            assert (r.mean_val_bpb > best) if higher else (r.mean_val_bpb < best), (r, best)
        best = r.mean_val_bpb


# ---------------------------------------------------------------------------
# The examples: min (deterministic) and max (noisy, two workers)
# ---------------------------------------------------------------------------


def test_compress_min_deterministic_end_to_end_and_report(tmp_path):
    repo = example("compress", tmp_path)
    done = cli(repo, "run", "--tag", "c", "--proposer", "hparam", "--seed", "1", "--max-experiments", "5")
    assert done.returncode == 0, done.stdout + done.stderr
    assert header(repo, "c")[:3] == ["commit", "ratio", "memory_gb"]
    got = rows(repo, "c")
    assert {r.experiment for r in got} == {0, 1, 2, 3, 4}
    base = [r for r in got if r.experiment == 0]
    assert [r.status for r in base] == ["trial", "keep"] and base[0].val_bpb == base[1].val_bpb  # sigma 0
    assert all(r.audit == "none" for r in got)
    assert all("compress_seconds=" in r.metrics for r in got if r.status != "crash")  # secondary, recorded
    assert any(r.sigma == 0.0 for r in got if r.status in ("keep", "discard"))  # judged with sigma 0, no error
    check_kept_chain(got, higher=False)
    report = cli(repo, "report", "--tag", "c", "--no-plot")
    assert report.returncode == 0, report.stderr
    assert "ratio (lower is better)" in report.stdout and "baseline ratio" in report.stdout
    assert "other metrics" in report.stdout and "compress_seconds=" in report.stdout  # secondary, per kept row
    assert "the command ran" in report.stdout and "training" not in report.stdout.split("Kept experiments")[0]
    page = (repo / "results" / "c" / "report.html").read_text()
    assert "other metrics" in page and "compress_seconds=" in page


def test_life_max_two_workers_end_to_end_and_report(tmp_path):
    repo = example("life", tmp_path)
    done = cli(repo, "run", "--tag", "l", "--proposer", "hparam", "--seed", "0", "--max-experiments", "3",
               "--workers", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "best generations_per_s" in done.stdout
    assert header(repo, "l")[1] == "generations_per_s"
    got = rows(repo, "l")
    assert {r.experiment for r in got} == {0, 1, 2} and all(r.val_bpb > 0 for r in got if r.status != "crash")
    check_kept_chain(got, higher=True)
    assert all(r.audit == "pass" for r in got if r.status == "keep")  # audit.py: unseen boards, on every keep
    assert (repo / "results" / "l" / "runs" / "0000" / "audit.log").is_file()
    report = cli(repo, "report", "--tag", "l", "--no-plot")
    assert report.returncode == 0, report.stderr
    assert "generations_per_s (higher is better)" in report.stdout
    # the branch sits at the best and the checkout is untouched
    assert subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout.strip() \
        in ("", "?? results/")


# ---------------------------------------------------------------------------
# A scripted agent: one outcome per experiment
# ---------------------------------------------------------------------------

BENCH = """import program
v = program.run()
print(f"correct: {v > 0}")
print(f"score: {v}")
"""
PROGRAM = "VALUE = 10\n\n\ndef run():\n    return VALUE\n\n\ndef check():\n    return True\n"
# Experiment number -> the program.py the agent writes.
IDEAS = {
    1: PROGRAM.replace("VALUE = 10", "VALUE = 20"),  # better (max): keep
    2: PROGRAM.replace("VALUE = 10", "VALUE = 15"),  # worse than 20: discard
    3: "import sys\nsys.exit(3)\n" + PROGRAM,  # non-zero exit: crash
    4: PROGRAM.replace("VALUE = 10", "VALUE = -1"),  # prints correct: False: requirement not met
    5: "open('bench.py', 'a').write('# tampered\\n')\n" + PROGRAM.replace("VALUE = 10", "VALUE = 30"),
    6: "print('score: 999999')\n" + PROGRAM.replace("VALUE = 10", "VALUE = 30"),  # a forged metric line
    # the agent edits the fixed bench in its checkout: a crash row naming it, never trained
    7: {"program.py": PROGRAM.replace("VALUE = 10", "VALUE = 40"), "bench.py": BENCH.replace("v = ", "v = 1000 + ")},
    8: {"bench.py": BENCH.replace("v = ", "v = 1000 + ")},  # only the fixed bench: a crash row too, not a failure
}
AGENT = """import os, sys
ideas = {ideas!r}
n = int(os.environ["AUTORESEARCH_EXPERIMENT"])
idea = ideas[n] if isinstance(ideas[n], dict) else {{"program.py": ideas[n]}}
for name, text in idea.items():
    open(name, "w").write(text)
print("DESCRIPTION: idea", n)
"""


def scripted(tmp_path: Path, direction: str = "max", ideas: dict = IDEAS, extra: str = "") -> tuple[Path, str]:
    repo = tmp_path / "prog"
    repo.mkdir()
    (repo / "bench.py").write_text(BENCH)
    (repo / "audit.py").write_text(AUDIT)
    (repo / "program.py").write_text(PROGRAM)
    (repo / "autoresearch.toml").write_text(
        f'[target]\nedit = ["program.py"]\nrun = "python bench.py"\nmetric = "score"\ndirection = "{direction}"\n'
        f'timeout = 30\nrequire = ["correct: True"]\ncontext = ["bench.py"]\n{extra}')
    commit_all(repo)
    agent = tmp_path / "agent.py"
    agent.write_text(AGENT.format(ideas=ideas))
    return repo, f"{sys.executable} {agent}"


def test_scripted_outcomes_keep_discard_crash_requirement_tamper_forged_metric(tmp_path):
    repo, agent = scripted(tmp_path)
    done = cli(repo, "run", "--tag", "s", "--proposer", "command", "--command", agent, "--max-experiments", "9")
    assert done.returncode == 0, done.stdout + done.stderr
    assert header(repo, "s")[1] == "score"
    d = decided(rows(repo, "s"))
    assert d[0].status == "keep" and d[0].val_bpb == 10
    assert d[1].status == "keep" and d[1].val_bpb == 20 and d[1].sigma == 0.0  # deterministic: sigma 0
    assert d[2].status == "discard" and d[2].val_bpb == 15
    assert d[3].status == "crash" and "exit" in d[3].reason
    assert d[4].status == "crash" and "correct: True" in d[4].reason
    assert d[5].status == "crash" and "bench.py" in d[5].reason
    assert d[6].status == "crash" and "printed 2 times" in d[6].reason
    assert d[7].status == "crash" and "changed fixed file bench.py" in d[7].reason and "not trained" in d[7].reason
    assert not (repo / "results" / "s" / "runs" / "0007" / "run.log").exists()  # nothing ran
    assert "VALUE = 40" in (repo / "results" / "s" / "runs" / "0007" / "diff.patch").read_text()
    shown = subprocess.run(["git", "show", "autoresearch/s:bench.py"], cwd=repo, capture_output=True, text=True)
    assert shown.stdout == BENCH
    assert d[8].status == "crash" and "changed fixed file bench.py" in d[8].reason
    assert (repo / "results" / "s" / "runs" / "0008" / "diff.patch").read_text() == ""  # nothing of it applied
    assert (repo / "bench.py").read_text() == BENCH  # the fixed file was never touched here
    branch = subprocess.run(["git", "show", "autoresearch/s:program.py"], cwd=repo, capture_output=True, text=True)
    assert "VALUE = 20" in branch.stdout  # the branch ends at the best


# The audit: fixed code the agent never sees, run on every keep from the base commit's files.
AUDIT = """import re, subprocess, sys
import program
assert program.check(), "the hidden invariant is broken"
value = program.run()
bench = subprocess.run([sys.executable, "bench.py"], capture_output=True, text=True).stdout
measured = float(re.search(r"score: (\\S+)", bench).group(1))
if measured != value:
    sys.exit(f"bench.py measures {measured:g} but the program gives {value:g} outside it")
print(f"score: {value}")
"""
AUDITED_IDEAS = {
    1: PROGRAM.replace("VALUE = 10", "VALUE = 20"),  # honest: kept, the audit agrees
    # games the benchmark (better only under bench.py): the audit sees 5 outside it and fails
    2: "import sys\n" + PROGRAM.replace("VALUE = 10", "VALUE = 1000 if sys.argv[0].endswith('bench.py') else 5"),
    # better, but breaks what only the audit checks: a crash
    3: PROGRAM.replace("VALUE = 10", "VALUE = 30").replace("return True", "return False"),
}


def test_audit_command_re_measures_every_keep_from_the_base_commit(tmp_path):
    repo, agent = scripted(tmp_path, ideas=AUDITED_IDEAS, extra='audit = "python audit.py"\n')
    done = cli(repo, "run", "--tag", "a", "--proposer", "command", "--command", agent, "--max-experiments", "4")
    assert done.returncode == 0, done.stdout + done.stderr
    d = decided(rows(repo, "a"))
    assert d[0].status == "keep" and d[0].audit == "pass" and d[0].audit_val_bpb == 10
    assert d[1].status == "keep" and d[1].audit == "pass" and d[1].audit_val_bpb == 20
    assert d[2].status == "crash" and d[2].audit == "fail" and "bench.py measures 1000 but" in d[2].reason
    assert d[2].val_bpb == 0 and d[2].audit_val_bpb is None  # (a crash row shows no value, as upstream's)
    assert d[3].status == "crash" and d[3].audit == "fail" and "hidden invariant" in d[3].reason
    assert "exited 1" in d[3].reason and (repo / "results" / "a" / "runs" / "0003" / "audit.log").is_file()
    branch = subprocess.run(["git", "show", "autoresearch/a:program.py"], cwd=repo, capture_output=True, text=True)
    assert "VALUE = 20" in branch.stdout
    off = cli(repo, "run", "--tag", "off", "--proposer", "command", "--command", agent, "--max-experiments", "2",
              "--audit", "off")
    assert off.returncode == 0 and "--audit off: the target's audit command is not run" in off.stdout + off.stderr
    assert {r.audit for r in rows(repo, "off")} == {"off"}


def test_direction_min_keeps_the_lower_value(tmp_path):
    repo, agent = scripted(tmp_path, direction="min")
    done = cli(repo, "run", "--tag", "m", "--proposer", "command", "--command", agent, "--max-experiments", "3")
    assert done.returncode == 0, done.stdout + done.stderr
    d = decided(rows(repo, "m"))
    assert d[1].status == "discard" and d[1].val_bpb == 20  # 20 > 10: worse when lower is better
    assert d[2].status == "discard" and d[2].val_bpb == 15


def test_bad_toml_is_one_line_and_creates_nothing(tmp_path):
    repo, _ = scripted(tmp_path)
    toml = repo / "autoresearch.toml"
    toml.write_text(toml.read_text().replace('direction = "max"', 'direction = "up"'))
    done = cli(repo, "run", "--tag", "bad")
    assert done.returncode == 1
    assert "direction" in done.stderr and len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not (repo / "results").exists()
    assert "autoresearch/bad" not in subprocess.run(["git", "branch"], cwd=repo, capture_output=True, text=True).stdout


def test_resume_after_kill_9_loses_nothing_and_writes_nothing_twice(tmp_path):
    repo = example("compress", tmp_path)
    args = [sys.executable, "-m", "autoresearch", "run", "--tag", "k", "--proposer", "hparam", "--seed", "2",
            "--max-experiments", "6"]
    proc = subprocess.Popen(args, cwd=repo, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    results = repo / "results" / "k" / "results.tsv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if results.exists() and len(results.read_text().splitlines()) >= 4:  # header + 3 rows
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = cli(repo, "run", "--tag", "k", "--proposer", "hparam", "--seed", "2", "--max-experiments", "6",
               "--resume")
    assert done.returncode == 0, done.stdout + done.stderr
    got = rows(repo, "k")
    keys = [(r.experiment, r.trial) for r in got]
    assert len(keys) == len(set(keys))  # no trial written twice
    assert len({r.experiment for r in got}) == 6
    assert all(r.status in ("keep", "discard", "crash") for r in decided(got).values())


# ---------------------------------------------------------------------------
# prepare: once per run, before the first experiment; what it creates travels with each one
# ---------------------------------------------------------------------------

MAKE_DATA = """import sys
open({counter!r}, "a").write("ran\\n")  # outside the repository: how often prepare ran
if {fail!r}:
    sys.exit("no data source reachable")
open("data.txt", "w").write("\\n".join(str(i) for i in range(100)))
"""
DATA_BENCH = """import program
data = [int(x) for x in open("data.txt").read().split()]
print(f"correct: {len(data) == 100}")
print(f"score: {program.run() + sum(data)}")
"""


def prepared_repo(tmp_path: Path, fail: bool = False) -> tuple[Path, Path]:
    repo, counter = tmp_path / "prep", tmp_path / "prepare-runs.txt"
    repo.mkdir()
    (repo / "make_data.py").write_text(MAKE_DATA.format(counter=str(counter), fail=fail))
    (repo / "bench.py").write_text(DATA_BENCH)
    (repo / "program.py").write_text(PROGRAM)
    (repo / ".gitignore").write_text("data.txt\n")
    (repo / "autoresearch.toml").write_text(
        '[target]\nedit = ["program.py"]\nrun = "python bench.py"\nmetric = "score"\ndirection = "max"\n'
        'timeout = 30\nrequire = ["correct: True"]\nprepare = "python make_data.py"\n')
    commit_all(repo)
    return repo, counter


def test_prepare_runs_once_and_its_files_reach_every_experiment(tmp_path):
    repo, counter = prepared_repo(tmp_path)
    done = cli(repo, "run", "--tag", "p", "--proposer", "hparam", "--seed", "0", "--max-experiments", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    got = rows(repo, "p")
    assert all(r.status != "crash" for r in got) and got[0].val_bpb == 10 + sum(range(100))
    assert (repo / "results" / "p" / "prepare.log").is_file() and counter.read_text() == "ran\n"
    assert not (repo / "data.txt").exists()  # made in the run's own folder, not in the checkout
    again = cli(repo, "run", "--tag", "p", "--proposer", "hparam", "--seed", "0", "--max-experiments", "3")
    assert again.returncode == 0, again.stdout + again.stderr
    assert counter.read_text() == "ran\n"  # resumed on the same base: reused, not run again
    assert len({r.experiment for r in rows(repo, "p")}) == 3


def test_a_failing_prepare_stops_the_run_in_one_line_before_any_experiment(tmp_path):
    repo, counter = prepared_repo(tmp_path, fail=True)
    done = cli(repo, "run", "--tag", "f", "--proposer", "hparam", "--max-experiments", "2")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "prepare `python make_data.py` exited 1: no data source reachable" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert rows(repo, "f") == [] and counter.read_text() == "ran\n"
    doctor = cli(repo, "doctor")
    assert doctor.returncode == 1 and "prepare" in doctor.stderr and "no data source reachable" in doctor.stderr


def test_doctor_runs_prepare_before_its_dry_run(tmp_path):
    repo, counter = prepared_repo(tmp_path)
    doctor = cli(repo, "doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert f"score = {10 + sum(range(100))}" in doctor.stdout and counter.read_text() == "ran\n"
    assert not (repo / "data.txt").exists() and not (repo / "results").exists()


def test_ray_workers_get_the_whole_tree_with_what_prepare_made(tmp_path):
    pytest.importorskip("ray")  # the [ray] extra, as in test_coordinator_ray.py
    repo, counter = prepared_repo(tmp_path)
    done = cli(repo, "run", "--tag", "ray", "--proposer", "hparam", "--seed", "1", "--max-experiments", "3",
               "--ray", "local", "--workers", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 Ray workers" in done.stdout + done.stderr
    got = rows(repo, "ray")
    assert len({r.experiment for r in got}) == 3 and all(r.status != "crash" for r in got)  # data.txt reached them
    assert counter.read_text() == "ran\n"


def living(pid: int) -> bool:
    """Alive and not a zombie waiting for a parent (init) to reap it, after a moment to die in."""
    import psutil

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            return False
        time.sleep(0.1)
    return True


def test_a_prepare_left_running_by_a_killed_harness_is_stopped_and_a_new_tag_reuses_a_result(tmp_path):
    repo, counter = prepared_repo(tmp_path)
    make = repo / "make_data.py"
    make.write_text(make.read_text().replace("import sys\n", "import sys, time\ntime.sleep(float(__import__('os').environ.get('PREP_SLEEP', '0')))\n"))
    commit_all(repo)
    args = [sys.executable, "-m", "autoresearch", "run", "--tag", "k", "--proposer", "hparam", "--max-experiments", "1"]
    proc = subprocess.Popen(args, cwd=repo, env={**env(), "PREP_SLEEP": "60"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    pid_files = repo / ".autoresearch" / "prepared"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(pid_files.glob("*/prepare.json")):
        time.sleep(0.05)
    assert list(pid_files.glob("*/prepare.json")), "prepare never started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    orphans = subprocess.run(["pgrep", "-f", "make_data.py"], capture_output=True, text=True).stdout.split()
    assert orphans, "the sleeping prepare should outlive the killed harness"
    done = cli(repo, "run", "--tag", "k", "--proposer", "hparam", "--max-experiments", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not [p for p in orphans if living(int(p))]  # stopped, not left to race the new prepare
    assert counter.read_text() == "ran\n"  # the killed one slept until it was stopped; the new one ran
    other = cli(repo, "run", "--tag", "k2", "--proposer", "hparam", "--max-experiments", "1")
    assert other.returncode == 0 and counter.read_text() == "ran\n"  # same command, same tree: reused


def test_an_audit_left_running_by_a_killed_harness_is_stopped_on_resume(tmp_path):
    slow = "import time\ntime.sleep(60)\n"
    repo, agent = scripted(tmp_path, ideas=AUDITED_IDEAS, extra='audit = "python slow_audit.py"\n')
    (repo / "slow_audit.py").write_text(slow)
    commit_all(repo)
    args = [sys.executable, "-m", "autoresearch", "run", "--tag", "a", "--proposer", "command", "--command", agent,
            "--max-experiments", "2"]
    proc = subprocess.Popen(args, cwd=repo, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline, audits = time.monotonic() + 60, []
    while time.monotonic() < deadline and not audits:
        audits = subprocess.run(["pgrep", "-f", "slow_audit.py"], capture_output=True, text=True).stdout.split()
        time.sleep(0.05)
    assert audits, "the baseline's audit never started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = cli(repo, "run", "--tag", "a", "--proposer", "command", "--command", agent, "--max-experiments", "1",
               "--resume", timeout=60)
    assert "stopped" in done.stdout + done.stderr  # "stopped N training process(es) a killed run left behind"
    assert not [p for p in audits if living(int(p))]


def test_a_run_ends_when_hparam_has_nothing_left_to_try(tmp_path):
    repo = tmp_path / "flat"
    repo.mkdir()
    (repo / "program.py").write_text("VALUE = 10\n")
    (repo / "bench.py").write_text("import program\nprint(f'distance: {abs(program.VALUE - 10)}')\n")
    (repo / "autoresearch.toml").write_text(
        '[target]\nedit = ["program.py"]\nrun = "python bench.py"\nmetric = "distance"\ndirection = "min"\n')
    commit_all(repo)
    done = cli(repo, "run", "--tag", "x", "--proposer", "hparam", "--seed", "0", timeout=120)  # no limit given
    assert done.returncode == 0, done.stdout + done.stderr
    assert "done (the proposer has nothing left to try)" in done.stdout
    got = decided(rows(repo, "x"))
    assert got[0].status == "keep" and all(r.status == "discard" for n, r in got.items() if n)
    assert "paused" not in done.stdout
