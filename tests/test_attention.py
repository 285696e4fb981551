"""train.py's attention: which kernels it picks, the window it masks, and the fallback when a fast one fails.

The CUDA kernels themselves (cuDNN, FlexAttention's Triton and flash-attn-4 backends) need a GPU; here
the pure choice is checked against fake machines, every path that runs on the CPU is checked against a
dense softmax written out by hand, and the start-up probe is made to fail for real (cuDNN on the CPU).
"""

import math

import pytest
import torch

from test_train import model_section

NS = model_section()
BF16, FP32 = torch.bfloat16, torch.float32


def reference_attention(q, k, v, window):
    """Softmax attention with the mask written out: query i sees keys j with 0 <= i - j <= window."""
    T = q.size(-2)
    back = torch.arange(T)[:, None] - torch.arange(T)[None, :]
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    scores = scores.masked_fill(~((back >= 0) & (back <= window)), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@pytest.mark.parametrize("device, capability, dtype, cudnn, fa4, expected", [
    ("cpu", (0, 0), FP32, None, False, ("sdpa", "sdpa")),
    ("cuda", (7, 0), FP32, 91000, False, ("sdpa", "sdpa")),          # V100: no flex kernels, no bf16
    ("cuda", (7, 5), FP32, 91000, True, ("sdpa", "sdpa")),           # T4, even with flash-attn-4 installed
    ("cuda", (8, 0), BF16, 91000, True, ("flex", "sdpa")),           # A100: neither FA4 nor cuDNN first
    ("cuda", (8, 9), BF16, 91000, True, ("flex", "sdpa")),           # L4 / RTX 4090
    ("cuda", (9, 0), BF16, 91000, False, ("flex", "cudnn")),         # H100 without flash-attn-4
    ("cuda", (9, 0), BF16, 91000, True, ("flex-flash", "cudnn")),    # H100 with it
    ("cuda", (9, 0), BF16, 90100, True, ("flex-flash", "sdpa")),     # cuDNN 9.1 (torch 2.5): too old
    ("cuda", (9, 0), BF16, None, False, ("flex", "sdpa")),           # a build without cuDNN
    ("cuda", (9, 0), FP32, 91000, True, ("flex", "sdpa")),           # 16-bit kernels only
    ("cuda", (10, 0), BF16, 91501, True, ("flex-flash", "cudnn")),   # B200
    ("cuda", (12, 0), BF16, 91501, True, ("flex", "sdpa")),          # RTX 5090: neither FA4 nor PyTorch's cuDNN pick
])
def test_fast_kernels_are_chosen_only_where_supported(device, capability, dtype, cudnn, fa4, expected):
    assert NS["choose_attention"](device, capability, dtype, cudnn, fa4) == expected


def test_the_name_in_the_summary_says_which_kernels_ran():
    name = NS["attention_name"]
    assert name(("sdpa", "sdpa")) == "sdpa" and name(("flex", "cudnn")) == "flex+cudnn"
    assert name(("flex-flash", "cudnn")) == "flex-flash+cudnn" and name(("flex", "sdpa")) == "flex+sdpa"


def test_a_window_sees_itself_and_exactly_window_keys_back_as_fa3():
    mask = NS["window_mask"](4, 12, "sdpa")
    assert mask.dtype == torch.bool and mask.shape == (12, 12)
    assert mask.sum(dim=1).tolist() == [1, 2, 3, 4, 5, 5, 5, 5, 5, 5, 5, 5]  # window + 1 keys, like (4, 0)
    assert mask[9, 5] and not mask[9, 4] and mask[9, 9] and not mask[9, 10]


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")  # on CUDA it is compiled
@pytest.mark.parametrize("window", [16, 17, 63])
@pytest.mark.parametrize("kernels", [("sdpa", "sdpa"), ("flex", "sdpa"), ("sdpa", "cudnn"), ("flex", "cudnn")])
def test_every_cpu_path_matches_a_dense_masked_softmax(kernels, window):
    T = 64
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, T, 16) for _ in range(3))
    full = window >= T - 1  # a window that reaches the first key is plain causal attention
    mask = None if full else NS["window_mask"](window, T, kernels[0])
    with torch.no_grad():  # FlexAttention has no backward on the CPU
        got = NS["causal_attention"](q, k, v, mask, kernels)
    assert torch.allclose(got, reference_attention(q, k, v, window), atol=1e-5)
    if not full:
        assert not torch.allclose(got, reference_attention(q, k, v, window - 1), atol=1e-5)
        assert not torch.allclose(got, reference_attention(q, k, v, window + 1), atol=1e-5)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("kind", ["sdpa", "flex"])
