"""The command proposer: a real shell command edits train.py in the worktree."""

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

import autoresearch.proposers.command as command_module
from autoresearch.errors import AutoresearchError
from autoresearch.proposers import Context, ProposerError, ProposerOptions, get_proposer

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAIN_PY = "MATRIX_LR = 0.04  # Muon LR\nprint('---')\n"
PY = shlex.quote(sys.executable)


@pytest.fixture
def workdir(tmp_path) -> Path:
    wd = tmp_path / "worktree"
    wd.mkdir()
    (wd / "train.py").write_text(TRAIN_PY)
    return wd


def ctx(workdir, **kw) -> Context:
    defaults = dict(program="Lower val_bpb.", train_py=TRAIN_PY, lab_contract="TIME_BUDGET = 300", history=[],
                    workdir=workdir, experiment=3, profile="cpu")
    defaults.update(kw)
    return Context(**defaults)


def command(cmd: str, timeout: float = 30, model: str | None = None):
    return get_proposer("command", ProposerOptions(command=cmd, timeout=timeout, model=model))


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_shell_command_edit_and_description_file_become_the_proposal(workdir):
    cmd = ("sed -i 's/^MATRIX_LR = 0.04/MATRIX_LR = 0.05/' train.py && "
           "echo 'MATRIX_LR 0.04 -> 0.05' > \"$AUTORESEARCH_DESCRIPTION_FILE\" && "
           "echo 'HYPOTHESIS: a higher Muon LR trains faster'")
    proposal = command(cmd).propose(ctx(workdir))
    assert proposal.train_py == TRAIN_PY.replace("0.04", "0.05")
    assert (workdir / "train.py").read_text() == proposal.train_py
    assert proposal.description == "MATRIX_LR 0.04 -> 0.05"
    assert proposal.hypothesis == "a higher Muon LR trains faster"
    assert "Lower val_bpb." in proposal.prompt and "AUTORESEARCH_DESCRIPTION_FILE" in proposal.prompt
    assert proposal.usage.input_tokens == 0


def test_prompt_arrives_on_stdin_and_in_a_file_outside_the_worktree(workdir, tmp_path, monkeypatch):
    seen = tmp_path / "seen"
    script = (
        "import os, pathlib, sys\n"
        f"out = pathlib.Path({str(seen)!r})\n"
        "stdin = sys.stdin.read()\n"
        "f = os.environ['AUTORESEARCH_PROMPT_FILE']\n"
        "out.write_text('\\n'.join([str(stdin == pathlib.Path(f).read_text()), f,\n"
        "    os.environ['AUTORESEARCH_DESCRIPTION_FILE'], os.environ['AUTORESEARCH_EXPERIMENT'],\n"
        "    os.environ.get('AUTORESEARCH_MODEL', ''), os.getcwd(), os.environ.get('PASS_THROUGH', '')]))\n"
        "p = pathlib.Path('train.py'); p.write_text(p.read_text().replace('0.04', '0.03'))\n"
        "print('DESCRIPTION: MATRIX_LR 0.04 -> 0.03')\n"
    )
    (tmp_path / "agent.py").write_text(script)
    monkeypatch.setenv("PASS_THROUGH", "agent-key")  # the agent's own keys must reach it
    proposal = command(f"{PY} {tmp_path / 'agent.py'}", model="some-model").propose(ctx(workdir))
    same, prompt_file, description_file, experiment, model, cwd, passed = seen.read_text().split("\n")
    assert same == "True"
    assert not Path(prompt_file).is_relative_to(workdir) and not Path(description_file).is_relative_to(workdir)
    assert not Path(prompt_file).exists()  # cleaned up afterwards
    assert (experiment, model, passed) == ("3", "some-model", "agent-key")
    assert Path(cwd) == workdir
    assert sorted(p.name for p in workdir.iterdir()) == ["train.py"]
    assert proposal.description == "MATRIX_LR 0.04 -> 0.03"


