"""Speculative proposals (issue 10): the next idea is asked for while one trains, in a scratch
worktree, and used, rebased or thrown away when the one training is decided. Real git, real
training subprocesses, the real command proposer and CLI."""

import json
import os
import signal
import sys
from pathlib import Path

import git
import psutil
import pytest

from autoresearch.loop import RunConfig, run
from autoresearch.proposers import Proposer, ProposerError
from autoresearch.records import ResultsFile, RunState
from autoresearch.asking import changed_ranges, overlaps, rebase_train_py
from invariants import check_invariants
from reliability import Harness, wait_for
from standin import TRAIN_PY, ScriptedProposer, make_lab, set_constants
from test_loop import RecordingView

TESTS = Path(__file__).resolve().parent
AGENT = f"{sys.executable} {TESTS / 'standin_agent.py'}"


@pytest.fixture
def lab(tmp_repo) -> Path:
    return make_lab(tmp_repo)


def config(root: Path, **overrides) -> RunConfig:
    values = dict(repo_root=root, tag="t", profile="cpu", time_budget=5, timeout=30, pause_seconds=0.01,
                  keep_rule="greedy", baseline_repeats=1, audit="off")  # the stand-in trains no model
    values.update(overrides)
    return RunConfig(**values)


def rows(root: Path):
    return ResultsFile(root / "results/t/results.tsv").rows()


def slow_proposer(steps, cost=0.01) -> ScriptedProposer:
    proposer = ScriptedProposer(steps, cost=cost)
    proposer.speculative = True  # as openai, anthropic and command are
    return proposer


def worktrees(root: Path) -> list[str]:
    return [line for line in git.Repo(root).git.worktree("list", "--porcelain").splitlines()
            if line.startswith("worktree ")]


# ---------------------------------------------------------------------------
# Re-applying an idea on a new best
# ---------------------------------------------------------------------------


def test_an_idea_on_other_lines_is_rebased_and_one_on_the_same_lines_is_not():
    kept = set_constants(TRAIN_PY, VAL=0.99)
    other = set_constants(TRAIN_PY, SLEEP=0.5)
    merged = rebase_train_py(TRAIN_PY, kept, other)
    assert merged == set_constants(TRAIN_PY, VAL=0.99, SLEEP=0.5)
    assert rebase_train_py(TRAIN_PY, kept, set_constants(TRAIN_PY, VAL=0.97)) is None
    # JITTER is the line right after VAL: touching hunks count as the same spot.
    assert rebase_train_py(TRAIN_PY, kept, set_constants(TRAIN_PY, JITTER={1: 0.1})) is None
    assert overlaps([(4, 5)], [(5, 5)]) and not overlaps([(4, 5)], [(7, 8)])


def test_proposers_declare_whether_they_speculate_fix_and_edit_files():
    from autoresearch.proposers import REGISTRY
    from autoresearch.proposers.command import CommandProposer
    from autoresearch.proposers.hparam import HparamProposer
    from autoresearch.proposers.llm import ChatProposer
    from autoresearch.proposers.optuna_backend import OptunaProposer

    declared = {cls.__name__: (cls.speculative, cls.can_fix, cls.edits_files)
                for cls in (HparamProposer, OptunaProposer, ChatProposer, CommandProposer)}
    assert declared == {"HparamProposer": (False, False, False), "OptunaProposer": (False, False, False),
                        "ChatProposer": (True, True, False), "CommandProposer": (True, True, True)}
    assert not ScriptedProposer([]).speculative and slow_proposer([]).speculative
    assert sorted(REGISTRY) == ["anthropic", "command", "hparam", "openai", "optuna"]


# ---------------------------------------------------------------------------
# Through the loop
# ---------------------------------------------------------------------------

STEPS = [
    {"VAL": 0.99},   # asked while the baseline trains: used; kept
    {"SLEEP": 0.01},  # asked on the base while 1 trains; 1 is kept: rebased onto it (0.99, equal: discarded)
    {"VAL": 0.98},   # asked on 1 while 2 trains; 2 is discarded: used; kept
    {"VAL": 0.97},   # asked on 1 while 3 trains; 3 is kept and changed VAL too: thrown away...
    {"VAL": 0.975},  # ...and asked again on 3: kept. No ask while 4 trains (--max-experiments 5)
]


