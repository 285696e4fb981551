"""The no-LLM proposer: seeded, profile-aware, never repeats, always applies."""

import ast
import difflib
from pathlib import Path

import pytest

from autoresearch.proposers import Context, ProposerError, ProposerOptions, get_proposer
from autoresearch.proposers.hparam import candidates, edit_for, find_params, tried_pairs

REPO_ROOT = Path(__file__).resolve().parent.parent

TRAIN_PY = '''\
"""train.py (test copy): the hyperparameter layout the real one uses."""

import os

from prepare import MAX_SEQ_LEN, TIME_BUDGET

PROFILE = os.environ.get("AUTORESEARCH_PROFILE", "cpu")

# ---------------------------------------------------------------------------
# Hyperparameters
# ---------------------------------------------------------------------------

ASPECT_RATIO = 64  # model_dim = depth * ASPECT_RATIO
HEAD_DIM = 128  # target head dimension for attention
WINDOW_PATTERN = "SSSL"  # not a number: never mutated
TOTAL_BATCH_SIZE = 2**19  # ~524K tokens per optimizer step
EMBEDDING_LR = 0.6  # Adam LR for token embeddings
MATRIX_LR = 0.04  # Muon LR for 2-D weights
ADAM_BETAS = (0.8, 0.95)  # a tuple: never mutated
WARMUP_RATIO = 0.0  # fraction of the budget spent warming up
WARMDOWN_RATIO = 0.5  # fraction of the budget spent decaying
SEED = 42  # not a hyperparameter to climb
H100_BF16_PEAK_FLOPS = 989.5e12  # only feeds the MFU figure
USE_COMPILE = True  # a bool: never mutated

if PROFILE == "gpu":
    DEPTH = 8  # transformer layers
    DEVICE_BATCH_SIZE = 128  # per-device batch (reduce if OOM)
    EVAL_BATCH = 32  # same name in both branches
else:
    DEPTH = 4  # transformer layers
    DEVICE_BATCH_SIZE = 16  # per-device batch (reduce if OOM)
    EVAL_BATCH = 32  # same name in both branches


def main():
    lr = MATRIX_LR * 2  # not module level: never mutated
    print(lr, DEPTH)
'''


def ctx(tmp_path, history=(), profile="cpu", experiment=1, train_py=TRAIN_PY, feedback=None) -> Context:
    return Context(program="", train_py=train_py, lab_contract="", history=list(history), workdir=tmp_path,
                   experiment=experiment, profile=profile, feedback=feedback)


def hparam(seed=0):
    return get_proposer("hparam", ProposerOptions(seed=seed))


def changed_lines(old: str, new: str) -> list[tuple[str, str]]:
    a, b = old.split("\n"), new.split("\n")
    sm = difflib.SequenceMatcher(None, a, b)
    return [(a[i1], b[j1]) for tag, i1, i2, j1, j2 in sm.get_opcodes() if tag != "equal"]


def test_finds_numeric_upper_case_params_of_the_active_profile_only():
    cpu = {p.name: p.value for p in find_params(TRAIN_PY, "cpu")}
    gpu = {p.name: p.value for p in find_params(TRAIN_PY, "gpu")}
    assert cpu["DEPTH"] == 4 and gpu["DEPTH"] == 8
    assert cpu["DEVICE_BATCH_SIZE"] == 16 and gpu["DEVICE_BATCH_SIZE"] == 128
    assert cpu["TOTAL_BATCH_SIZE"] == 19  # the exponent of 2**19
    for absent in ("WINDOW_PATTERN", "ADAM_BETAS", "SEED", "H100_BF16_PEAK_FLOPS", "USE_COMPILE", "PROFILE", "lr"):
        assert absent not in cpu


def test_same_seed_and_history_give_the_same_proposal(tmp_path):
    a = hparam(seed=7).propose(ctx(tmp_path))
    b = hparam(seed=7).propose(ctx(tmp_path))
    assert (a.description, a.train_py) == (b.description, b.train_py)
    seen = {hparam(seed=s).propose(ctx(tmp_path)).description for s in range(12)}
    assert len(seen) > 3  # the seed matters


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_edit_changes_one_line_outside_the_other_profile_and_still_parses(tmp_path, profile):
    other_block = {"cpu": "    DEPTH = 8  # transformer layers", "gpu": "    DEPTH = 4  # transformer layers"}[profile]
    for seed in range(40):
        proposal = hparam(seed).propose(ctx(tmp_path, profile=profile))
        ast.parse(proposal.train_py)
        (old_line, new_line), = changed_lines(TRAIN_PY, proposal.train_py)
        name = proposal.description.split()[0]
        assert old_line.split("=")[0].strip() == name == new_line.split("=")[0].strip()
        assert other_block in proposal.train_py
        if name in ("DEPTH", "DEVICE_BATCH_SIZE", "EVAL_BATCH"):
            active = {p.name: p for p in find_params(TRAIN_PY, profile)}[name]
            assert TRAIN_PY.split("\n")[active.lineno - 1] == old_line


