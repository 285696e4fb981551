"""The coordinator (issue 11): N workers, one ledger, one best, one branch; through the real
loop, git, processes and (in test_coordinator_ray.py) a real local Ray cluster."""

import os
import sys
import threading
import time
from pathlib import Path

import git
import pytest

from autoresearch.loop import RunConfig, run
from autoresearch.proposers import Proposal, Usage
from autoresearch.records import ResultsFile
from standin import TRAIN_PY, ScriptedProposer, make_lab, set_constants
from test_faults_trust import cache, real_lab  # noqa: F401  (fixtures)
from test_loop import RecordingView
from autoresearch.proposers.base import Proposer

# A stand-in whose value has two independent knobs on lines far apart (A at the top, B at the
# bottom), so two ideas made on the same base merge; B also makes the run slower.
TWO_KNOBS = TRAIN_PY.replace('import os\n', 'import os\n\nA = 0.0  # knob one\n\n\n', 1).replace(
    'time.sleep(float(os.environ.get("STANDIN_SLEEP", by_seed)))',
    'time.sleep(float(os.environ.get("STANDIN_SLEEP", by_seed)) + 100 * B)').replace(
    'val = float("nan") if MODE == "nan" else VAL', 'val = float("nan") if MODE == "nan" else VAL - A - B'
) + '\n\n\nB = 0.0  # knob two\n'
# B is read before it is assigned at the bottom: move the assignment up, keeping it far from A.
TWO_KNOBS = TWO_KNOBS.replace('\n\n\nB = 0.0  # knob two\n', '\n').replace(
    'seed = int(', 'B = 0.0  # knob two\n\nseed = int(', 1)


@pytest.fixture
def lab(tmp_repo) -> Path:
    return make_lab(tmp_repo)


def config(root: Path, **overrides) -> RunConfig:
    values = dict(repo_root=root, tag="t", profile="cpu", time_budget=5, timeout=30, pause_seconds=0.01,
                  keep_rule="greedy", baseline_repeats=1, audit="off", workers=3, preflight=False)
    values.update(overrides)
    return RunConfig(**values)


def rows(root: Path):
    return ResultsFile(root / "results/t/results.tsv").rows()


def branch_tip(root: Path) -> str:
    return git.Repo(root).commit("autoresearch/t").hexsha[:7]


def check_record(root: Path, outcome) -> list:
    """One row per trial, trials 1..k of each experiment in order, every candidate built on a
    kept commit, the keeps a chain, the branch at the last keep."""
    got = rows(root)
    keys = [(r.experiment, r.trial) for r in got]
    assert len(keys) == len(set(keys)), keys
    by_exp = {}
    for r in got:
        by_exp.setdefault(r.experiment, []).append(r.trial)
    assert all(trials == list(range(1, len(trials) + 1)) for trials in by_exp.values()), by_exp
    kept = [r for r in got if r.status == "keep"]
    chain = [kept[0].commit]
    for r in kept[1:]:
        assert r.parent == chain[-1], (r.experiment, r.parent, chain)
        chain.append(r.commit)
    assert all(r.parent in chain for r in got), [(r.experiment, r.parent) for r in got]
    assert branch_tip(root) == chain[-1] == outcome.best_commit
    worktree = root / ".autoresearch/worktrees/t"
    repo = git.Repo(worktree)
    assert repo.head.commit.hexsha[:7] == chain[-1] and not repo.is_dirty(untracked_files=True)
    return got


class Concurrency(Proposer):
    """A proposer wrapper that counts how many asks are in flight at once."""

    def __init__(self, inner, seconds: float = 0.0, speculative: bool = False):
        self.inner, self.seconds = inner, seconds
        self.name, self.can_fix = inner.name, True
        self.speculative = speculative
        self.lock = threading.Lock()
        self.now = self.most = 0
        self.histories = []

    def propose(self, ctx):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.histories.append([dict(e) for e in ctx.history])
        try:
            time.sleep(self.seconds)
            return self.inner.propose(ctx)
        finally:
            with self.lock:
                self.now -= 1


