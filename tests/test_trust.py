"""The loop's trust settings (trust.py, --audit, --sandbox) on the stand-in lab, the held-out
rule of the report, and the proposer's history without held-out numbers."""

import os
import shutil
from pathlib import Path

import pytest

from autoresearch.analysis import heldout_check
from autoresearch.errors import AutoresearchError
from autoresearch.ledger import Ledger
from autoresearch.loop import RunConfig, run
from autoresearch.records import Row
from standin import ScriptedProposer, make_lab
from test_loop import RecordingView


def config(root: Path, **overrides) -> RunConfig:
    values = dict(repo_root=root, tag="t", profile="cpu", time_budget=5, timeout=30, keep_rule="greedy",
                  baseline_repeats=1, max_experiments=2)
    values.update(overrides)
    return RunConfig(**values)


@pytest.mark.parametrize("field,value", [("audit", "maybe"), ("sandbox", "yes")])
def test_bad_trust_settings_are_one_line_errors(tmp_path, field, value):
    with pytest.raises(AutoresearchError, match=f"bad --{field} '{value}'"):
        config(tmp_path, **{field: value})


def test_audit_on_refuses_a_lab_whose_prepare_py_cannot_evaluate_a_handoff(tmp_repo):
    root = make_lab(tmp_repo)
    with pytest.raises(AutoresearchError, match="pass --audit off") as caught:
        run(config(root), proposer=ScriptedProposer([]), view=RecordingView())
    assert "\n" not in str(caught.value)
    assert not (root / "results/t/results.tsv").exists()  # refused before any training


def test_audit_off_says_so_on_every_row_and_warns_once(tmp_repo):
    root = make_lab(tmp_repo)
    view = RecordingView()
    run(config(root, audit="off"), proposer=ScriptedProposer([{"VAL": 0.9}]), view=view)
    rows = Ledger(root / "results/t").rows()
    assert [r.status for r in rows] == ["keep", "keep"] and {r.audit for r in rows} == {"off"}
    assert [n for n in view.notes if "--audit off" in n] == [view.notes[0]]


@pytest.fixture
def no_bwrap_path(tmp_path, monkeypatch):
    """PATH with git and nothing else: bubblewrap cannot be found (the real detection runs)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(shutil.which("git"), bin_dir / "git")
    monkeypatch.setenv("PATH", str(bin_dir))


def test_sandbox_auto_without_bubblewrap_warns_once_and_rows_say_so(tmp_repo, no_bwrap_path):
    root = make_lab(tmp_repo)
    view = RecordingView()
    run(config(root, audit="off"), proposer=ScriptedProposer([{"VAL": 0.9}]), view=view)
    rows = Ledger(root / "results/t").rows()
    assert {r.sandbox for r in rows} == {"none"}  # the stand-in cache has no held-out split to watch
    assert [n for n in view.notes if "unsandboxed (bwrap not found" in n] == [view.notes[0]]


def test_sandbox_on_without_bubblewrap_refuses_to_start(tmp_repo, no_bwrap_path):
    root = make_lab(tmp_repo)
    with pytest.raises(AutoresearchError, match="--sandbox on, but bwrap not found"):
        run(config(root, audit="off", sandbox="on"), proposer=ScriptedProposer([]), view=RecordingView())


def test_the_proposers_history_never_has_heldout_numbers(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.append(Row("abc1234", 1.0, 1.0, "keep", "baseline", 0, audit="pass", audit_val_bpb=1.0, heldout_bpb=1.2))
    [entry] = ledger.history()
    assert "heldout_bpb" not in entry and entry["audit_val_bpb"] == 1.0
    assert ledger.rows()[0].heldout_bpb == 1.2  # still in results.tsv, for the user and the report


def kept(n, val, heldout):
    return {"experiment": n, "commit": f"c{n}", "audit_val_bpb": val, "heldout_bpb": heldout}


def test_heldout_rule_flags_a_val_gain_that_heldout_does_not_follow():
    chain = [kept(0, 3.00, 3.40), kept(1, 2.80, 3.21), kept(2, 2.60, 3.25)]
    check = heldout_check(chain, sigma=0.002)
    assert [s["diverges"] for s in check["steps"]] == [False, False, True] and check["diverges"]
    assert check["steps"][2]["val_gain"] == pytest.approx(0.2) and check["steps"][2]["heldout_gain"] == pytest.approx(-0.04)
    assert check["threshold"] == pytest.approx(0.004)


def test_heldout_rule_leaves_small_and_honest_gains_alone():
    # held-out gains 60 % of val's: honest; a 0.0005 val gain whose held-out is 0.0004 worse: noise
    chain = [kept(0, 3.0, 3.4), kept(1, 2.9, 3.34), kept(2, 2.8995, 3.3404)]
    assert not heldout_check(chain, sigma=None)["diverges"]
    assert heldout_check([kept(0, 3.0, None)], sigma=None)["steps"] == []


def test_a_declared_target_with_network_runs_unsandboxed_and_refuses_sandbox_on(tmp_path):
    from autoresearch.errors import AutoresearchError
    from autoresearch.trust import Trust

    from autoresearch.target import Target

    notes = []
    target = Target(edit=("p.py",), run="python p.py", metric="m", direction="max", network=True)
    trust = Trust.open_declared("auto", tmp_path, notes.append, target)
    assert trust.sandbox is None and not trust.audit and trust.declared
    assert notes == ["warning: network = true: the experiment runs unsandboxed, with the network"]
    with pytest.raises(AutoresearchError, match="network = true"):
        Trust.open_declared("on", tmp_path, notes.append, target)
