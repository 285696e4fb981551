"""The model handoff (prepare.handoff_model) and the audit (autoresearch.audit), for real:
train.py trains, exports its model, and a fresh process with the fixed prepare.py re-evaluates it."""

import os
import subprocess
import sys
import time

import pytest
import torch

from autoresearch.audit import AUDIT_TOLERANCE, CAUSAL_TOLERANCE, audit_model, matches
from autoresearch.summary import parse_summary
from conftest import REPO_ROOT, lab_env
from test_prepare import load_lab
from test_train import TRAIN_PY, model_section

PREPARE_PY = (REPO_ROOT / "prepare.py").read_text()


def train_with_handoff(tmp_path, cache, train_py=TRAIN_PY, budget=3):
    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "train.py").write_text(train_py)
    (lab / "prepare.py").write_text(PREPARE_PY)
    handoff = tmp_path / "run" / "model.pt2"
    env = {**os.environ, **lab_env(cache), "AUTORESEARCH_TIME_BUDGET": str(budget), "AUTORESEARCH_HANDOFF": str(handoff)}
    done = subprocess.run([sys.executable, "train.py"], cwd=lab, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return parse_summary(done.stdout), handoff


@pytest.mark.slow
def test_audit_of_the_real_train_py_matches_its_printed_val_bpb(tmp_path, lab_cache):
    summary, handoff = train_with_handoff(tmp_path, lab_cache)
    assert handoff.is_file()
    result = audit_model(PREPARE_PY, handoff, lab_env(lab_cache))
    assert result.error == "", result.error
    assert matches(summary["val_bpb"], result.val_bpb)
    assert abs(summary["val_bpb"] - result.val_bpb) <= 5e-7 + 1e-9  # fp32 on CPU: only the printed rounding
    assert result.heldout_bpb > 0 and result.heldout_bpb != result.val_bpb
    assert result.causal and result.causal_gap == 0.0


@pytest.mark.slow
def test_a_train_py_that_prints_a_better_number_than_its_model_earns_is_caught(tmp_path, lab_cache):
    cheat = TRAIN_PY.replace("    val_bpb = evaluate_bpb(model, tokenizer, eval_batch)",
                             "    val_bpb = 0.999 * evaluate_bpb(model, tokenizer, eval_batch)")
    assert cheat != TRAIN_PY
    summary, handoff = train_with_handoff(tmp_path, lab_cache, cheat)
    result = audit_model(PREPARE_PY, handoff, lab_env(lab_cache), splits=("val",))
    assert result.error == "" and result.heldout_bpb is None
    assert not matches(summary["val_bpb"], result.val_bpb)


def test_without_the_variable_handoff_does_nothing(monkeypatch, lab_cache, tmp_path):
    lab = load_lab(monkeypatch, **lab_env(lab_cache))
    assert lab.handoff_model(torch.nn.Linear(2, 2), 4) is None
    assert list(tmp_path.iterdir()) == []


class Peeking(torch.nn.Module):
    """A model that reads the token it is asked to predict (x[t+1]): near-zero loss, not causal."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.scale = torch.nn.Parameter(torch.tensor(30.0))

    def forward(self, idx, targets=None, reduction="mean"):
        nxt = torch.cat([idx[:, 1:], idx[:, :1]], dim=1)
        return torch.nn.functional.one_hot(nxt, self.vocab).float() * self.scale


def test_a_model_that_peeks_at_the_next_token_fails_the_causal_check(monkeypatch, lab_cache, tmp_path):
    path = tmp_path / "peek.pt2"
    lab = load_lab(monkeypatch, **lab_env(lab_cache), AUTORESEARCH_HANDOFF=str(path))
    lab.handoff_model(Peeking(lab.VOCAB_SIZE), 8)
    result = audit_model(PREPARE_PY, path, lab_env(lab_cache), splits=("val",))
    assert result.error == "", result.error
    assert result.val_bpb < 0.5 and result.causal_gap > 100 * CAUSAL_TOLERANCE and not result.causal


def test_the_export_records_bf16_autocast_and_reproduces_the_eager_losses(monkeypatch, lab_cache, tmp_path):
    ns = model_section()
    config = ns["GPTConfig"](seq_len=256, vocab_size=2048, n_layer=2, n_head=2, n_embd=64, windows=(128, 256),
                             softcap=15.0, ve_gate_channels=32)
    torch.manual_seed(0)
    model = ns["GPT"](config)
    model.init_weights()
    model.set_attention(("sdpa", "sdpa"))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2 and not p.any():
                p.normal_(0, 0.05)
    path = tmp_path / "m.pt2"
    lab = load_lab(monkeypatch, **lab_env(lab_cache), AUTORESEARCH_HANDOFF=str(path))
    x = torch.randint(0, 2048, (4, 256))
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        eager = model(x)
        lab.handoff_model(model, 4)
    logits_of, batch_size = lab.load_handoff(path)
    with torch.no_grad():
        exported = logits_of(x)  # no autocast here: the graph carries its own
        assert torch.equal(exported, eager.float())
        assert not torch.equal(exported, model(x))  # fp32 would differ: bf16 really was recorded
    assert batch_size == 4


def test_a_missing_or_unloadable_model_is_an_error_not_a_number(tmp_path, lab_cache):
    result = audit_model(PREPARE_PY, tmp_path / "none.pt2", lab_env(lab_cache))
    assert result.val_bpb is None and "handed over no model" in result.error
    (tmp_path / "bad.pt2").write_bytes(b"not a model")
    result = audit_model(PREPARE_PY, tmp_path / "bad.pt2", lab_env(lab_cache))
    assert result.val_bpb is None and result.error.startswith("audit failed (exit 1): cannot load the handed-over model")


def test_matches_uses_a_relative_tolerance():
    assert matches(1.0, 1.0) and matches(1.0 + 0.9 * AUDIT_TOLERANCE, 1.0)
    assert not matches(1.0 + 1.1 * AUDIT_TOLERANCE, 1.0) and not matches(0.99, 1.0)
    assert not matches(1.0, None) and not matches(1.0, float("nan"))
