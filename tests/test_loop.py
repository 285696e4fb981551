"""The experiment loop against real git and real training subprocesses (the stand-in lab), with
an in-process scripted proposer."""

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import git
import psutil
import pytest
from rich.console import Console

from autoresearch.errors import AutoresearchError
from autoresearch.keep_rule import Noise
from autoresearch.ledger import Best
from autoresearch.live import Standing, View, ViewState, render, row_line
from autoresearch.lab import lab_contract, lab_time_budget
from autoresearch.loop import RunConfig, run
from autoresearch.proposers import Proposal, ProposerError, Usage
from autoresearch.records import COLUMNS, ResultsFile, RunLock, RunState
from standin import PREPARE_PY, ScriptedProposer, make_lab, set_constants


class RecordingView(View):
    """A silent view that remembers what the loop reported."""

    def __init__(self, tag="t"):
        super().__init__(tag, quiet=True)
        self.phases, self.notes, self.rows = [], [], []

    def phase(self, experiment, name, budget=None, timeout=None):
        super().phase(experiment, name, budget, timeout)
        self.phases.append((experiment, name))

    def note(self, text):
        super().note(text)
        self.notes.append(text)

    def row(self, row, delta, standing=None):
        super().row(row, delta, standing)
        self.rows.append((row, delta))


@pytest.fixture
def lab(tmp_repo) -> Path:
    return make_lab(tmp_repo)


def config(root: Path, **overrides) -> RunConfig:
    # The classic one-trial loop (greedy, one baseline trial): these tests are about the loop's
    # mechanics; tests/test_keep_rule_loop.py runs the noise rule.
    values = dict(repo_root=root, tag="t", profile="cpu", time_budget=5, timeout=30, pause_seconds=0.01,
                  keep_rule="greedy", baseline_repeats=1, audit="off")  # the stand-in hands over no model
    values.update(overrides)
    return RunConfig(**values)


def rows(root: Path, tag="t"):
    return ResultsFile(root / "results" / tag / "results.tsv").rows()


def worktree(root: Path, tag="t") -> git.Repo:
    return git.Repo(root / ".autoresearch" / "worktrees" / tag)


def branch_log(root: Path, tag="t") -> list[str]:
    return git.Repo(root).git.log("--format=%h %s", f"autoresearch/{tag}").splitlines()


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file of the user's checkout outside .git, results/ and .autoresearch/."""
    skip = (".git", "results", ".autoresearch")
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] not in skip
    }


# ---------------------------------------------------------------------------
# One run end to end
# ---------------------------------------------------------------------------