def test_description_and_hypothesis_name_the_change(tmp_path):
    proposal = hparam(3).propose(ctx(tmp_path))
    name, old, arrow, new = proposal.description.split()
    assert arrow == "->" and old != new
    assert name in proposal.hypothesis and new in proposal.hypothesis
    assert f"{name} = {new}" in proposal.train_py
    assert proposal.usage.input_tokens == 0 and proposal.attempts == 1


def test_comment_column_is_kept_when_the_literal_grows():
    text = "MATRIX_LR = 0.04      # Muon LR\n"
    (p,) = find_params(text, "cpu")
    (up,) = [c for c in candidates(p) if c.new == 0.056]
    block = edit_for(text, up)
    assert block.replace == "MATRIX_LR = 0.056     # Muon LR\n"


def test_value_rules_keep_things_sane():
    text = (
        "WARMDOWN_RATIO = 0.5  # fraction\nFINAL_LR_FRAC = 0.0  # fraction\nDEPTH = 1  # layers\n"
        "N_HEAD = 6  # heads\nTOTAL_BATCH_SIZE = 2**1  # tokens\nMODEL_DIM = 768  # width\nASPECT_RATIO = 64  # not a fraction\n"
    )
    new = {p.name: sorted(c.new for c in candidates(p)) for p in find_params(text, "cpu")}
    assert new["WARMDOWN_RATIO"] == [0.25, 0.35, 0.7, 1.0]  # <= 1
    assert new["FINAL_LR_FRAC"] == [0.01, 0.05, 0.1]
    assert new["DEPTH"] == [2]  # never below 1
    assert new["N_HEAD"] == [5, 7]
    assert new["TOTAL_BATCH_SIZE"] == [2]  # 2**1 -> 2**2 only
    assert new["MODEL_DIM"] == [576, 960]
    assert new["ASPECT_RATIO"] == [32, 128]  # RATIO > 1 is not bounded by 1


def test_never_repeats_a_pair_already_in_history(tmp_path):
    history = [{"experiment": 0, "status": "keep", "description": "baseline"}]
    seen = set()
    for n in range(1, 15):
        proposal = hparam(5).propose(ctx(tmp_path, history=history, experiment=n))
        pair = tried_pairs([{"description": proposal.description}])
        assert not pair & tried_pairs(history)
        assert not pair & seen
        seen |= pair
        history.append({"experiment": n, "status": "discard", "description": proposal.description})


def test_pairs_from_history_are_read_from_descriptions():
    rows = [{"description": "MATRIX_LR 0.04 -> 0.056"}, {"description": "TOTAL_BATCH_SIZE 2**19 -> 2**18"},
            {"description": "use SwiGLU instead of ReLU^2"}, {"description": None}]
    assert tried_pairs(rows) == {("MATRIX_LR", 0.056), ("TOTAL_BATCH_SIZE", float(2**18))}


def test_exhausted_neighbourhood_is_a_proposer_error(tmp_path):
    text = "DEPTH = 1  # layers\n"
    history = [{"status": "discard", "description": "DEPTH 1 -> 2"}]
    with pytest.raises(ProposerError, match="already tried"):
        hparam().propose(ctx(tmp_path, history=history, train_py=text))


def test_hill_climbs_in_the_direction_of_the_last_kept_change(tmp_path):
    text = TRAIN_PY.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.056")
    kept = [{"experiment": 0, "status": "keep", "description": "baseline"},
            {"experiment": 1, "status": "keep", "description": "MATRIX_LR 0.04 -> 0.056"}]
    unrelated = [{"experiment": 0, "status": "keep", "description": "baseline"},
                 {"experiment": 1, "status": "keep", "description": "use SwiGLU"}]

    def upward(history):
        descriptions = [hparam(seed).propose(ctx(tmp_path, history=history, experiment=2, train_py=text)).description
                        for seed in range(40)]
        return sum(d.startswith("MATRIX_LR 0.056 -> ") and float(d.split()[-1]) > 0.056 for d in descriptions)

    assert 12 <= upward(kept) <= 36  # about half the time, never always
    assert upward(unrelated) <= 8  # one parameter of ten, one direction of two


def test_fix_attempt_is_refused(tmp_path):
    proposer = hparam()
    assert proposer.can_fix is False
    with pytest.raises(ProposerError, match="cannot fix a crash"):
        proposer.propose(ctx(tmp_path, feedback="OOM"))


def test_train_py_without_hyperparameters_is_a_proposer_error(tmp_path):
    with pytest.raises(ProposerError, match="no UPPER_CASE numeric"):
        hparam().propose(ctx(tmp_path, train_py="print('hi')\n"))


def test_works_on_the_repository_train_py(tmp_path):
    path = REPO_ROOT / "train.py"
    if not path.exists():
        pytest.skip("train.py is not in the repository yet")
    text = path.read_text()
    for profile in ("cpu", "gpu"):
        assert find_params(text, profile), profile
        for seed in range(5):
            proposal = hparam(seed).propose(ctx(tmp_path, profile=profile, train_py=text))
            ast.parse(proposal.train_py)
            assert len(changed_lines(text, proposal.train_py)) == 1