def test_speculation_uses_rebases_or_discards_the_prepared_idea_and_records_how(lab):
    proposer = slow_proposer(list(STEPS))
    outcome = run(config(lab, max_experiments=5), proposer=proposer, view=RecordingView())

    assert outcome.state == "done" and not proposer.steps  # every step asked, none past the limit
    got = rows(lab)
    assert [r.status for r in got] == ["keep", "keep", "discard", "keep", "keep"]
    assert [r.speculation for r in got] == ["", "used", "rebased", "used", "discarded-asked-again"]
    assert [f"{r.val_bpb:.3f}" for r in got] == ["1.000", "0.990", "0.990", "0.980", "0.975"]
    assert [r.parent for r in got[1:]] == [got[0].commit, got[1].commit, got[1].commit, got[3].commit]
    # The rebased experiment trained both changes, on top of the kept one.
    diff = (lab / "results/t/runs/0002/diff.patch").read_text()
    changed = [line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert [line.split("#")[0].strip() for line in changed] == ["-SLEEP = 0.0", "+SLEEP = 0.01"]
    assert "VAL = 0.99" in git.Repo(lab).git.show(f"{got[2].commit}:train.py")

    # The speculative contexts say honestly what was still running, and worked in a scratch tree.
    spec_ctx = proposer.contexts[1]  # asked for 2 while 1 trained
    assert spec_ctx.experiment == 2 and spec_ctx.history[-1]["status"] == "running"
    assert spec_ctx.history[-1]["experiment"] == 1 and spec_ctx.history[-1]["description"] == "set VAL 0.99"
    assert "VAL = 1.0" in spec_ctx.train_py  # the best while 1 trained: the base
    assert Path(spec_ctx.workdir).parent == lab / ".autoresearch" / "scratch" / "t"
    assert proposer.contexts[4].history[-1]["status"] == "keep"  # the ask again: nothing running

    # The thrown-away idea's cost counts; the used ones are on their rows.
    assert RunState.load(lab / "results/t/run.json")["proposal_cost_usd"] == pytest.approx(0.01)
    assert sum(r.cost_usd for r in got) == pytest.approx(0.04)
    record = json.loads((lab / "results/t/runs/0004/proposal.json").read_text())
    assert record["discarded"]["description"] == "set VAL 0.97" and record["speculation"] == "discarded-asked-again"
    assert all(r.run_seconds is not None and r.run_seconds > 0 and r.gpu_idle_seconds >= 0 for r in got)
    assert len(worktrees(lab)) == 2 and not any((lab / ".autoresearch/scratch/t").iterdir())
    check_invariants(lab, rows=5)


def test_no_speculate_asks_only_after_the_last_experiment_was_decided(lab):
    proposer = slow_proposer([{"VAL": 0.99}, {"VAL": 0.98}])
    run(config(lab, max_experiments=3, speculate=False), proposer=proposer, view=RecordingView())
    assert [r.speculation for r in rows(lab)] == ["", "fresh", "fresh"]
    assert all(entry["status"] != "running" for ctx in proposer.contexts for entry in ctx.history)


def test_the_report_says_how_much_of_the_night_the_gpu_trained(lab):
    import io
    import re

    from autoresearch.report import run_report

    run(config(lab, max_experiments=3), proposer=slow_proposer([{"VAL": 0.99}, {"SLEEP": 0.01}]), view=RecordingView())
    out = io.StringIO()
    run_report(tags=["t"], root=lab, no_plot=True, out=out)
    got = rows(lab)
    share = sum(r.run_seconds for r in got) / sum(r.run_seconds + r.gpu_idle_seconds for r in got)
    # the stand-in's run.log names no device: "training", never "the GPU", and the run's span
    found = re.search(r"training ran \(device unknown\) (\d+\.\d)% of \d+(?:\.\d)? s ", out.getvalue())
    assert found and float(found.group(1)) == pytest.approx(100 * share, abs=0.06)


class ByRole(Proposer):
    """Answers by what is asked, not in which order: a fix, a speculative ask (something is
    running), or a fresh ask; each a queue of constants to set."""

    name, can_fix, speculative = "byrole", True, True

    def __init__(self, fix, speculative, fresh):
        self.queues = {"fix": list(fix), "speculative": list(speculative), "fresh": list(fresh)}
        self.asked = []

    def propose(self, ctx):
        from autoresearch.proposers import Proposal, Usage

        role = "fix" if ctx.feedback else (
            "speculative" if any(e.get("status") == "running" for e in ctx.history) else "fresh")
        self.asked.append((role, ctx.experiment))
        if not self.queues[role]:
            raise ProposerError(f"no {role} answer left")
        step = self.queues[role].pop(0)
        return Proposal(f"{role} {step}", f"{role} {step}", set_constants(ctx.train_py, **step),
                        usage=Usage(1, 1, 0.01))


def test_a_fix_attempt_runs_while_the_next_idea_is_prepared_and_the_fixed_keep_moves_the_best(lab):
    proposer = ByRole(fix=[{"MODE": "ok", "VAL": 0.99}], speculative=[{"MODE": "crash"}, {"VAL": 0.98}],
                      fresh=[{"VAL": 0.97}])
    run(config(lab, max_experiments=3), proposer=proposer, view=RecordingView())
    got = rows(lab)
    assert [(r.status, r.speculation) for r in got] == [("keep", ""), ("keep", "used"), ("keep", "discarded-asked-again")]
    assert [f"{r.val_bpb:.2f}" for r in got] == ["1.00", "0.99", "0.97"]
    assert ("fix", 1) in proposer.asked and ("speculative", 2) in proposer.asked
    assert (lab / "results/t/runs/0001/run.crash1.log").exists()


def test_max_cost_counts_thrown_away_ideas_and_stops_asking(lab):
    proposer = ByRole(fix=[], speculative=[{"VAL": 0.99}, {"VAL": 0.98}, {"VAL": 0.96}], fresh=[{"VAL": 0.97}])
    outcome = run(config(lab, max_cost=0.025), proposer=proposer, view=RecordingView())
    assert "--max-cost" in outcome.message
    got = rows(lab)
    # 1 used (0.01); 2 asked on the base while 1 trained, thrown away when 1 was kept (0.01);
    # asked again (0.01): 0.03 >= 0.025, nothing asked while 2 trains.
    assert [r.speculation for r in got] == ["", "used", "discarded-asked-again"]
    assert proposer.asked == [("speculative", 1), ("speculative", 2), ("fresh", 2)]
    spent = sum(r.cost_usd for r in got) + RunState.load(lab / "results/t/run.json")["proposal_cost_usd"]
    assert spent == pytest.approx(0.03)


def test_with_the_noise_rule_the_prepared_idea_waits_for_the_repeats_and_confirm(lab, tmp_repo):
    """Baseline repeats and a confirm are trials of the running experiment: the idea prepared
    meanwhile waits for its verdict."""
    train = lab / "train.py"
    train.write_text(set_constants(train.read_text(), JITTER={43: 0.001}))  # as test_keep_rule_loop's lab
    tmp_repo.index.add(["train.py"])
    tmp_repo.index.commit("noisy stand-in")
    proposer = ByRole(fix=[], speculative=[{"VAL": 0.99, "JITTER": {}}, {"SLEEP": 0.01}], fresh=[])
    run(RunConfig(repo_root=lab, tag="t", profile="cpu", time_budget=5, timeout=30, pause_seconds=0.01,
                  max_experiments=3, audit="off"), proposer=proposer, view=RecordingView())
    got = rows(lab)
    assert [(r.experiment, r.role, r.status) for r in got] == [
        (0, "baseline", "trial"), (0, "repeat", "keep"), (1, "candidate", "trial"), (1, "confirm", "keep"),
        (2, "candidate", "discard")]
    assert [r.speculation for r in got] == ["", "", "used", "", "rebased"]
    assert proposer.asked == [("speculative", 1), ("speculative", 2)]


def test_a_failed_speculative_ask_counts_as_a_failure_and_the_proposer_is_asked_again(lab):
    proposer = slow_proposer([ProposerError("API down"), {"VAL": 0.99}])
    run(config(lab, max_experiments=2), proposer=proposer, view=RecordingView())
    got = rows(lab)
    assert [r.speculation for r in got] == ["", "failed-asked-again"] and got[1].status == "keep"
    assert RunState.load(lab / "results/t/run.json")["failed_proposals"] == 1


def test_a_speculative_agent_that_writes_other_files_is_a_failed_proposal_and_training_is_untouched(
        lab, tmp_path, monkeypatch):
    """The command proposer works in the scratch worktree: its stray file fails that proposal,
    never the training that runs meanwhile."""
    from autoresearch.proposers import get_proposer
    from autoresearch.proposers.base import ProposerOptions

    flag, script, steps = tmp_path / "wrote", tmp_path / "agent.sh", tmp_path / "script.json"
    script.write_text(f"[ -e {flag} ] || {{ touch {flag}; echo junk > notes.txt; }}\n{AGENT}\n")  # the first time
    steps.write_text(json.dumps([{"VAL": 0.98}, {"VAL": 0.99}]))
    monkeypatch.setenv("STANDIN_SCRIPT", str(steps))
    agent = get_proposer("command", ProposerOptions(command=f"sh {script}", timeout=60))
    run(config(lab, max_experiments=2), proposer=agent, view=RecordingView())
    got = rows(lab)
    assert got[0].status == "keep" and got[0].reason == ""  # the baseline trained beside the agent
    record = json.loads((lab / "results/t/runs/0001/proposal.json").read_text())
    assert "changed files other than train.py: notes.txt" in record["failures"][0]["error"]
    assert got[1].speculation == "failed-asked-again" and got[1].description == "set VAL 0.99"
    assert [r.status for r in got] == ["keep", "keep"]


# ---------------------------------------------------------------------------
# Stopping: Ctrl-C and kill -9 stop the speculative agent too
# ---------------------------------------------------------------------------


def _agent_env(tmp_path: Path, steps: list) -> tuple[dict, Path]:
    script = tmp_path / "script.json"
    script.write_text(json.dumps(steps))
    return {**os.environ, "STANDIN_SCRIPT": str(script), "STANDIN_SLEEP": "4"}, script


def _sleeping_agent(script: Path):
    """The pid of the agent that took the script's last step (the sleep), once it runs: each
    agent writes its pid, then pops its step."""
    try:
        pid = int(Path(f"{script}.pid").read_text())
        left = json.loads(script.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if left == [] and psutil.pid_exists(pid) else None


@pytest.mark.slow
def test_ctrl_c_while_an_idea_is_asked_speculatively_stops_the_agent_and_loses_nothing(lab, tmp_path):
    env, script = _agent_env(tmp_path, [{"VAL": 0.99}, {"sleep": 120}])
    harness = Harness(lab, ("--proposer", "command", "--command", AGENT), env, tmp_path / "out")
    try:
        agent = wait_for(lambda: _sleeping_agent(script), what="the speculative agent")
        harness.signal(signal.SIGINT, group=True)  # a terminal's Ctrl-C: the whole group
        assert harness.wait(60) == 130
    finally:
        harness.kill_group()
    assert not psutil.pid_exists(agent) or psutil.Process(agent).status() == psutil.STATUS_ZOMBIE
    got = check_invariants(lab)
    assert [r.experiment for r in got] in ([0], [0, 1])
    assert len(worktrees(lab)) == 2


@pytest.mark.slow
def test_kill_9_while_an_idea_is_asked_speculatively_then_resume_stops_the_orphaned_agent(lab, tmp_path):
    env, script = _agent_env(tmp_path, [{"VAL": 0.99}, {"sleep": 120}])
    harness = Harness(lab, ("--proposer", "command", "--command", AGENT), env, tmp_path / "out")
    try:
        agent = wait_for(lambda: _sleeping_agent(script), what="the speculative agent")
        harness.kill_group()  # the agent lives on: it runs in a session of its own
        harness.wait(30)
        assert psutil.pid_exists(agent)
        script.write_text(json.dumps([{"VAL": 0.98}]))
        again = Harness(lab, ("--resume", "--max-experiments", "2", "--no-speculate", "--proposer", "command",
                              "--command", AGENT), env, tmp_path / "out", name="resume")
        assert again.wait(120) == 0, again.stderr()
    finally:
        harness.kill_group()
    assert not psutil.pid_exists(agent) or psutil.Process(agent).status() == psutil.STATUS_ZOMBIE
    got = check_invariants(lab, rows=2)
    # The baseline, then one change; a number the kill cut off (an idea training or asked) stays unused.
    assert got[0].experiment == 0 and got[1].experiment >= 1 and [r.status for r in got] == ["keep", "keep"]
    assert len(worktrees(lab)) == 2 and not any((lab / ".autoresearch/scratch/t").iterdir())


def test_training_gets_persistent_compile_caches_under_the_lab_cache(lab, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "CUDA_CACHE_PATH", "PYTORCH_ALLOC_CONF",
                 "PYTORCH_CUDA_ALLOC_CONF"):  # an earlier test's torch may have set one
        monkeypatch.delenv(name, raising=False)
    show = ("import os; print('inductor', os.environ['TORCHINDUCTOR_CACHE_DIR']); "
            "print('triton', os.environ['TRITON_CACHE_DIR']); print('cuda', os.environ['CUDA_CACHE_PATH']); "
            "print('alloc', os.environ['PYTORCH_ALLOC_CONF']); print('---'); print('val_bpb: 1.0')")
    # Unsandboxed: under the lab cache. (Sandboxed, the sandbox points them into the run's own
    # scratch folder, which also lives from one experiment to the next.)
    run(config(lab, max_experiments=1, training_command=[sys.executable, "-c", show], sandbox="off"),
        proposer=ScriptedProposer([]), view=RecordingView())
    log = (lab / "results/t/runs/0000/run.log").read_text()
    assert f"inductor {tmp_path / 'cache/compile/inductor'}" in log and f"triton {tmp_path / 'cache/compile/triton'}" in log
    assert f"cuda {tmp_path / 'cache/compile/cuda'}" in log and "alloc expandable_segments:True" in log
    assert (tmp_path / "cache/compile/inductor").is_dir()