def test_baseline_keep_discard_crash_are_logged_and_the_branch_ends_at_the_best(lab, tmp_repo):
    (lab / "program.md").write_text("# Research program\n\nUNCOMMITTED: try a lower VAL.\n")
    (lab / "notes.txt").write_text("the user's untracked file\n")
    user_before = snapshot(lab)
    user_head = tmp_repo.head.commit.hexsha
    proposer = ScriptedProposer([{"VAL": 0.99}, {"VAL": 0.995}, {"MODE": "crash"}], cost=0.01)
    proposer.can_fix = False
    view = RecordingView()

    outcome = run(config(lab, max_experiments=4), proposer=proposer, view=view)

    assert (outcome.state, outcome.exit_code, outcome.rows) == ("done", 0, 4)
    got = rows(lab)
    assert [r.experiment for r in got] == [0, 1, 2, 3]
    assert [r.status for r in got] == ["keep", "keep", "discard", "crash"]
    assert [f"{r.val_bpb:.6f}" for r in got] == ["1.000000", "0.990000", "0.995000", "0.000000"]
    base = tmp_repo.head.commit.hexsha[:7]
    assert got[0].commit == got[0].parent == base and got[0].proposer == "baseline"
    assert got[1].parent == base and got[2].parent == got[1].commit == got[3].parent
    assert got[3].reason.startswith("exit 1: RuntimeError: boom")
    assert got[2].memory_gb == 2.0 and got[3].memory_gb == 0.0
    assert got[1].num_steps == 7 and got[1].training_seconds == 1.5 and got[1].mfu_percent == 1.25
    assert got[3].num_steps is None and got[3].training_seconds is None
    assert all(r.input_tokens == 100 and r.cost_usd == pytest.approx(0.01) for r in got[1:])
    assert all(r.started_at.endswith("Z") and r.wall_seconds >= 0 for r in got)
    assert got[2].description == "set VAL 0.995" and got[2].model == "script-1"
    header = (lab / "results/t/results.tsv").read_text().splitlines()[0].split("\t")
    assert tuple(header) == COLUMNS

    # The branch: base commit, then the one kept experiment; discards and crashes are gone.
    assert branch_log(lab) == [f"{got[1].commit} set VAL 0.99", f"{base} stand-in lab"]
    wt = worktree(lab)
    assert wt.head.commit.hexsha[:7] == got[1].commit and not wt.is_dirty(untracked_files=True)
    assert "VAL = 0.99" in (wt.working_tree_dir and Path(wt.working_tree_dir, "train.py").read_text())

    # The user's checkout: same branch, same HEAD, same bytes, uncommitted edit included.
    assert snapshot(lab) == user_before
    assert tmp_repo.head.commit.hexsha == user_head and tmp_repo.active_branch.name == "main"
    assert all("UNCOMMITTED: try a lower VAL." in ctx.program for ctx in proposer.contexts)

    # What each experiment left behind.
    run2 = lab / "results/t/runs/0002"
    assert "+VAL = 0.995" in (run2 / "diff.patch").read_text()
    record = json.loads((run2 / "proposal.json").read_text())
    assert record["attempts"][0]["prompt"] == "prompt for experiment 2"
    assert record["attempts"][0]["raw"] == "raw reply VAL 0.995"
    assert "val_bpb:          0.995000" in (run2 / "run.log").read_text()
    page = (lab / "results/t/report.html").read_text()  # rewritten after every row
    assert "set VAL 0.995" in page and "+VAL = 0.995" in page and "exit 1: RuntimeError: boom" in page
    state = RunState.load(lab / "results/t/run.json")
    assert state["state"] == "done" and state["base_commit"].startswith(base)
    assert not (lab / "results/t/training.json").exists()
    assert [line for row, _ in view.rows for line in [row_line(row, None)]][3].startswith("[0003] crash (exit 1")


def test_each_context_is_fresh_with_history_contract_and_best_train_py(lab):
    proposer = ScriptedProposer([{"VAL": 0.99}, {"VAL": 0.98}])
    run(config(lab, max_experiments=3), proposer=proposer, view=RecordingView())

    first, second = proposer.contexts
    assert [row["experiment"] for row in first.history] == [0]
    assert [row["description"] for row in second.history] == ["baseline", "set VAL 0.99"]
    assert "VAL = 1.0" in first.train_py and "VAL = 0.99" in second.train_py
    assert "TIME_BUDGET = 5  # seconds of training" in first.lab_contract
    assert "def evaluate_bpb" in first.lab_contract
    assert (first.experiment, second.experiment, first.profile) == (1, 2, "cpu")
    # Every ask runs in a scratch worktree of the best commit, never in the run's worktree.
    assert first.feedback is None and first.workdir.parent == lab / ".autoresearch" / "scratch" / "t"
    assert not first.workdir.exists()  # removed once the ask was taken


def test_equal_val_bpb_is_discarded_by_both_rules(lab):
    run(config(lab, max_experiments=2), proposer=ScriptedProposer([{"VAL": 1.0, "SLEEP": 0.0}]), view=RecordingView())
    assert [r.status for r in rows(lab)] == ["keep", "discard"]

    noise = config(lab, tag="u", max_experiments=2, keep_rule="noise", baseline_repeats=2)
    run(noise, proposer=ScriptedProposer([{"VAL": 1.0, "SLEEP": 0.0}]), view=RecordingView("u"))
    assert [r.status for r in rows(lab, "u")] == ["trial", "keep", "discard"]