def test_a_command_that_hangs_is_killed_with_its_whole_group(workdir, tmp_path):
    pids = tmp_path / "pids"
    cmd = f"sleep 300 & echo $! > {pids}; echo $$ >> {pids}; echo working; wait"
    start = time.monotonic()
    with pytest.raises(ProposerError) as err:
        command(cmd, timeout=1).propose(ctx(workdir))
    assert time.monotonic() - start < 15
    assert str(err.value).startswith("command timed out after 1s (process group killed)")
    assert "working" in str(err.value)
    child, shell = (int(x) for x in pids.read_text().split())
    deadline = time.monotonic() + 5
    while not (gone(child) and gone(shell)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(child) and gone(shell)


def test_a_command_that_ignores_sigterm_is_killed(workdir, tmp_path, monkeypatch):
    monkeypatch.setattr(command_module, "KILL_GRACE", 0.5)
    pid_file = tmp_path / "pid"
    cmd = f"trap '' TERM; echo $$ > {pid_file}; while true; do sleep 0.1; done"
    with pytest.raises(ProposerError, match="timed out"):
        command(cmd, timeout=1).propose(ctx(workdir))
    assert gone(int(pid_file.read_text()))


def test_a_process_the_agent_detached_with_setsid_does_not_outlive_it(workdir, tmp_path):
    pid_file = tmp_path / "pid"
    daemon = f"import os, time; os.setsid(); open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(300)"
    cmd = (f"{PY} -c {shlex.quote(daemon)} & "
           f"while [ ! -s {pid_file} ]; do sleep 0.05; done; "
           "sed -i 's/0.04/0.05/' train.py")
    proposal = command(cmd).propose(ctx(workdir))
    assert "0.05" in proposal.train_py
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert gone(pid)
    finally:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)


class Interrupted(BaseException):
    """Stands in for KeyboardInterrupt (the loop turns SIGTERM into one) without upsetting pytest."""


def test_interrupting_the_harness_kills_the_agent_group(workdir, tmp_path, monkeypatch):
    monkeypatch.setattr(command_module, "KILL_GRACE", 0.5)
    pids = tmp_path / "pids"
    cmd = f"sleep 300 & echo $! > {pids}; echo $$ >> {pids}; wait"

    def interrupt(signum, frame):
        raise Interrupted()

    previous = signal.signal(signal.SIGUSR1, interrupt)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGUSR1))
    timer.start()
    try:
        with pytest.raises(Interrupted):
            command(cmd, timeout=60).propose(ctx(workdir))
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)
    child, shell = (int(x) for x in pids.read_text().split())
    deadline = time.monotonic() + 5
    while not (gone(child) and gone(shell)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(child) and gone(shell)


def test_non_zero_exit_is_an_error_with_the_output_tail(workdir):
    cmd = "echo 'editing...'; sed -i 's/0.04/0.05/' train.py; echo 'model refused' >&2; exit 3"
    with pytest.raises(ProposerError) as err:
        command(cmd).propose(ctx(workdir))
    msg = str(err.value)
    assert msg.startswith("command exited with status 3")
    assert "editing..." in msg and "model refused" in msg
    assert "model refused" in err.value.raw


def test_a_command_that_changes_nothing_is_an_error(workdir):
    with pytest.raises(ProposerError, match="command left train.py unchanged; output tail:\nI looked around"):
        command("echo 'I looked around'").propose(ctx(workdir))


def test_a_command_that_deletes_train_py_is_an_error(workdir):
    with pytest.raises(ProposerError, match="removed train.py"):
        command("rm train.py").propose(ctx(workdir))


def test_long_output_is_kept_to_its_tail(workdir):
    cmd = f"{PY} -c \"print('x' * 1_000_000); print('the end')\"; exit 1"
    with pytest.raises(ProposerError) as err:
        command(cmd).propose(ctx(workdir))
    assert len(str(err.value)) < 5000 and str(err.value).endswith("the end")


def test_train_py_is_reset_to_the_context_before_the_agent_runs(workdir):
    (workdir / "train.py").write_text("stale = True\n")
    crashed = TRAIN_PY.replace("0.04", "9.9")
    proposal = command("sed -i 's/9.9/0.9/' train.py").propose(ctx(workdir, train_py=crashed, feedback="diverged"))
    assert proposal.train_py == TRAIN_PY.replace("0.04", "0.9")
    assert proposal.description == "edit by external command"


def test_missing_command_is_a_boundary_error():
    with pytest.raises(AutoresearchError, match="--command"):
        get_proposer("command", ProposerOptions())


# ---------------------------------------------------------------------------
# Agents' tokens and cost, from stand-in `claude` / `codex` CLIs (tests/fake_agent_cli.py)
# ---------------------------------------------------------------------------

FAKE_CLI = REPO_ROOT / "tests" / "fake_agent_cli.py"
CLAUDE_COST = 0.1841235  # what the fake Claude's ok result reports


def fake_cli(monkeypatch, agent: str, scenario: str = "ok") -> str:
    monkeypatch.setenv("FAKE_AGENT", agent)
    monkeypatch.setenv("FAKE_AGENT_SCENARIO", scenario)
    return f"{PY} {FAKE_CLI}"


def test_claude_json_result_gives_the_proposal_its_cost_tokens_and_fields(workdir, monkeypatch):
    proposal = command(fake_cli(monkeypatch, "claude")).propose(ctx(workdir))
    assert proposal.usage.cost_usd == pytest.approx(CLAUDE_COST)
    assert proposal.usage.input_tokens == 14 + 18342 + 96120 and proposal.usage.cached_input_tokens == 96120
    assert proposal.usage.output_tokens == 1873
    assert proposal.description == "MATRIX_LR 0.04 -> 0.045"
    assert proposal.hypothesis == "a slightly higher Muon LR converges faster within the 5-minute budget"
    assert '"total_cost_usd": 0.1841235' in proposal.raw  # the report itself is kept in the record


@pytest.mark.parametrize("scenario, cost, words", [("error", 0.4123, "error_max_turns"), ("api_error", 0.0213, "an error result")])
def test_a_failed_claude_run_carries_its_cost_in_the_error(scenario, cost, words, workdir, monkeypatch):
    with pytest.raises(ProposerError, match="command exited with status 1") as err:
        command(fake_cli(monkeypatch, "claude", scenario)).propose(ctx(workdir))
    assert err.value.usage.cost_usd == pytest.approx(cost)
    assert err.value.usage.output_tokens == 1873 and words in err.value.usage.note


def test_codex_events_are_priced_by_the_model_and_give_the_fields(workdir, monkeypatch):
    proposal = command(fake_cli(monkeypatch, "codex"), model="gpt-5.3-codex").propose(ctx(workdir))
    usage = proposal.usage
    assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens) == (48211, 40960, 2210)
    assert usage.cost_usd == pytest.approx(((48211 - 40960) * 1.75 + 40960 * 0.175 + 2210 * 14) / 1e6)
    assert proposal.description == "MATRIX_LR 0.04 -> 0.045"  # the agent message, not a command's output
    assert proposal.hypothesis.startswith("a slightly higher Muon LR")