def test_three_workers_train_at_once_one_record_one_best(lab):
    # more steps than experiments: an idea built on a best that moved and overlapping it is thrown away
    steps = [{"VAL": round(1.0 + (-1) ** i * i / 1000, 6), "SLEEP": 0.6} for i in range(1, 20)]
    proposer = Concurrency(ScriptedProposer(steps))
    view = RecordingView()
    outcome = run(config(lab, max_experiments=8), proposer=proposer, view=view)
    assert outcome.state == "done" and outcome.experiments == 8
    got = check_record(lab, outcome)
    assert len(got) == 8 and got[0].role == "baseline"
    # trainings overlapped: three workers, each 0.6 s, in far less than 7 x 0.6 s of wall time
    starts = sorted(r.started_at for r in got[1:])
    assert starts[0] < starts[-1]
    # proposals were asked while others trained, and saw them as running
    assert any(any(e.get("status") == "running" for e in h) for h in proposer.histories)
    assert (lab / ".autoresearch/workers/t").exists() is False or not any((lab / ".autoresearch/workers/t").iterdir())


def test_experiments_overlap_in_time(lab):
    """Three 1.5 s trainings at a time: seven experiments in well under seven times 1.5 s."""
    steps = [{"VAL": 1.0 - i / 1000, "SLEEP": 1.5} for i in range(1, 20)]
    started = time.monotonic()
    outcome = run(config(lab, max_experiments=7, workers=3), proposer=ScriptedProposer(steps), view=RecordingView())
    wall = time.monotonic() - started
    assert outcome.experiments == 7
    # sequential would be 7 x 1.5 s of sleep alone; three at once needs about 3 rounds
    assert wall < 7 * 1.5, wall


def test_a_candidate_that_beat_its_base_after_the_best_moved_is_combined_and_measured(tmp_repo):
    root = make_lab(tmp_repo, TWO_KNOBS)
    # Both ideas are asked on the baseline. A finishes first and is kept; B (slower) beats the
    # baseline too, but the best has moved: B is re-applied on A's commit and measured.
    steps = [{"A": 0.01, "SLEEP": 0.3}, {"B": 0.02}] + [{"VAL": 1.5, "SLEEP": 3.0}] * 5  # fillers: slower than B
    proposer = ScriptedProposer(steps)
    outcome = run(config(root, max_experiments=6, workers=3), proposer=proposer, view=RecordingView())
    got = check_record(root, outcome)
    by = {r.experiment: r for r in got}
    a = next(r for r in got if r.description == "set A 0.01, SLEEP 0.3")
    b = next(r for r in got if r.description == "set B 0.02" and r.role == "candidate")
    combo = next(r for r in got if r.role == "combine")
    assert a.status == "keep" and b.status == "discard"
    assert b.parent == by[0].commit and "beat its base" in b.reason and f"experiment {combo.experiment}" in b.reason
    assert combo.parent == a.commit and combo.status == "keep"
    assert abs(combo.val_bpb - 0.97) < 1e-9  # both knobs: measured, not assumed
    tip = git.Repo(root).commit("autoresearch/t").tree["train.py"].data_stream.read().decode()
    assert "A = 0.01" in tip and "B = 0.02" in tip
    proposal = (root / f"results/t/runs/{combo.experiment:04d}/proposal.json").read_text()
    assert f'"combines": {b.experiment}' in proposal


def test_an_overlapping_candidate_that_beat_its_old_base_is_not_combined(lab):
    steps = [{"VAL": 0.99, "SLEEP": 0.5}, {"VAL": 0.98, "SLEEP": 1.5}] + [{"VAL": 1.5}] * 5
    outcome = run(config(lab, max_experiments=3, workers=3), proposer=ScriptedProposer(steps), view=RecordingView())
    got = check_record(lab, outcome)
    late = next(r for r in got if r.val_bpb == 0.98)
    assert late.status == "discard" and "overlaps" in late.reason
    assert not any(r.role == "combine" for r in got)


def test_noise_rule_repeats_the_baseline_in_parallel_and_confirms_across_workers(lab):
    base = set_constants(TRAIN_PY, JITTER={42: 0.0004, 43: -0.0004, 44: 0.0002})
    (lab / "train.py").write_text(base)
    git.Repo(lab).index.add(["train.py"])
    git.Repo(lab).index.commit("noisy stand-in")
    # sigma ~ 5.7e-4 from the two baseline trials: -0.01 is a clear win, -0.0006 is grey (confirm)
    steps = [{"VAL": 0.99}, {"VAL": 0.9994, "SLEEP": 0.3}, {"VAL": 0.995}, {"VAL": 1.01}] + [{"VAL": 1.5}] * 5
    outcome = run(config(lab, keep_rule="noise", baseline_repeats=2, max_experiments=5, workers=3),
                  proposer=ScriptedProposer(steps), view=RecordingView())
    got = check_record(lab, outcome)
    baseline = [r for r in got if r.experiment == 0]
    assert [r.role for r in baseline] == ["baseline", "repeat"] and [r.seed for r in baseline] == [42, 43]
    assert baseline[-1].status == "keep" and baseline[0].status == "trial"
    assert all(r.status in ("keep", "discard", "crash") for r in got if r.trial == max(
        x.trial for x in got if x.experiment == r.experiment))
    confirms = [r for r in got if r.role == "confirm"]
    assert confirms and all(r.seed == 43 for r in confirms)


