"""The Optuna proposer: real Optuna, real SQLite, the real train.py's hyperparameters."""

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autoresearch.errors import AutoresearchError
from autoresearch.proposers import Context, ProposerError, ProposerOptions, get_proposer
from autoresearch.proposers.hparam import find_params
from autoresearch.proposers.optuna_backend import search_space

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAIN_PY = (REPO_ROOT / "train.py").read_text()
BASELINE = {"experiment": 0, "status": "keep", "val_bpb": 1.50, "description": "baseline", "commit": "abc1234"}


def proposer(run_dir: Path, sampler="tpe", seed=0):
    return get_proposer("optuna", ProposerOptions(sampler=sampler, seed=seed, run_dir=run_dir))


def ctx(n, history, train_py=TRAIN_PY, profile="gpu", feedback=None) -> Context:
    return Context(program="", train_py=train_py, lab_contract="", history=list(history), workdir=Path("."),
                   experiment=n, profile=profile, feedback=feedback)


def row(n, status, val_bpb, **extra) -> dict:
    return {"experiment": n, "status": status, "val_bpb": val_bpb, "description": f"exp {n}", **extra}


def trials(run_dir: Path) -> list:
    study = optuna.load_study(study_name=run_dir.name, storage=f"sqlite:///{run_dir / 'optuna.db'}")
    return study.get_trials(deepcopy=False)


def values(train_py: str, profile="gpu") -> dict:
    return {p.name: p.value for p in find_params(train_py, profile)}


def test_range_rule_logs_rates_keeps_powers_of_two_and_bounds_fractions_and_momenta():
    dims = {d.name: d for d in search_space(find_params(TRAIN_PY, "gpu"))}
    lr = dims["MATRIX_LR"]
    assert (lr.kind, lr.log, lr.low, lr.high) == ("float", True, 0.01, 0.16)  # x/4 .. 4x
    assert (dims["SOFTCAP"].low, dims["SOFTCAP"].high, dims["SOFTCAP"].log) == (7.5, 30.0, True)
    assert dims["SHORT_WINDOW"].high == 1.0  # a float <= 1 without LR stays <= 1
    batch = dims["TOTAL_BATCH_SIZE"]  # 2**19: the exponent moves
    assert (batch.kind, batch.key, batch.low, batch.high) == ("pow", "log2(TOTAL_BATCH_SIZE)", 18, 20)
    assert (dims["HEAD_DIM"].kind, dims["HEAD_DIM"].low, dims["HEAD_DIM"].high) == ("pow2", 6, 8)  # 64 .. 256
    assert (dims["DEPTH"].kind, dims["DEPTH"].low, dims["DEPTH"].high) == ("int", 5, 12)
    assert (dims["WARMDOWN_RATIO"].low, dims["WARMDOWN_RATIO"].high, dims["WARMDOWN_RATIO"].log) == (0.25, 0.75, False)
    assert (dims["WARMUP_RATIO"].low, dims["WARMUP_RATIO"].high) == (0.0, 0.25)
    assert (dims["MUON_MOMENTUM"].low, dims["MUON_MOMENTUM"].high) == (0.9, 0.975)
    assert "SEED" not in dims and "ADAM_BETAS" not in dims and "WINDOW_PATTERN" not in dims


@pytest.mark.parametrize("sampler", ["tpe", "cmaes", "random"])
def test_each_sampler_proposes_a_valid_edit_within_the_ranges(tmp_path, sampler):
    run_dir = tmp_path / "night1"
    prop = proposer(run_dir, sampler).propose(ctx(1, [BASELINE]))
    compile(prop.train_py, "train.py", "exec")
    old, new = values(TRAIN_PY), values(prop.train_py)
    assert set(old) == set(new) and old != new
    dims = search_space(find_params(TRAIN_PY, "gpu"))
    for d in dims:
        x = new[d.name] if d.kind in ("float", "int", "pow") else new[d.name].bit_length() - 1
        assert d.low * 0.995 <= x <= d.high * 1.005, (d.name, x)  # written with 3 significant digits
    # only hyperparameter lines changed, and the description names every changed one as hparam does
    changed = [a for a, b in zip(TRAIN_PY.splitlines(), prop.train_py.splitlines()) if a != b]
    assert changed and all(line.lstrip().split(" ")[0] in old for line in changed)
    assert prop.description.startswith(f"optuna {sampler} trial 1: ")
    assert len(prop.description.split(": ", 1)[1].split(", ")) == len(changed)
    assert (run_dir / "optuna.db").is_file()
    told = trials(run_dir)
    assert [t.state for t in told] == [TrialState.COMPLETE, TrialState.RUNNING]
    assert told[0].user_attrs == {"status": "keep", "commit": "abc1234", "experiment": 0, "reference": True}
    assert told[0].value == 1.50 and told[1].user_attrs["experiment"] == 1


