"""Proposers on a declared target: several edit files, blocks naming their file, the target in
the prompt, hparam/optuna over every edit file's constants, a command agent editing in place."""

import json
import shlex
import sys
from pathlib import Path

import optuna
import pytest
from fake_llm_server import FakeLLMServer, reply

from autoresearch.edits import EditError, apply_reply_files
from autoresearch.proposers import Context, ProposerOptions, get_proposer
from autoresearch.proposers.base import TargetBrief
from autoresearch.proposers.prompt import build_agent_prompt, build_messages
from autoresearch.target import Target, brief

KEY = "sk-test-0123456789abcdef"
SIM = "NEIGHBOUR_TABLE = 0  # precompute neighbours\n\n\ndef step(b):\n    return b\n"
UTIL = "CHUNK = 8  # rows per chunk\nRATE = 0.5  # a float\n"
FILES = {"sim.py": SIM, "util/chunks.py": UTIL}
TARGET = Target(edit=("sim.py", "util/chunks.py"), run="python bench.py", metric="generations_per_s",
                direction="max", timeout=60, require=("correct: True",), context=("bench.py",),
                budget="about 5 s per run")
HISTORY = [
    {"experiment": 0, "commit": "abc1234", "generations_per_s": 61.5, "status": "keep", "description": "baseline"},
    {"experiment": 1, "commit": "def5678", "generations_per_s": 58.0, "status": "discard", "description": "CHUNK 8 -> 9"},
]


def make_ctx(workdir: Path, **kw) -> Context:
    defaults = dict(program="Make it fast.", train_py="", lab_contract="", history=list(HISTORY), workdir=workdir,
                    experiment=2, profile="cpu", files=dict(FILES),
                    context_files={"bench.py": "EXPECTED = {0: 2776}\n"}, target=brief(TARGET),
                    best={"commit": "abc1234", "experiment": 0, "generations_per_s": 61.5, "trials": 1})
    defaults.update(kw)
    return Context(**defaults)


def block(path: str, old: str, new: str) -> str:
    return f"{path}\n```python\n<<<<<<< SEARCH\n{old}\n=======\n{new}\n>>>>>>> REPLACE\n```\n"


# ---------------------------------------------------------------------------
# Edits across files
# ---------------------------------------------------------------------------


def test_blocks_name_their_files_and_may_touch_several():
    text = ("HYPOTHESIS: both\nDESCRIPTION: two files\n\n" + block("sim.py", "NEIGHBOUR_TABLE = 0  # precompute neighbours",
            "NEIGHBOUR_TABLE = 1  # precompute neighbours") + "and\n\n" + block("./util/chunks.py", "CHUNK = 8  # rows per chunk",
            "CHUNK = 16  # rows per chunk"))
    reply_, new = apply_reply_files(FILES, text.replace("\n", "\r\n"))
    assert new["sim.py"].startswith("NEIGHBOUR_TABLE = 1") and new["util/chunks.py"].startswith("CHUNK = 16")
    assert reply_.description == "two files"


def test_a_block_for_a_fixed_file_is_refused_naming_the_edit_files():
    text = block("bench.py", "EXPECTED = {0: 2776}", "EXPECTED = {0: 1}")
    with pytest.raises(EditError) as err:
        apply_reply_files(FILES, text)
    assert "`bench.py` is not sim.py or util/chunks.py" in str(err.value)
    assert "Only sim.py, util/chunks.py may be edited" in str(err.value)


def test_an_unnamed_block_needs_a_file_when_there_are_several_and_not_when_there_is_one():
    text = "<<<<<<< SEARCH\nCHUNK = 8  # rows per chunk\n=======\nCHUNK = 4  # rows per chunk\n>>>>>>> REPLACE\n"
    with pytest.raises(EditError, match="edits no file"):
        apply_reply_files(FILES, text)
    _, new = apply_reply_files({"util/chunks.py": UTIL}, text)
    assert new["util/chunks.py"].startswith("CHUNK = 4")


def test_errors_name_the_file_and_only_python_files_are_syntax_checked():
    with pytest.raises(EditError, match="was not found in util/chunks.py"):
        apply_reply_files(FILES, block("util/chunks.py", "CHUNK = 9", "CHUNK = 4"))
    with pytest.raises(EditError, match="After the edit sim.py is not valid Python"):
        apply_reply_files(FILES, block("sim.py", "    return b", "    return b +"))
    _, new = apply_reply_files({"rules.txt": "B3/S23\n"}, block("rules.txt", "B3/S23", "B36/S23 (("))
    assert new["rules.txt"] == "B36/S23 ((\n"
    with pytest.raises(EditError, match="leaves sim.py and util/chunks.py unchanged"):
        apply_reply_files(FILES, block("sim.py", "    return b", "    return b"))


# ---------------------------------------------------------------------------
# The prompt
# ---------------------------------------------------------------------------