class Fixer(ScriptedProposer):
    """Ideas from the script; a fix (an ask with feedback) sets MODE back to ok."""

    def propose(self, ctx):
        if ctx.feedback:
            assert "boom" in ctx.feedback
            return Proposal("fixed", "fix the crash", set_constants(ctx.train_py, MODE="ok"), "script-1",
                            Usage(1, 1, 0.0), "p", "r")
        return super().propose(ctx)


def test_a_crash_is_fixed_on_its_worker_and_others_go_on(lab):
    # the crash's fix is asked while the other candidates train
    proposer = Fixer([{"VAL": 0.99, "MODE": "crash"}] + [{"VAL": 1.01, "SLEEP": 0.5}] * 5)
    outcome = run(config(lab, max_experiments=3, workers=2), proposer=proposer, view=RecordingView())
    got = check_record(lab, outcome)
    fixed = next(r for r in got if r.description == "set VAL 0.99, MODE crash")
    assert fixed.status == "keep" and fixed.val_bpb == 0.99, fixed.reason
    assert (lab / f"results/t/runs/{fixed.experiment:04d}/run.crash1.log").exists()


def test_a_hung_training_times_out_alone(lab):
    steps = [{"MODE": "hang"}, {"VAL": 0.99, "SLEEP": 0.2}, {"VAL": 0.98, "SLEEP": 0.2}] + [{"VAL": 1.5}] * 5
    outcome = run(config(lab, max_experiments=4, workers=2, timeout=4), proposer=ScriptedProposer(steps),
                  view=RecordingView())
    got = check_record(lab, outcome)
    hung = next(r for r in got if "MODE hang" in r.description)
    assert hung.status == "crash" and "timeout" in hung.reason
    others = [r for r in got if r.experiment not in (0, hung.experiment)]
    assert all(r.status in ("keep", "discard") for r in others) and len(others) == 2
    assert got.index(hung) == len(got) - 1  # the others were recorded while it hung


def test_a_training_that_writes_the_run_record_is_a_crash_and_the_record_is_restored(lab):
    target = lab / "results/t/results.tsv"
    tamper = TRAIN_PY.replace('print("---")', 'open(os.environ["TAMPER"], "a").write("0000000\\t0.1\\t0\\tkeep\\tforged\\n")\nprint("---")')

    def forge(ctx):
        return Proposal("forging helps", "forge a row", tamper, "m", Usage(), "p", "r")

    outcome = run(config(lab, max_experiments=2, workers=2, sandbox="off", extra_env={"TAMPER": str(target)}),
                  proposer=ScriptedProposer([forge] + [{"VAL": 1.5}] * 5), view=RecordingView())
    got = check_record(lab, outcome)
    assert "forged" not in target.read_text()
    forged = next(r for r in got if r.description == "forge a row")
    assert forged.status == "crash" and "modified results.tsv (restored)" in forged.reason


def test_a_gpu_that_disappears_takes_its_worker_out_and_its_trial_runs_elsewhere(lab, monkeypatch, tmp_path):
    import autoresearch.local_pool as local_pool

    gone = tmp_path / "gpu1-gone"
    gone.write_text("")
    crash_on_1 = TRAIN_PY.replace(
        'print("step 00001',
        'if os.environ.get("CUDA_VISIBLE_DEVICES") == "1" and os.path.exists(os.environ["GONE"]):\n'
        '    raise RuntimeError("CUDA error: no CUDA-capable device is detected")\nprint("step 00001', 1)
    (lab / "train.py").write_text(crash_on_1)
    git.Repo(lab).index.add(["train.py"])
    git.Repo(lab).index.commit("GPU 1 can go away")
    probe = [sys.executable, "-c", f"import os, sys; sys.exit(3 if os.environ['CUDA_VISIBLE_DEVICES'] == '1' "
                                   f"and os.path.exists({str(gone)!r}) else 0)"]
    monkeypatch.setattr(local_pool, "GPU_PROBE", probe)
    steps = [{"VAL": 0.99, "SLEEP": 0.3}, {"VAL": 0.98, "SLEEP": 0.3}, {"VAL": 0.97}] + [{"VAL": 1.5}] * 5
    view = RecordingView()
    outcome = run(config(lab, max_experiments=4, workers=None, gpus="0,1", sandbox="off", extra_env={"GONE": str(gone)}),
                  proposer=ScriptedProposer(steps), view=view)
    got = check_record(lab, outcome)
    assert all(r.status != "crash" for r in got), [(r.experiment, r.reason) for r in got]
    out = [n for n in view.notes if "out of the pool" in n]
    assert len(out) == 1 and "GPU 1" in out[0]
    assert outcome.experiments == 4