# ---------------------------------------------------------------------------
# Crashes: every kind is a row with a reason, reverted, and the loop goes on
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, reason",
    [
        ("fail", "diverged: FAIL"),
        ("nan", "val_bpb is nan"),
        ("silent", "no summary (exit 0)"),
        ("write_prepare", "modified prepare.py"),
        ("write_file", "wrote files: stray.txt"),
    ],
)
def test_a_misbehaving_run_is_a_crash_with_its_reason_and_is_reverted(lab, mode, reason):
    proposer = ScriptedProposer([{"MODE": mode}, {"VAL": 0.9}])
    proposer.can_fix = False
    # unsandboxed: the loop's own checks (sandboxed, the write itself fails: test_faults_trust.py)
    run(config(lab, max_experiments=3, sandbox="off"), proposer=proposer, view=RecordingView())

    got = rows(lab)
    assert [r.status for r in got] == ["keep", "crash", "keep"]
    assert got[1].reason == reason and got[1].val_bpb == 0.0
    wt = worktree(lab)
    assert not wt.is_dirty(untracked_files=True)
    assert (Path(wt.working_tree_dir) / "prepare.py").read_text() == PREPARE_PY
    assert not (Path(wt.working_tree_dir) / "stray.txt").exists()
    assert wt.head.commit.hexsha[:7] == got[2].commit


def test_a_crash_is_shown_to_the_proposer_with_the_log_tail_and_a_fix_can_keep(lab):
    def fix(ctx):
        assert "MODE = 'crash'" in ctx.train_py
        return Proposal("fixed", "fix the crash", set_constants(ctx.train_py, MODE="ok", VAL=0.95), usage=Usage(5, 5, 0.5))

    proposer = ScriptedProposer([{"MODE": "crash"}, fix])
    view = RecordingView()
    run(config(lab, max_experiments=2), proposer=proposer, view=view)

    feedback = proposer.contexts[1].feedback
    assert "exit 1: RuntimeError: boom" in feedback and "step 00001 | loss 3.0" in feedback
    got = rows(lab)[1]
    assert (got.status, got.val_bpb, got.description) == ("keep", 0.95, "set MODE crash")
    assert (got.input_tokens, got.cost_usd) == (105, 0.5)
    folder = lab / "results/t/runs/0001"
    assert "RuntimeError" in (folder / "run.crash1.log").read_text()
    assert "val_bpb:          0.950000" in (folder / "run.log").read_text()
    diff = (folder / "diff.patch").read_text()
    assert "+VAL = 0.95" in diff and "MODE = 'crash'" not in diff  # the net change from the parent
    attempts = json.loads((folder / "proposal.json").read_text())["attempts"]
    assert [a["fix"] for a in attempts] == [0, 1] and attempts[1]["feedback"] == feedback
    # The fix is committed on the best the idea was built on: the branch holds kept commits only.
    log = branch_log(lab)
    assert log[0] == f"{got.commit} fix the crash" and not log[1].endswith(" set MODE crash") and len(log) == 2
    assert ("fixing" in {name for _, name in view.phases})


def test_two_failed_fixes_log_one_crash_and_move_on(lab):
    proposer = ScriptedProposer([{"MODE": "crash"}, {"VAL": 0.97}, {"VAL": 0.96}, {"VAL": 0.9}])
    run(config(lab, max_experiments=3), proposer=proposer, view=RecordingView())

    got = rows(lab)
    assert [r.status for r in got] == ["keep", "crash", "keep"]
    assert [ctx.feedback is not None for ctx in proposer.contexts] == [False, True, True, False]
    assert sorted(p.name for p in (lab / "results/t/runs/0001").iterdir()) == [
        "diff.patch", "proposal.json", "run.crash1.log", "run.crash2.log", "run.log",
    ]
    assert got[2].parent == got[0].commit  # the crashed chain left the branch


