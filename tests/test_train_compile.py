"""The CUDA path's torch.compile, exercised on the CPU (inductor's C++ backend, gcc).

On a GPU train.py compiles the model (`torch.compile(model, dynamic=False)`) and the two
optimizer updates (`compiled_on_cuda`: fullgraph=True). Without a GPU in CI, a graph break or a
dynamo error in that code would only show on the first H100 night; here the same code is compiled
on the CPU, the model with fullgraph=True (stricter than train.py: any graph break fails), and
trained for a few steps, then evaluated as evaluate_bpb calls it. FlexAttention stays CUDA-only
(its backward has no CPU kernel): the windowed layers use SDPA with a boolean mask here, and the
full-context layer runs inside the `sdpa_kernel` priority that selects cuDNN on a GPU.
"""

import math
import re

import pytest
import torch

from conftest import REPO_ROOT

TRAIN_PY = (REPO_ROOT / "train.py").read_text()


def compiled_section():
    """train.py's model and optimizer code with `compiled_on_cuda` compiling on the CPU too."""
    head = TRAIN_PY[: TRAIN_PY.index("# Hyperparameters")]
    head = head[: head.rindex("# ----")]
    head, count = re.subn(r"^from prepare import .*$", "", head, count=1, flags=re.M)
    assert count == 1
    assert 'if DEVICE.type == "cuda":\n    from torch.nn.attention.flex_attention' in head  # the guard stays
    gate = 'fullgraph=True) if DEVICE.type == "cuda" else fn'
    assert gate in head, "compiled_on_cuda changed: update this test"
    head = head.replace(gate, "fullgraph=True)")
    namespace = {"__name__": "train_compiled_section"}
    exec(compile(head, str(REPO_ROOT / "train.py"), "exec"), namespace)
    return namespace


@pytest.mark.slow
def test_model_and_optimizer_compile_without_graph_breaks_and_train():
    ns = compiled_section()
    torch.manual_seed(0)
    T, V = 64, 256
    config = ns["GPTConfig"](seq_len=T, vocab_size=V, n_layer=2, n_head=2, n_embd=64, windows=(32, T),
                             softcap=15.0, ve_gate_channels=32)
    model = ns["GPT"](config)
    model.init_weights()
    # CPU: a boolean mask for the short window; the full one under the cuDNN-first priority an H100 gets
    # (a context manager inside the graph; on the CPU SDPA runs its own kernel)
    model.set_attention(("sdpa", "cudnn"))
    assert model.masks[0].dtype == torch.bool and model.masks[1] is None
    adam = dict(kind="adamw", betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0)
    matrices = list(model.blocks.parameters())
    groups = [
        dict(adam, params=[model.lm_head.weight], lr=0.004),
        dict(adam, params=[model.wte.weight, *model.value_embeds.parameters()], lr=0.3),
        dict(adam, params=[model.resid_lambdas, model.x0_lambdas], lr=0.005),
    ]
    for shape in sorted({p.shape for p in matrices}):
        groups.append(dict(kind="muon", params=[p for p in matrices if p.shape == shape], lr=0.02, momentum=0.95,
                           beta2=0.95, ns_steps=5, weight_decay=0.1))
    optimizer = ns["MuonAdamW"](groups)
    assert hasattr(ns["adamw_update"], "_torchdynamo_orig_callable")  # really compiled
    compiled = torch.compile(model, dynamic=False, fullgraph=True)

    x = torch.randint(0, V, (4, T))
    y = torch.roll(x, -1, dims=1)  # a learnable target: the next token of the same row
    losses = []
    for _ in range(4):
        loss = compiled(x, y)
        loss.backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses
    # the eager model on the same weights agrees with the compiled one
    with torch.no_grad():
        eager = model(x, y, reduction="none")
        compiled.eval()
        per_token = compiled(x, y, reduction="none")  # what evaluate_bpb asks for
    assert per_token.shape == (4 * T,) and torch.allclose(per_token, eager, atol=1e-4, rtol=1e-4)