def test_the_key_exactly_window_back_is_attended_and_the_one_before_is_not(kind):
    # equal scores everywhere and v = one-hot key position: each output row is the share of every key
    T, window = 64, 16
    q = k = torch.zeros(1, 1, T, T)
    v = torch.eye(T).view(1, 1, T, T)
    with torch.no_grad():
        share = NS["causal_attention"](q, k, v, NS["window_mask"](window, T, kind), (kind, "sdpa"))[0, 0]
    for i in range(window + 1, T):
        assert share[i, i - window] == pytest.approx(1 / (window + 1))
        assert share[i, i - window - 1] == 0 and share[i, i + 1:].sum() == 0


@pytest.mark.parametrize("kind", ["sdpa", "flex"])
def test_layers_of_one_window_share_one_mask_built_once(kind):
    config = NS["GPTConfig"](seq_len=64, vocab_size=256, n_layer=8, n_head=2, n_embd=64,
                             windows=(16, 16, 16, 64, 16, 16, 16, 64), softcap=15.0, ve_gate_channels=32)
    model = NS["GPT"](config)
    model.set_attention((kind, "sdpa"))
    masks = model.masks
    assert masks[3] is None and masks[7] is None
    assert all(masks[i] is masks[0] for i in (1, 2, 4, 5, 6))  # six layers, one mask
    assert model.kernels == (kind, "sdpa")


def test_the_probe_passes_a_kernel_that_agrees_and_names_what_disagrees():
    mismatch = NS["attention_mismatch"]
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def causal(q, k, v):
        return sdpa(q, k, v, is_causal=True)

    def nan(q, k, v):
        return causal(q, k, v) * float("nan")

    def broken(q, k, v):
        raise RuntimeError("cuDNN Frontend error: no execution plan\nsecond line")

    shape = (1, 2, 32, 16)
    assert mismatch(causal, lambda q, k, v: reference_attention(q, k, v, 31), shape) == ""
    assert mismatch(nan, causal, shape).startswith("output, dq, dk, dv off by nan%")
    assert mismatch(broken, causal, shape) == "RuntimeError: cuDNN Frontend error: no execution plan"
    assert mismatch(lambda q, k, v: causal(q, k, v) * 1.1, causal, shape).startswith("output, dq, dk, dv off by 10.0%")
    assert mismatch(lambda q, k, v: causal(q, k, v) * 1.01, causal, shape) == ""  # within 16-bit rounding


def test_a_fast_kernel_that_fails_its_probe_falls_back_and_says_why():
    # cuDNN does not exist on the CPU: forced alone, SDPA refuses, as a cuDNN too old or broken would
    kernels, reasons = NS["probe_attention"](("sdpa", "cudnn"), 16, 64, (16, 64))
    assert kernels == ("sdpa", "sdpa")
    assert len(reasons) == 1 and reasons[0].startswith("cudnn -> sdpa: RuntimeError: ")
    # FlexAttention on flash-attn-4 falls back to its Triton kernels (here it fails for lack of a CPU backward)
    kernels, reasons = NS["probe_attention"](("flex-flash", "sdpa"), 16, 64, (16, 64))
    assert kernels == ("flex", "sdpa") and len(reasons) == 1 and reasons[0].startswith("flex-flash -> flex: ")
    # the fallback (and anything not fast) is taken as it is: nothing to probe
    assert NS["probe_attention"](("sdpa", "sdpa"), 16, 64, (16, 64)) == (("sdpa", "sdpa"), [])