def test_a_failed_fix_request_logs_the_crash_with_its_cost(lab):
    proposer = ScriptedProposer([{"MODE": "crash"}, ProposerError("no idea", Usage(7, 3, 0.2)), {"VAL": 0.9}])
    run(config(lab, max_experiments=3), proposer=proposer, view=RecordingView())

    got = rows(lab)
    assert [r.status for r in got] == ["keep", "crash", "keep"]
    assert (got[1].input_tokens, got[1].cost_usd) == (107, pytest.approx(0.2))
    attempts = json.loads((lab / "results/t/runs/0001/proposal.json").read_text())["attempts"]
    assert attempts[1]["error"] == "no idea"
    assert RunState.load(lab / "results/t/run.json")["failed_proposals"] == 0  # it has its row


def test_a_failed_fix_request_leaves_the_crashed_attempts_log_as_run_log(lab):
    proposer = ScriptedProposer([{"MODE": "crash"}, ProposerError("no idea"), {"VAL": 0.9}])
    run(config(lab, max_experiments=3), proposer=proposer, view=RecordingView())

    folder = lab / "results/t/runs/0001"
    assert rows(lab)[1].status == "crash"
    assert "RuntimeError: boom" in (folder / "run.log").read_text()  # the attempt the row describes
    assert not (folder / "run.crash1.log").exists()


def test_summary_values_that_are_not_numbers_leave_their_columns_empty(lab):
    def odd_summary(ctx):
        train_py = ctx.train_py.replace("training_seconds: 1.5", "training_seconds: 1.5s")
        train_py = train_py.replace("peak_vram_mb:     2048.0", "peak_vram_mb:     n/a")
        train_py = train_py.replace("num_steps:        7", "num_steps:        7.5")
        train_py = train_py.replace("mfu_percent:      1.25", "mfu_percent:      nan")
        return Proposal("odd summary", "odd summary", set_constants(train_py, VAL=0.9))

    run(config(lab, max_experiments=2), proposer=ScriptedProposer([odd_summary]), view=RecordingView())

    got = rows(lab)  # the ledger still reads back
    assert [r.status for r in got] == ["keep", "keep"]
    row = got[1]
    assert (row.val_bpb, row.total_seconds) == (0.9, 2.0)
    assert (row.training_seconds, row.memory_gb, row.num_steps, row.mfu_percent) == (None, 0.0, None, None)


def test_a_timeout_is_a_crash_without_fix_attempts(lab):
    proposer = ScriptedProposer([{"MODE": "hang"}, {"VAL": 0.9}])
    run(config(lab, max_experiments=3, timeout=1.5), proposer=proposer, view=RecordingView())

    got = rows(lab)
    assert got[1].status == "crash" and got[1].reason.startswith("timeout")
    assert [ctx.feedback for ctx in proposer.contexts] == [None, None]
    assert got[2].status == "keep"


def test_a_baseline_crash_stops_the_run_and_resume_runs_the_baseline_again(lab, tmp_repo):
    (lab / "train.py").write_text(set_constants((lab / "train.py").read_text(), MODE="crash"))
    tmp_repo.index.add(["train.py"])
    tmp_repo.index.commit("broken lab")
    with pytest.raises(AutoresearchError, match="baseline crashed"):
        run(config(lab, max_experiments=3), proposer=ScriptedProposer([]), view=RecordingView())
    assert [r.status for r in rows(lab)] == ["crash"]
    assert RunState.load(lab / "results/t/run.json")["state"] == "stopped"

    with pytest.raises(AutoresearchError, match="baseline crashed"):
        run(config(lab, max_experiments=3, resume=True), proposer=ScriptedProposer([]), view=RecordingView())
    assert [(r.experiment, r.proposer) for r in rows(lab)] == [(0, "baseline"), (1, "baseline")]