def test_codex_without_a_model_records_tokens_at_cost_0_and_says_so(workdir, monkeypatch):
    proposal = command(fake_cli(monkeypatch, "codex")).propose(ctx(workdir))
    assert proposal.usage.input_tokens == 48211 and proposal.usage.cost_usd == 0
    assert "pass --model" in proposal.usage.note


def test_a_failed_codex_turn_is_an_error_whose_usage_says_the_cost_is_unknown(workdir, monkeypatch):
    with pytest.raises(ProposerError, match="status 1") as err:
        command(fake_cli(monkeypatch, "codex", "error"), model="gpt-5.5").propose(ctx(workdir))
    assert err.value.usage.cost_usd == 0 and "stream disconnected" in err.value.usage.note
    assert "turn.failed" in err.value.raw


@pytest.mark.parametrize("agent", ["claude", "codex"])
def test_a_timed_out_agent_reports_no_usage_and_the_error_says_so(agent, workdir, monkeypatch):
    monkeypatch.setattr(command_module, "KILL_GRACE", 0.5)
    with pytest.raises(ProposerError, match="timed out") as err:
        command(fake_cli(monkeypatch, agent, "hang"), timeout=2, model="gpt-5.5").propose(ctx(workdir))
    assert err.value.usage.cost_usd == 0 and err.value.usage.input_tokens == 0
    expected = "stopped or crashed" if agent == "codex" else "no token usage"
    assert expected in err.value.usage.note


def test_garbage_output_still_gives_a_proposal_with_its_plain_lines(workdir, monkeypatch):
    proposal = command(fake_cli(monkeypatch, "claude", "garbage")).propose(ctx(workdir))
    assert proposal.description == "survived the garbage" and proposal.usage.cost_usd == 0
    assert "no token usage" in proposal.usage.note