def test_bad_worker_options_are_one_line_errors(lab):
    from autoresearch.errors import AutoresearchError

    for kwargs, words in [(dict(gpus="0,x"), "bad --gpus"), (dict(gpus="1,1"), "named twice"),
                          (dict(gpus="0,1", workers=3), "one worker per GPU"),
                          (dict(gpus="0", ray="auto"), "with --ray"), (dict(workers=0), "bad --workers")]:
        with pytest.raises(AutoresearchError, match=words):
            config(lab, **kwargs)


@pytest.mark.slow
def test_keeps_are_audited_when_two_workers_train_the_real_lab(real_lab, cache):
    from reliability import replace_with
    from test_faults_trust import GAMES, REAL_TRAIN

    steps = [replace_with(GAMES["prints_a_fake_val_bpb"], "fake"), replace_with(REAL_TRAIN, "learn at all")]
    steps += [replace_with(REAL_TRAIN.replace("\n", "\n\n", 1), "filler")] * 3
    proposer = ScriptedProposer(steps)
    proposer.can_fix = False
    outcome = run(config(real_lab, workers=2, audit="on", time_budget=3, timeout=300, max_experiments=3),
                  proposer=proposer, view=RecordingView())
    got = check_record(real_lab, outcome)
    by = {r.description: r for r in got}
    assert by["baseline"].audit == "pass" and by["baseline"].sandbox in ("bwrap", "none")
    assert by["fake"].status == "crash" and by["fake"].audit == "fail", by["fake"].reason
    assert by["learn at all"].status == "keep" and by["learn at all"].audit == "pass", by["learn at all"].reason
    assert by["learn at all"].val_bpb == pytest.approx(by["learn at all"].audit_val_bpb, abs=1e-6)


def test_max_hours_stops_every_launch_and_records_what_was_training(lab):
    steps = [{"VAL": round(1.0 - i / 1000, 6), "SLEEP": 2.0} for i in range(1, 12)]
    outcome = run(config(lab, max_hours=1.0 / 3600, workers=3), proposer=ScriptedProposer(steps), view=RecordingView())
    assert outcome.state == "done" and "--max-hours" in outcome.message
    got = check_record(lab, outcome)
    # what was launched in the first second (the quick baseline, then one 2 s candidate per
    # worker) trained to the end and has its row; nothing was launched after it
    assert 2 <= len({r.experiment for r in got}) <= 1 + 3
    assert not list((lab / ".autoresearch/scratch/t").glob("*"))  # no ask left behind


def test_gpus_all_without_nvidia_smi_is_a_one_line_error(monkeypatch, tmp_path):
    from autoresearch.errors import AutoresearchError
    from autoresearch.gpus import resolve_gpus

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(AutoresearchError, match="nvidia-smi"):
        resolve_gpus("all", os.environ)
    assert resolve_gpus("2,3", os.environ) == ["2", "3"]


def test_a_run_of_two_workers_resumed_without_worker_options_goes_on_with_one(lab):
    steps = [{"VAL": round(1.0 - i / 1000, 6), "SLEEP": 0.3} for i in range(1, 20)]
    first = run(config(lab, max_experiments=3, workers=2), proposer=ScriptedProposer(steps), view=RecordingView())
    assert first.experiments == 3
    again = run(config(lab, max_experiments=5, workers=None, resume=True, keep_rule="noise", baseline_repeats=1),
                proposer=ScriptedProposer(steps[5:]), view=RecordingView())
    got = check_record(lab, again)
    assert again.experiments == 5 and len(got) >= 5
    state = __import__("json").loads((lab / "results/t/run.json").read_text())
    assert state["workers"] == 1 and state["state"] == "done"  # the same loop, with a pool of one