def test_the_training_process_gets_the_lab_settings_but_no_api_key(lab, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-never-to-be-seen-123")
    monkeypatch.setenv("AUTORESEARCH_CACHE", "/some/cache")
    monkeypatch.setenv("AUTORESEARCH_SOURCE", "stdlib")
    monkeypatch.setenv("AUTORESEARCH_EVAL_TOKENS", "16384")
    monkeypatch.setenv("AUTORESEARCH_PROFILE", "gpu")  # --profile wins
    run(config(lab, max_experiments=1, time_budget=7), proposer=ScriptedProposer([]), view=RecordingView())

    log = (lab / "results/t/runs/0000/run.log").read_text()
    assert "saw OPENAI_API_KEY: False" in log
    assert "lab env: cpu 7 /some/cache stdlib 16384" in log
    for path in (lab / "results").rglob("*"):
        if path.is_file():
            assert "sk-test-never-to-be-seen" not in path.read_text(errors="replace")


# ---------------------------------------------------------------------------
# Proposer failures, pauses and limits
# ---------------------------------------------------------------------------


def test_proposer_failures_are_not_rows_and_too_many_in_a_row_pause_the_run(lab):
    failures = [ProposerError(f"bad reply {i}", Usage(10, 0, 0.001)) for i in range(5)]
    proposer = ScriptedProposer([*failures, {"VAL": 0.99}])
    view = RecordingView()
    outcome = run(config(lab, max_experiments=2, max_consecutive_proposer_failures=2), proposer=proposer, view=view)

    assert outcome.state == "done"
    assert [(r.experiment, r.status) for r in rows(lab)] == [(0, "keep"), (1, "keep")]
    pauses = [note for note in view.notes if note.startswith("paused")]
    assert len(pauses) == 2 and "2 times in a row" in pauses[0]
    assert ("paused" in {name for _, name in view.phases})
    state = RunState.load(lab / "results/t/run.json")
    assert state["failed_proposals"] == 5 and state["proposal_cost_usd"] == pytest.approx(0.005)
    assert view.state.failed_cost_usd == pytest.approx(0.005)  # the live view's cost line counts them
    record = json.loads((lab / "results/t/runs/0001/proposal.json").read_text())
    assert [f["error"] for f in record["failures"]] == [f"bad reply {i}" for i in range(5)]


def test_pauses_grow_up_to_the_limit(lab):
    proposer = ScriptedProposer([ProposerError("down")] * 4 + [{"VAL": 0.99}])
    cfg = config(lab, max_experiments=2, max_consecutive_proposer_failures=1, pause_seconds=0.1,
                 pause_max_seconds=0.3)
    view = RecordingView()
    run(cfg, proposer=proposer, view=view)
    pauses = [re.search(r"asking again in ([0-9.]+) s", n).group(1) for n in view.notes if "paused" in n]
    assert pauses == ["0.1", "0.2", "0.3", "0.3"]
    assert [r.description for r in rows(lab)] == ["baseline", "set VAL 0.99"]


def test_a_proposal_that_touches_another_file_is_rejected_and_undone(lab):
    def tamper(ctx):
        (ctx.workdir / "prepare.py").write_text("# rewritten\n")
        (ctx.workdir / "helper.py").write_text("x = 1\n")
        return Proposal("h", "tamper", set_constants(ctx.train_py, VAL=0.5))

    proposer = ScriptedProposer([tamper, {"VAL": 0.99}])
    run(config(lab, max_experiments=2), proposer=proposer, view=RecordingView())

    assert [r.description for r in rows(lab)] == ["baseline", "set VAL 0.99"]
    record = json.loads((lab / "results/t/runs/0001/proposal.json").read_text())
    assert record["failures"][0]["error"] == "the proposer changed files other than train.py: helper.py, prepare.py"
    wt = Path(worktree(lab).working_tree_dir)
    assert (wt / "prepare.py").read_text() == PREPARE_PY and not (wt / "helper.py").exists()


def test_a_proposal_that_changes_nothing_is_a_failure(lab):
    proposer = ScriptedProposer([lambda ctx: Proposal("h", "same", ctx.train_py), {"VAL": 0.99}])
    run(config(lab, max_experiments=2), proposer=proposer, view=RecordingView())
    assert len(rows(lab)) == 2
    assert RunState.load(lab / "results/t/run.json")["failed_proposals"] == 1


def test_max_cost_counts_rows_and_failed_proposals(lab):
    proposer = ScriptedProposer([ProposerError("x", Usage(1, 1, 0.3)), {"VAL": 0.99}, {"VAL": 0.98}, {"VAL": 0.97}], cost=0.4)
    outcome = run(config(lab, max_cost=1.0), proposer=proposer, view=RecordingView())
    # 0.3 (failed) + 0.4 + 0.4 = 1.1 >= 1.0 after two experiments.
    assert outcome.state == "done" and "--max-cost 1" in outcome.message
    assert len(rows(lab)) == 3


def test_max_hours_stops_before_the_next_experiment(lab):
    outcome = run(config(lab, max_hours=0), proposer=ScriptedProposer([]), view=RecordingView())
    assert (outcome.state, outcome.rows) == ("done", 0)
    assert "--max-hours 0" in outcome.message


# ---------------------------------------------------------------------------
# Interruption, resume, refusal
# ---------------------------------------------------------------------------


def test_resume_continues_numbering_without_lost_or_duplicated_rows(lab):
    run(config(lab, max_experiments=2), proposer=ScriptedProposer([{"VAL": 0.99}]), view=RecordingView())
    proposer = ScriptedProposer([{"VAL": 0.995}, {"VAL": 0.98}])
    run(config(lab, max_experiments=4, resume=True), proposer=proposer, view=RecordingView())

    got = rows(lab)
    assert [(r.experiment, r.status) for r in got] == [(0, "keep"), (1, "keep"), (2, "discard"), (3, "keep")]
    assert "VAL = 0.99" in proposer.contexts[0].train_py
    assert [row["experiment"] for row in proposer.contexts[0].history] == [0, 1]
    assert worktree(lab).head.commit.hexsha[:7] == got[3].commit


def test_the_same_command_again_continues_the_run(lab):
    run(config(lab, max_experiments=2), proposer=ScriptedProposer([{"VAL": 0.99}]), view=RecordingView())
    run(config(lab, max_experiments=3), proposer=ScriptedProposer([{"VAL": 0.98}]), view=RecordingView())
    assert [r.experiment for r in rows(lab)] == [0, 1, 2]


def test_resume_after_a_kill_mid_experiment_redoes_it_once(lab):
    run(config(lab, max_experiments=2), proposer=ScriptedProposer([{"VAL": 0.99}]), view=RecordingView())
    best = rows(lab)[1].commit
    # What a kill -9 during experiment 2 leaves: its commit on the branch, a dirty worktree, a
    # half-written run folder, a torn row, and run.json saying running (with a dead pid).
    wt = worktree(lab)
    path = Path(wt.working_tree_dir)
    (path / "train.py").write_text(set_constants((path / "train.py").read_text(), VAL=0.5))
    wt.index.add(["train.py"])
    wt.index.commit("half-finished experiment")
    (path / "prepare.py").write_text("# dirty\n")
    (path / "junk.bin").write_bytes(b"\0")
    (lab / "results/t/runs/0002").mkdir(parents=True)
    (lab / "results/t/runs/0002/run.log").write_text("old log\n")
    with open(lab / "results/t/results.tsv", "a") as f:
        f.write("deadbee\t0.500000\t2.0\tkeep\ttorn")
    RunState.save(lab / "results/t/run.json", state="running", pid=2**22 + 7)

    proposer = ScriptedProposer([{"VAL": 0.995}, {"VAL": 0.98}])
    run(config(lab, max_experiments=4), proposer=proposer, view=RecordingView())

    got = rows(lab)
    assert [(r.experiment, r.status) for r in got] == [(0, "keep"), (1, "keep"), (2, "discard"), (3, "keep")]
    assert got[2].parent == best and "VAL = 0.99 " in proposer.contexts[0].train_py
    assert "old log" not in (lab / "results/t/runs/0002/run.log").read_text()
    assert "half-finished" not in "\n".join(branch_log(lab))
    assert (lab / "results/t/results.tsv").read_text().count("torn") == 0


def test_resume_moves_the_branch_back_when_the_kill_came_after_the_row(lab):
    run(config(lab, max_experiments=3), proposer=ScriptedProposer([{"VAL": 0.99}, {"VAL": 0.995}]), view=RecordingView())
    got = rows(lab)
    # A kill between appending the discard row and resetting the branch leaves the tip there.
    worktree(lab).git.reset("--hard", got[2].commit)
    run(config(lab, max_experiments=3, resume=True), proposer=ScriptedProposer([]), view=RecordingView())
    assert worktree(lab).head.commit.hexsha[:7] == got[1].commit
    assert len(rows(lab)) == 3


def test_an_interrupt_while_proposing_stops_cleanly_and_resume_works(lab):
    def interrupted(ctx):
        (ctx.workdir / "train.py").write_text("half an edit\n")
        raise KeyboardInterrupt

    run(config(lab, max_experiments=2), proposer=ScriptedProposer([{"VAL": 0.99}]), view=RecordingView())
    view = RecordingView()
    outcome = run(config(lab, max_experiments=4), proposer=ScriptedProposer([interrupted]), view=view)

    assert (outcome.state, outcome.exit_code) == ("stopped", 130)
    assert outcome.message == "stopped; resume with: autoresearch run --tag t --resume"
    assert RunState.load(lab / "results/t/run.json")["state"] == "stopped"
    wt = worktree(lab)
    assert not wt.is_dirty(untracked_files=True) and wt.head.commit.hexsha[:7] == rows(lab)[1].commit
    with RunLock(lab / "results/t/run.lock"):  # released
        pass

    run(config(lab, max_experiments=3, resume=True), proposer=ScriptedProposer([{"VAL": 0.98}]), view=RecordingView())
    assert [r.experiment for r in rows(lab)] == [0, 1, 3]  # number 2 was handed out to the interrupted ask


def test_a_tag_whose_branch_exists_but_was_not_started_here_is_refused(lab, tmp_repo):
    tmp_repo.create_head("autoresearch/taken")
    with pytest.raises(AutoresearchError, match="already exists.*pick another --tag"):
        run(config(lab, tag="taken"), proposer=ScriptedProposer([]), view=RecordingView("taken"))
    with pytest.raises(AutoresearchError, match="no run 'nothing' to resume"):
        run(config(lab, tag="nothing", resume=True), proposer=ScriptedProposer([]), view=RecordingView("nothing"))


def test_a_second_harness_on_the_same_tag_is_refused(lab):
    with RunLock(lab / "results/t/run.lock"):
        with pytest.raises(AutoresearchError, match="already running"):
            run(config(lab, max_experiments=1), proposer=ScriptedProposer([]), view=RecordingView())


def test_resume_kills_a_training_process_orphaned_by_a_killed_harness(lab):
    run(config(lab, max_experiments=1), proposer=ScriptedProposer([]), view=RecordingView())
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    try:
        info = {"pid": orphan.pid, "pgid": orphan.pid, "create_time": psutil.Process(orphan.pid).create_time()}
        (lab / "results/t/training.json").write_text(json.dumps(info))
        run(config(lab, max_experiments=1, resume=True), proposer=ScriptedProposer([]), view=RecordingView())
        assert orphan.wait(timeout=10) == -signal.SIGTERM
    finally:
        if orphan.poll() is None:
            orphan.kill()
    assert not (lab / "results/t/training.json").exists()


# ---------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------


def test_lab_contract_keeps_constants_with_comments_and_the_metric():
    text = PREPARE_PY + "\ndef helper():\n    return 2\n\nlowercase = 3\n"
    contract = lab_contract(text)
    assert "MAX_SEQ_LEN = 64  # context length" in contract
    assert "def evaluate_bpb(model, tokenizer, batch_size):" in contract
    assert "helper" not in contract and "lowercase" not in contract


def test_lab_contract_takes_the_sections_marked_fixed():
    text = (
        "import os\n\n# ----------\n# Profiles (fixed: these define the experiment)\n# ----------\n\n"
        "PROFILES = {'cpu': dict(TIME_BUDGET=120)}  # why\n\n# ----------\n# Data download\n# ----------\n\n"
        "URL = 'https://example.com'\n\n# ----------\n# Evaluation (fixed: this is the metric)\n# ----------\n\n"
        "def evaluate_bpb(model):\n    return 1.0\n\n# ----------\n# Main\n# ----------\n\nmain()\n"
    )
    contract = lab_contract(text)
    assert "PROFILES = {'cpu': dict(TIME_BUDGET=120)}  # why" in contract
    assert "def evaluate_bpb(model):" in contract and "# Evaluation (fixed: this is the metric)" in contract
    assert "URL" not in contract and "main()" not in contract and "import os" not in contract


def test_lab_time_budget_prefers_the_profile_then_the_constant():
    text = 'TIME_BUDGET = 300\nPROFILES = {"gpu": {"TIME_BUDGET": 300}, "cpu": {"time_budget": 60}}\n'
    assert lab_time_budget(text, "cpu") == 60
    assert lab_time_budget('P = {"cpu": dict(MAX_SEQ_LEN=8, TIME_BUDGET=120)}\n', "cpu") == 120
    assert lab_time_budget(text, "gpu") == 300
    assert lab_time_budget("TIME_BUDGET = 120\n", "cpu") == 120
    assert lab_time_budget("nothing here\n", "cpu") == 300


def test_live_view_renders_phase_best_counts_and_rows():
    state = ViewState(tag="mar5", proposer="hparam")
    state.add_row({"experiment": 0, "commit": "abc1234", "val_bpb": 0.9979, "status": "keep",
                   "description": "baseline", "reason": "", "input_tokens": 0, "output_tokens": 0, "cost_usd": 0})
    state.add_row({"experiment": 1, "commit": "def5678", "val_bpb": 0.0, "status": "crash",
                   "description": "bigger batch", "reason": "timeout after 600 s", "input_tokens": 1200,
                   "output_tokens": 300, "cost_usd": 0.0123})
    state.experiment, state.phase, state.budget, state.timeout = 2, "training", 300, 600
    state.phase_since = 100.0
    state.standing = Standing(Best("abc1234", 0, (0.9979, 0.9981)), Noise(0.000141, 1), 2)
    console = Console(record=True, width=120)
    console.print(render(state, now=160.0))
    text = console.export_text()
    assert "[0002] training 1:00 elapsed, ~4:00 of budget left" in text
    assert "0.998000 ± 0.000100 over 2 trials (abc1234)" in text and "2: 1 kept, 0 discarded, 1 crashed" in text
    assert "0.000141 (1 dof)" in text
    assert "1,200 in, 300 out, $0.0123" in text and "timeout after 600 s" in text
    state.failed_cost_usd = 0.002
    console = Console(record=True, width=120)
    console.print(render(state, now=160.0))
    assert "$0.0143 ($0.0020 on failed proposals)" in console.export_text()


def test_an_interrupt_right_after_a_kept_row_is_written_leaves_the_branch_at_that_row(lab, monkeypatch):
    append = ResultsFile.append

    def append_then_interrupt(self, row):
        append(self, row)
        if row.experiment == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(ResultsFile, "append", append_then_interrupt)
    outcome = run(config(lab, max_experiments=3), proposer=ScriptedProposer([{"VAL": 0.99}]), view=RecordingView())

    assert outcome.exit_code == 130
    got = rows(lab)
    assert [(r.experiment, r.status) for r in got] == [(0, "keep"), (1, "keep")]
    wt = worktree(lab)
    assert wt.head.commit.hexsha[:7] == got[1].commit and not wt.is_dirty(untracked_files=True)