# ---------------------------------------------------------------------------
# harness/ scripts, run against the stand-in CLIs put on PATH as `claude` and `codex`
# ---------------------------------------------------------------------------

CLAUDE_ARGS = ["-p", "--output-format", "json", "--no-session-persistence", "--permission-mode", "dontAsk",
               "--tools", "Read,Edit", "--max-turns", "30", "--allowedTools", "Read", "Edit(./train.py)"]
CODEX_ARGS = ["exec", "--json", "--sandbox", "workspace-write", "--skip-git-repo-check", "--ephemeral",
              "--color", "never"]


def on_path(agent: str, tmp_path, monkeypatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / agent
    stand_in.write_text(f'#!/bin/sh\nFAKE_AGENT={agent} exec {PY} {FAKE_CLI} "$@"\n')
    stand_in.chmod(0o755)
    log = tmp_path / "log.json"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_AGENT_LOG", str(log))
    monkeypatch.setenv("FAKE_AGENT_SCENARIO", "ok")
    return log


def test_claude_sh_calls_claude_with_exactly_these_flags(workdir, tmp_path, monkeypatch):
    log = on_path("claude", tmp_path, monkeypatch)
    monkeypatch.setenv("CLAUDE_EXTRA_ARGS", "--max-budget-usd 2")
    proposal = command(str(REPO_ROOT / "harness" / "claude.sh"), model="claude-opus-4-6").propose(ctx(workdir))
    seen = json.loads(log.read_text())
    assert seen["args"] == CLAUDE_ARGS + ["--model", "claude-opus-4-6", "--max-budget-usd", "2"]
    assert seen["stdin"] == proposal.prompt
    assert proposal.description == "MATRIX_LR 0.04 -> 0.045"
    assert proposal.usage.cost_usd == pytest.approx(CLAUDE_COST)


def test_codex_sh_calls_codex_with_exactly_these_flags(workdir, tmp_path, monkeypatch):
    log = on_path("codex", tmp_path, monkeypatch)
    proposal = command(str(REPO_ROOT / "harness" / "codex.sh"), model="gpt-5.5").propose(ctx(workdir))
    seen = json.loads(log.read_text())
    assert seen["args"] == CODEX_ARGS + ["--model", "gpt-5.5", "-"]
    assert seen["stdin"] == proposal.prompt
    assert proposal.hypothesis == "a slightly higher Muon LR converges faster within the 5-minute budget"
    assert proposal.usage.cost_usd == pytest.approx(((48211 - 40960) * 5 + 40960 * 0.5 + 2210 * 30) / 1e6)


@pytest.mark.parametrize("agent, expected", [("claude", CLAUDE_ARGS), ("codex", CODEX_ARGS + ["-"])])
def test_harness_scripts_pass_no_model_flag_without_model(agent, expected, workdir, tmp_path, monkeypatch):
    log = on_path(agent, tmp_path, monkeypatch)
    command(str(REPO_ROOT / "harness" / f"{agent}.sh")).propose(ctx(workdir))
    assert json.loads(log.read_text())["args"] == expected


def test_claude_sh_may_edit_exactly_a_declared_targets_edit_files(tmp_path, monkeypatch):
    log = on_path("claude", tmp_path, monkeypatch)
    wd = tmp_path / "bot"
    (wd / "lib").mkdir(parents=True)
    files = {"bot.py": "RATE = 0.04\n", "lib/moves.py": "DEPTH = 3\n"}
    for name, text in files.items():
        (wd / name).write_text(text)
    proposal = command(str(REPO_ROOT / "harness" / "claude.sh")).propose(
        ctx(wd, train_py="", files=files, lab_contract=""))
    args = json.loads(log.read_text())["args"]
    assert args[args.index("--allowedTools"):] == ["--allowedTools", "Read", "Edit(./bot.py)", "Edit(./lib/moves.py)"]
    assert proposal.files["bot.py"] == "RATE = 0.045\n"


def test_harness_script_refuses_to_run_outside_autoresearch():
    result = subprocess.run(["bash", str(REPO_ROOT / "harness" / "claude.sh")], capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")})
    assert result.returncode != 0 and "autoresearch run --proposer command" in result.stderr