def test_outcomes_are_told_with_the_keep_rules_verdict_before_the_next_ask(tmp_path):
    run_dir = tmp_path / "night"
    p = proposer(run_dir)
    history = [BASELINE]
    for n, (status, val) in enumerate([("discard", 1.61), ("keep", 1.42), ("crash", 0.0)], start=1):
        p.propose(ctx(n, history))
        history.append(row(n, status, val, reason="exit 1: boom" if status == "crash" else ""))
    p.propose(ctx(4, history))
    told = trials(run_dir)
    assert [t.state for t in told] == [TrialState.COMPLETE] * 3 + [TrialState.FAIL, TrialState.RUNNING]
    assert [t.value for t in told[:3]] == [1.50, 1.61, 1.42]
    assert [t.user_attrs.get("status") for t in told[:4]] == ["keep", "discard", "keep", "crash"]
    assert told[3].user_attrs["reason"] == "exit 1: boom" and told[3].value is None  # a crash is a failed trial
    assert [t.user_attrs["experiment"] for t in told] == [0, 1, 2, 3, 4]


def test_the_redesigned_history_running_rows_stay_pending_and_means_are_told(tmp_path):
    # one dict per experiment, val_bpb the mean over its `trials`; "running" is in flight
    run_dir = tmp_path / "night"
    p = proposer(run_dir)
    base = {**BASELINE, "val_bpb": 1.505, "trials": 2}
    p.propose(ctx(1, [{**base, "status": "running", "val_bpb": 0.0}]))  # asked while the baseline trains
    p.propose(ctx(2, [base, row(1, "running", 0.0, trials=0)]))  # next one asked while 1 trains
    told = trials(run_dir)
    assert [(t.user_attrs.get("experiment"), t.state) for t in told] == [
        (1, TrialState.RUNNING), (0, TrialState.COMPLETE), (2, TrialState.RUNNING)]
    assert told[1].value == 1.505 and told[1].user_attrs["trials"] == 2
    p.propose(ctx(3, [base, row(1, "discard", 1.55, trials=1), row(2, "measuring", 0.0)]))
    told = trials(run_dir)
    assert told[0].state == TrialState.COMPLETE and told[0].value == 1.55
    assert told[2].state == TrialState.RUNNING and len(told) == 4  # a non-final status is not told


def test_a_new_proposer_on_the_same_run_dir_continues_the_study_and_a_redone_number_is_not_told_twice(tmp_path):
    run_dir = tmp_path / "night"
    history = [BASELINE]
    first = proposer(run_dir)
    first.propose(ctx(1, history))
    history.append(row(1, "discard", 1.7))
    lost = first.propose(ctx(2, history))  # the harness dies before experiment 2 has a row
    resumed = proposer(run_dir)  # a new process: same folder, same study
    again = resumed.propose(ctx(2, history))
    assert again.train_py != lost.train_py  # a fresh ask, not the abandoned one
    history.append(row(2, "keep", 1.45))
    resumed.propose(ctx(3, history))
    told = trials(run_dir)
    assert [(t.user_attrs.get("experiment"), t.state) for t in told] == [
        (0, TrialState.COMPLETE), (1, TrialState.COMPLETE), (2, TrialState.FAIL), (2, TrialState.COMPLETE),
        (3, TrialState.RUNNING)]
    assert "proposed again" in told[2].user_attrs["abandoned"] and told[3].value == 1.45
    assert sum(t.user_attrs.get("reference", False) for t in told) == 1
    assert len(optuna.get_all_study_names(f"sqlite:///{run_dir / 'optuna.db'}")) == 1