def test_the_prompt_states_the_target_in_its_own_terms(tmp_path):
    system, user = build_messages(make_ctx(tmp_path))
    text = system + user
    for words in ("generations_per_s (higher is better)", "`python bench.py`", "killed after 60 s",
                  "Budget: about 5 s per run", "a missing `correct: True` line", "## Current sim.py (editable)",
                  "## Current util/chunks.py (editable)", "## bench.py (fixed, for reference)",
                  "| exp | commit | generations_per_s |", "generations_per_s: higher is better.",
                  "Baseline generations_per_s 61.500000", "to raise generations_per_s",
                  "Put the path of the file a block edits on the line before its fence"):
        assert words in text, words
    assert "val_bpb" not in text and "train.py" not in text
    agent = build_agent_prompt(make_ctx(tmp_path))
    assert "edit the editable files in the current directory" in agent and "val_bpb" not in agent


def test_a_lab_context_keeps_the_lab_prompt(tmp_path):
    ctx = Context(program="", train_py="A = 1\n", lab_contract="", history=[], workdir=tmp_path, experiment=1,
                  profile="cpu")
    assert ctx.target == TargetBrief() and ctx.files == {"train.py": "A = 1\n"}
    system, user = build_messages(ctx)
    assert "val_bpb" in system and "Current train.py (the file to edit)" in user


# ---------------------------------------------------------------------------
# The backends
# ---------------------------------------------------------------------------


def test_an_llm_reply_editing_two_files_becomes_one_proposal(tmp_path):
    text = ("HYPOTHESIS: a table and bigger chunks are faster\nDESCRIPTION: table + chunks\n\n"
            + block("sim.py", "NEIGHBOUR_TABLE = 0  # precompute neighbours", "NEIGHBOUR_TABLE = 1  # precompute neighbours")
            + block("util/chunks.py", "CHUNK = 8  # rows per chunk", "CHUNK = 32  # rows per chunk"))
    with FakeLLMServer() as server:
        server.push(reply(text))
        options = ProposerOptions(api_key=KEY, base_url=server.openai_url, model="gpt-5.5", api_retries=0, timeout=10)
        proposal = get_proposer("openai", options).propose(make_ctx(tmp_path))
        sent = json.dumps(server.requests[0].body)
    assert set(proposal.files) == {"sim.py", "util/chunks.py"} and proposal.train_py == ""
    assert "CHUNK = 32" in proposal.files["util/chunks.py"] and proposal.description == "table + chunks"
    assert "generations_per_s" in sent


def test_hparam_searches_the_constants_of_every_edit_file(tmp_path):
    seen = {}
    for seed in range(12):
        p = get_proposer("hparam", ProposerOptions(seed=seed)).propose(make_ctx(tmp_path))
        (path, text), = p.files.items()
        seen.setdefault(path, p.description)
        assert text != FILES[path] and "raise generations_per_s" in p.hypothesis
    assert set(seen) == {"sim.py", "util/chunks.py"}, seen


def test_optuna_maximises_a_max_target_over_both_files(tmp_path):
    run_dir = tmp_path / "life"
    first = get_proposer("optuna", ProposerOptions(run_dir=run_dir)).propose(make_ctx(tmp_path, history=HISTORY[:1], experiment=1))
    assert first.files and set(first.files) <= set(FILES) and "raise generations_per_s" in first.hypothesis
    rows = HISTORY[:1] + [{"experiment": 1, "status": "keep", "generations_per_s": 70.0, "description": first.description}]
    get_proposer("optuna", ProposerOptions(run_dir=run_dir)).propose(make_ctx(tmp_path, history=rows, experiment=2))
    study = optuna.load_study(study_name="life", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert sorted(t.value for t in study.get_trials() if t.value is not None) == [61.5, 70.0]
    assert {d["path"] for d in study.user_attrs["space"]} == {"sim.py", "util/chunks.py"}


def test_a_command_agent_edits_the_edit_files_in_place(tmp_path):
    wd = tmp_path / "worktree"
    (wd / "util").mkdir(parents=True)
    (wd / "sim.py").write_text("stale\n")  # the agent gets the context's text, not what was left there
    py = shlex.quote(sys.executable)
    cmd = (f"{py} -c \"import pathlib; p = pathlib.Path('util/chunks.py'); "
           f"p.write_text(p.read_text().replace('CHUNK = 8', 'CHUNK = 12'))\" && echo 'DESCRIPTION: CHUNK 8 -> 12'")
    proposal = get_proposer("command", ProposerOptions(command=cmd, timeout=30)).propose(make_ctx(wd))
    assert proposal.files == {"util/chunks.py": UTIL.replace("CHUNK = 8", "CHUNK = 12")}
    assert (wd / "sim.py").read_text() == SIM and proposal.description == "CHUNK 8 -> 12"
    assert "generations_per_s" in proposal.prompt