def test_a_killed_process_loses_no_told_trial(tmp_path):
    run_dir = tmp_path / "night"
    script = f"""
import os, signal, sys
sys.path.insert(0, {str(REPO_ROOT)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_proposer_optuna import BASELINE, ctx, proposer, row
p = proposer({str(run_dir)!r})
p.propose(ctx(1, [BASELINE]))
p.propose(ctx(2, [BASELINE, row(1, "discard", 1.66)]))
os.kill(os.getpid(), signal.SIGKILL)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode == -signal.SIGKILL, done.stderr
    with sqlite3.connect(run_dir / "optuna.db") as db:  # what is on disk, read without Optuna
        states = db.execute("select number, state from trials order by number").fetchall()
    assert states == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "RUNNING")]
    assert trials(run_dir)[1].value == 1.66


def test_same_seed_and_history_give_the_same_proposal_and_another_seed_does_not(tmp_path):
    history = [BASELINE, row(1, "discard", 1.6)]
    got = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        p = proposer(tmp_path / name, seed=seed)
        p.propose(ctx(1, history[:1]))
        got.append(p.propose(ctx(2, history)).train_py)
    assert got[0] == got[1] and got[0] != got[2]


def test_the_cpu_profile_searches_its_own_size_block(tmp_path):
    prop = proposer(tmp_path / "cpu").propose(ctx(1, [BASELINE], profile="cpu"))
    gpu_block = TRAIN_PY[TRAIN_PY.index('if PROFILE == "gpu":'):TRAIN_PY.index("else:\n    DEPTH = 4")]
    assert gpu_block in prop.train_py  # the gpu branch is untouched
    assert values(prop.train_py, "cpu") != values(TRAIN_PY, "cpu")


def test_without_a_run_dir_the_study_is_in_memory_and_still_told(tmp_path):
    p = get_proposer("optuna", ProposerOptions(seed=0))
    p.propose(ctx(1, [BASELINE]))
    p.propose(ctx(2, [BASELINE, row(1, "keep", 1.4)]))
    assert not list(tmp_path.iterdir())
    study = optuna.load_study(study_name="autoresearch", storage=p.storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING]


def test_unknown_sampler_is_a_one_line_error(tmp_path):
    with pytest.raises(AutoresearchError) as err:
        proposer(tmp_path / "x", sampler="grid")
    assert str(err.value) == "unknown sampler 'grid'; known samplers: tpe, cmaes, random"


def test_a_fix_request_is_refused_and_nothing_is_asked(tmp_path):
    p = proposer(tmp_path / "night")
    assert p.can_fix is False
    with pytest.raises(ProposerError, match="cannot fix"):
        p.propose(ctx(1, [BASELINE], feedback="exit 1: boom"))
    assert optuna.get_all_study_names(f"sqlite:///{tmp_path / 'night' / 'optuna.db'}") == []


def test_the_real_loop_tells_every_row_to_the_study_and_a_resume_continues_it(tmp_repo):
    from autoresearch.loop import RunConfig, run
    from autoresearch.records import ResultsFile
    from standin import make_lab

    lab = make_lab(tmp_repo)  # stand-in train.py: VAL (a float) is the val_bpb it reports
    run_dir = lab / "results" / "t"
    options = ProposerOptions(seed=0, run_dir=run_dir)
    values = dict(repo_root=lab, tag="t", profile="cpu", time_budget=5, timeout=30, pause_seconds=0.01,
                  proposer="optuna", options=options, audit="off")
    from test_loop import RecordingView

    assert run(RunConfig(max_experiments=3, **values), view=RecordingView()).experiments == 3
    assert run(RunConfig(max_experiments=5, resume=True, **values), view=RecordingView()).experiments == 5
    got = ResultsFile(run_dir / "results.tsv").rows()
    # The stand-in is deterministic: the baseline's two trials agree (sigma 0), every verdict is at once.
    assert [r.proposer for r in got] == ["baseline"] * 2 + ["optuna"] * 4
    assert all(r.description.startswith("optuna tpe trial ") and "VAL 1.0 -> " in r.description for r in got[2:3])
    told = {t.user_attrs["experiment"]: t for t in trials(run_dir) if t.state.is_finished()}
    assert sorted(told) == [0, 1, 2, 3]  # experiment 4 is told when experiment 5 is asked for
    for r in got[1:5]:  # the deciding row of experiments 0..3
        assert told[r.experiment].value == pytest.approx(r.val_bpb, abs=1e-6)
        assert told[r.experiment].user_attrs["status"] == r.status
