"""
Pretrain a small GPT for a fixed wall-clock budget and report validation bits per byte.
This is the one file the research agent edits; prepare.py (data, tokenizer, metric) is fixed.

Usage:
    python train.py                              # profile from prepare.py: gpu with CUDA, else cpu
    AUTORESEARCH_PROFILE=cpu python train.py     # tiny model on CPU (120 s budget)
    AUTORESEARCH_TIME_BUDGET=15 python train.py  # shorter budget, e.g. for a smoke test

Progress lines go to stdout; the run ends with a `---` line and `key: value` lines
(val_bpb first) that the harness parses. A run that diverges prints FAIL and exits 1.
The same file runs on both profiles without edits: only the size block below differs.
"""

import time

T_START = time.time()  # taken before importing torch so that startup_seconds includes the imports

import contextlib
import gc
import importlib.util
import math
import os
import re
import resource
import sys
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from prepare import MAX_SEQ_LEN, TIME_BUDGET, EVAL_TOKENS, PROFILE, Tokenizer, make_dataloader, evaluate_bpb, handoff_model

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# bf16 autocast on GPUs with native bf16 (Ampere and newer); pre-Ampere GPUs (V100, T4) only
# emulate it and crash in compiled kernels, so they run fp32. On CPUs without bf16 matmul units
# (AVX-512 only) fp32 measured faster.
NATIVE_BF16 = DEVICE.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
COMPUTE_DTYPE = torch.bfloat16 if NATIVE_BF16 else torch.float32
if DEVICE.type == "cuda":
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

sys.stdout.reconfigure(line_buffering=True)  # the harness tails the log while we train

# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


@dataclass
class GPTConfig:
    seq_len: int
    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int
    windows: tuple  # keys each query sees before itself, per layer (FA3's window_size[0]); seq_len = full causal
    softcap: float
    ve_gate_channels: int


def norm(x):
    return F.rms_norm(x, (x.size(-1),))


def has_value_embed(layer, n_layer):
    # every other layer, counting back from the last (which always has one)
    return (n_layer - 1 - layer) % 2 == 0


def rotate(x, cos, sin):
    """Rotary position embedding on (B, H, T, D): rotate channel pairs (i, i + D/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def choose_attention(device_type, capability, dtype, cudnn_version, flash_attn_4):
    """(windowed, full): kernels for the sliding-window and the full-context layers, fastest first where
    supported; start-up probes each fast one. flex-flash: FlexAttention on flash-attn-4 (FA3-class, sm90/sm100);
    flex: its Triton kernels (Ampere+); cudnn: SDPA with cuDNN first (beats SDPA's FA2 on sm90/sm100)."""
    if device_type != "cuda" or capability < (8, 0):
        return "sdpa", "sdpa"
    fast = dtype in (torch.bfloat16, torch.float16) and capability in ((9, 0), (10, 0))
    # cuDNN 9.9 is where PyTorch first preferred it on these chips (later PyTorch waits for 9.15.1 over a bug
    # with sequence lengths not a multiple of 128, which 2048 is); the probe checks the rest
    cudnn_ok = (cudnn_version or 0) >= 90900
    return "flex-flash" if fast and flash_attn_4 else "flex", "cudnn" if fast and cudnn_ok else "sdpa"


def attention_name(kernels):
    return "sdpa" if kernels == ("sdpa", "sdpa") else "+".join(kernels)


def window_mask(window, seq_len, kind):
    """Causal sliding window as FA3's window_size=(window, 0): query q sees keys q - window .. q."""
    if kind == "sdpa":
        pos = torch.arange(seq_len, device=DEVICE)
        back = pos[:, None] - pos[None, :]
        return (back >= 0) & (back <= window)

    def sliding(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx <= window)

    return create_block_mask(sliding, None, None, seq_len, seq_len, device=DEVICE)


def causal_attention(q, k, v, mask, kernels):
    """mask None: full causal SDPA; a bool tensor: SDPA with it; else a flex BlockMask on `kernels`' backend."""
    if mask is None:
        if kernels[1] != "cudnn":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                 SDPBackend.MATH]
        with sdpa_kernel(order, set_priority=True):  # a priority: what cuDNN refuses still runs on flash
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if isinstance(mask, torch.Tensor):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    options = {"BACKEND": "FLASH"} if kernels[0] == "flex-flash" else None  # None: Triton, on every torch
    return flex_attention(q, k, v, block_mask=mask, kernel_options=options)


def attention_mismatch(fast, reference, shape):
    """Why `fast` cannot stand in for `reference` (it raised, or its output or input gradients on random
    inputs differ by more than 16-bit rounding); "" when it can."""
    gen = torch.Generator(device=DEVICE).manual_seed(0)  # its own generator: training's seed stays untouched
    inputs = [torch.randn(shape, generator=gen, device=DEVICE, dtype=COMPUTE_DTYPE) for _ in range(4)]
    results = []
    for fn in (reference, fast):
        q, k, v = (t.clone().requires_grad_() for t in inputs[:3])
        try:
            out = fn(q, k, v)
            out.backward(inputs[3])
        except Exception as error:  # whatever breaks a fast kernel, the fallback still trains
            return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:160]}"
        results.append((out, q.grad, k.grad, v.grad))
    errors = [((b.float() - a.float()).norm() / a.float().norm()).item() for a, b in zip(*results)]
    ok = all(e < 0.03 for e in errors)  # also False for NaN
    return "" if ok else "output, dq, dk, dv off by " + ", ".join(f"{e:.1%}" for e in errors)


def probe_attention(kernels, head_dim, seq_len, windows):
    """`kernels` with each fast choice that fails on this machine replaced by its fallback, and why."""
    def causal_on(*backends):
        def attend(q, k, v):
            with sdpa_kernel(list(backends)):  # only these: a refusal must raise here, not fall back silently
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return attend

    (windowed, full), shape, reasons, short = kernels, (1, 2, seq_len, head_dim), [], min(windows)
    if full == "cudnn" and (why := attention_mismatch(causal_on(SDPBackend.CUDNN_ATTENTION), causal_on(
            SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH), shape)):
        full, reasons = "sdpa", reasons + [f"cudnn -> sdpa: {why}"]
    if windowed == "flex-flash" and short < seq_len - 1:  # one window tells: all share the kernel
        block, dense = window_mask(short, seq_len, windowed), window_mask(short, seq_len, "sdpa")
        compiled = torch.compile(flex_attention, dynamic=False)  # as the model compiles it: FLASH has no eager
        flash = lambda q, k, v: compiled(q, k, v, block_mask=block, kernel_options={"BACKEND": "FLASH"})
        if why := attention_mismatch(flash, lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=dense),
                                     shape):
            windowed, reasons = "flex", reasons + [f"flex-flash -> flex: {why}"]
    return (windowed, full), reasons


class Attention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        d = config.n_embd
        self.c_q = nn.Linear(d, d, bias=False)
        self.c_k = nn.Linear(d, d, bias=False)
        self.c_v = nn.Linear(d, d, bias=False)
        self.c_proj = nn.Linear(d, d, bias=False)
        self.ve_channels = config.ve_gate_channels
        self.ve_gate = None
        if has_value_embed(layer, config.n_layer):
            self.ve_gate = nn.Linear(config.ve_gate_channels, config.n_head, bias=False)

    def forward(self, x, ve, cos, sin, mask, kernels):
        B, T, _ = x.shape
        heads = lambda t: t.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        q, k, v = heads(self.c_q(x)), heads(self.c_k(x)), heads(self.c_v(x))
        if ve is not None:
            # value embedding, gated per head by the token's own residual; gate range (0, 2), 1 at init
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., : self.ve_channels]))
            v = v + gate.transpose(1, 2).unsqueeze(-1) * heads(ve)
        # QK-norm bounds the attention logits; RoPE after it (rotation keeps the norm anyway)
        q, k = rotate(norm(q), cos, sin), rotate(norm(k), cos, sin)
        y = causal_attention(q.to(v.dtype), k.to(v.dtype), v, mask, kernels)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())  # ReLU²: sparse and cheap, beats GELU here


class Block(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.attn = Attention(config, layer)
        self.mlp = MLP(config)

    def forward(self, x, ve, cos, sin, mask, kernels):
        x = x + self.attn(norm(x), ve, cos, sin, mask, kernels)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        V, d, L = config.vocab_size, config.n_embd, config.n_layer
        self.wte = nn.Embedding(V, d)
        self.blocks = nn.ModuleList([Block(config, i) for i in range(L)])
        self.lm_head = nn.Linear(d, V, bias=False)  # untied from wte
        # per-layer scalars: x <- resid_lambda * x + x0_lambda * x0 before each block
        self.resid_lambdas = nn.Parameter(torch.ones(L))
        self.x0_lambdas = nn.Parameter(torch.zeros(L))
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(V, d) for i in range(L) if has_value_embed(i, L)})
        head_dim = d // config.n_head
        freqs = 10000.0 ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(config.seq_len, dtype=torch.float32), freqs)
        self.register_buffer("cos", angles.cos().to(COMPUTE_DTYPE), persistent=False)
        self.register_buffer("sin", angles.sin().to(COMPUTE_DTYPE), persistent=False)
        self.kernels, self.masks = ("sdpa", "sdpa"), [None] * L  # set by set_attention()

    @torch.no_grad()
    def init_weights(self):
        d = self.config.n_embd
        bound = (3 / d) ** 0.5  # uniform with std 1/sqrt(d)
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)  # near-uniform predictions: first loss ~ ln(vocab)
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(lin.weight, -bound, bound)
            nn.init.zeros_(block.attn.c_proj.weight)  # each block starts as the identity
            nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                nn.init.zeros_(block.attn.ve_gate.weight)
        for ve in self.value_embeds.values():
            nn.init.uniform_(ve.weight, -bound, bound)
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.1)
        # embeddings are only gathered, never multiplied: store them in the compute dtype
        self.wte.to(COMPUTE_DTYPE)
        self.value_embeds.to(COMPUTE_DTYPE)

    def set_attention(self, kernels):
        """Attention kernels (see choose_attention) and their masks: one per distinct window, shared by its layers."""
        T = self.config.seq_len
        masks = {w: window_mask(w, T, kernels[0]) for w in set(self.config.windows) if w < T - 1}
        self.kernels, self.masks = tuple(kernels), [masks.get(w) for w in self.config.windows]

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self):
        """Forward + backward FLOPs per token: 6 per matmul weight plus attention scores."""
        gathered = self.wte.weight.numel() + sum(ve.weight.numel() for ve in self.value_embeds.values())
        scalars = self.resid_lambdas.numel() + self.x0_lambdas.numel()
        matmul_params = self.num_params() - gathered - scalars
        attention = sum(12 * self.config.n_embd * min(w, self.config.seq_len) for w in self.config.windows)
        return 6 * matmul_params + attention

    def forward(self, idx, targets=None, reduction="mean"):
        T = idx.size(1)
        cos, sin = self.cos[:T], self.sin[:T]
        x = x0 = norm(self.wte(idx))
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, ve, cos, sin, self.masks[i], self.kernels)
        logits = self.lm_head(norm(x)).float()
        cap = self.config.softcap
        logits = cap * torch.tanh(logits / cap)  # soft-cap keeps logits in (-cap, cap)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1,
                               reduction=reduction)


# ---------------------------------------------------------------------------
# Optimizer: Muon for 2-D matrices, AdamW for embeddings, head and scalars
# ---------------------------------------------------------------------------

# Polar Express coefficients (Amsel et al. 2025, arXiv:2505.16932), one (a, b, c) per iteration:
# X <- a X + b (X X^T) X + c (X X^T)^2 X drives all singular values of X towards 1.
POLAR_EXPRESS = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]


def compiled_on_cuda(fn):
    # fusing the update pays on CUDA; on CPU inductor's compile time exceeds what a short run saves
    return torch.compile(fn, dynamic=False, fullgraph=True) if DEVICE.type == "cuda" else fn


@compiled_on_cuda
def adamw_update(p, grad, m, v, step, lr, beta1, beta2, eps, wd):
    # state m, v is fp32 even when p is bf16; hyperparameters arrive as 0-D tensors (no recompiles)
    p32, g = p.float(), grad.float()
    p32.mul_(1 - lr * wd)
    m.lerp_(g, 1 - beta1)
    v.lerp_(g.square(), 1 - beta2)
    m_hat = m / (1 - beta1**step)
    v_hat = v / (1 - beta2**step)
    p32.sub_(lr * m_hat / (v_hat.sqrt() + eps))
    p.copy_(p32)


@compiled_on_cuda
def muon_update(grads, params, momentum_buf, second_moment, momentum, lr, wd, beta2, ns_steps, red_dim):
    """One Muon step for a stack of same-shape matrices (K, rows, cols), in place on params."""
    # Nesterov momentum
    momentum_buf.lerp_(grads, 1 - momentum)
    g = grads.lerp(momentum_buf, momentum)
    # Orthogonalise: replace g by (approximately) its polar factor U V^T
    X = g.to(COMPUTE_DTYPE)
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT  # iterate on the wide side: the Gram matrix X X^T is then the small one
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.02 + 1e-6)  # Frobenius >= spectral: singular values < 1
    for a, b, c in POLAR_EXPRESS[:ns_steps]:
        A = X @ X.mT
        X = a * X + (b * A + c * (A @ A)) @ X
    if tall:
        X = X.mT
    # NorMuon: per-neuron second moment rescales rows (or columns), then the overall norm is restored
    u = X.float()
    second_moment.lerp_(u.square().mean(dim=red_dim, keepdim=True), 1 - beta2)
    scaled = u * second_moment.clamp_min(1e-10).rsqrt()
    scaled = scaled * (u.norm(dim=(-2, -1), keepdim=True) / scaled.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-10))
    # cautious weight decay: decay only the coordinates where update and weight agree in sign
    agree = (scaled * params) >= 0
    params.sub_(lr * (scaled + wd * params * agree))


class MuonAdamW(torch.optim.Optimizer):
    """Each param group has kind 'adamw' (lr, betas, eps, weight_decay) or 'muon'
    (lr, momentum, beta2, ns_steps, weight_decay; all params of one shape)."""

    def __init__(self, param_groups):
        super().__init__(param_groups, defaults={})
        self._scalar = {}  # reused 0-D CPU tensors: a changed value is new data, not a recompile

    def _t(self, name, value):
        t = self._scalar.setdefault(name, torch.zeros((), dtype=torch.float32))
        t.fill_(value)
        return t

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            if group["kind"] == "adamw":
                self._adamw_step(group)
            else:
                self._muon_step(group)

    def _adamw_step(self, group):
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["m"] = torch.zeros_like(p, dtype=torch.float32)
                state["v"] = torch.zeros_like(p, dtype=torch.float32)
            state["step"] += 1
            adamw_update(p, p.grad, state["m"], state["v"], self._t("step", state["step"]),
                         self._t("lr", group["lr"]), self._t("beta1", beta1), self._t("beta2", beta2),
                         self._t("eps", group["eps"]), self._t("wd", group["weight_decay"]))

    def _muon_step(self, group):
        params = group["params"]
        rows, cols = params[0].shape
        red_dim = -1 if rows >= cols else -2  # second moment per row of tall, per column of wide matrices
        state = self.state[params[0]]
        if not state:
            state["momentum"] = torch.zeros(len(params), rows, cols, device=params[0].device)
            moment_shape = (len(params), rows, 1) if red_dim == -1 else (len(params), 1, cols)
            state["second_moment"] = torch.zeros(moment_shape, device=params[0].device)
        stacked = torch.stack(params)
        lr = group["lr"] * max(1.0, rows / cols) ** 0.5  # tall matrices: keep the per-entry step size
        muon_update(torch.stack([p.grad for p in params]), stacked, state["momentum"], state["second_moment"],
                    self._t("momentum", group["momentum"]), self._t("muon_lr", lr),
                    self._t("muon_wd", group["weight_decay"]), self._t("muon_beta2", group["beta2"]),
                    group["ns_steps"], red_dim)
        for p, new in zip(params, stacked.unbind(0)):
            p.copy_(new)


# ---------------------------------------------------------------------------
# Hyperparameters (edit these directly; there are no CLI flags)
# ---------------------------------------------------------------------------

# Architecture
WINDOW_PATTERN = "SSSL"    # attention span per layer, tiled over depth: L = full context, S = short; last is L
SHORT_WINDOW = 0.5         # an S layer sees this fraction of MAX_SEQ_LEN: local layers are cheaper and train faster
SOFTCAP = 15.0             # logits pass through SOFTCAP*tanh(x/SOFTCAP): no runaway logits early in training
VE_GATE_CHANNELS = 32      # residual channels that drive each value-embedding gate

# Optimisation
EMBEDDING_LR = 0.6         # AdamW on wte and value embeddings: sparse rows tolerate large steps
UNEMBEDDING_LR = 0.004     # AdamW on lm_head: small, the output layer is sensitive
MATRIX_LR = 0.04           # Muon on every 2-D block matrix (update RMS is fixed by orthogonalisation)
SCALAR_LR = 0.5            # AdamW on x0_lambdas (resid_lambdas get 1% of it: they scale the whole stream)
ADAM_BETAS = (0.8, 0.95)   # short memory suits a run of a few hundred steps
WEIGHT_DECAY = 0.2         # cautious decay on Muon matrices, ramped linearly to 0 over the budget
MUON_MOMENTUM = 0.95       # Nesterov momentum of Muon after its warmup
MUON_MOMENTUM_START = 0.85 # lower momentum at first, while gradients change fast
MUON_MOMENTUM_WARMUP = 0.3 # fraction of the budget to ramp momentum from START to MUON_MOMENTUM
NORMUON_BETA2 = 0.95       # EMA of the per-neuron second moment in NorMuon
POLAR_STEPS = 5            # Polar Express iterations (at most 5 coefficient sets)
WARMUP_RATIO = 0.0         # fraction of the budget for linear LR warmup (Muon rarely needs one)
WARMDOWN_RATIO = 0.5       # fraction of the budget at the end for linear LR decay: most of the final gain
FINAL_LR_FRAC = 0.0        # LR multiplier at the end of the warmdown
# The harness sets AUTORESEARCH_SEED per trial (42 for a first trial, 43 for its repeat, ...): a
# repeat then measures run-to-run noise instead of replaying one run. Not a hyperparameter.
SEED = int(os.environ.get("AUTORESEARCH_SEED", "42"))

# Model and batch size (per profile; the other profile's block is ignored)
if PROFILE == "gpu":
    DEPTH = 8                 # transformer blocks: ~50M params on an H100 in 5 minutes
    ASPECT_RATIO = 64         # model_dim = DEPTH * ASPECT_RATIO (rounded up to a multiple of HEAD_DIM)
    HEAD_DIM = 128            # channels per attention head
    TOTAL_BATCH_SIZE = 2**19  # tokens per optimizer step
    DEVICE_BATCH_SIZE = 128   # sequences per forward/backward; lower it if out of memory
else:
    DEPTH = 4                 # transformer blocks: a tiny model that visibly learns in 2 minutes on 2 cores
    ASPECT_RATIO = 32         # model_dim = DEPTH * ASPECT_RATIO (rounded up to a multiple of HEAD_DIM)
    HEAD_DIM = 32             # channels per attention head
    TOTAL_BATCH_SIZE = 2**13  # tokens per optimizer step
    DEVICE_BATCH_SIZE = 32    # sequences per forward/backward

# ---------------------------------------------------------------------------
# Setup: device, tokenizer, model, optimizer, data
# ---------------------------------------------------------------------------

if PROFILE == "gpu" and DEVICE.type != "cuda":  # the gpu model on a CPU would only sit until the timeout
    from prepare import no_cuda_reason
    print(f"FAIL: profile gpu but no CUDA device: {no_cuda_reason()}")
    sys.exit(1)

# Dense bf16 tensor-core peak (FLOP/s) by device-name pattern, most specific first.
# V100 and T4 have no bf16 tensor cores: their fp16 peak is listed.
GPU_PEAK_FLOPS = [
    (r"H100.*NVL", 835e12), (r"H100.*PCIe", 756e12), (r"H100", 989.4e12),
    (r"H800.*PCIe", 756e12), (r"H800", 989.4e12),
    (r"H200.*NVL", 836e12), (r"GH200|H200", 989.4e12), (r"B200", 2250e12), (r"B100", 1750e12),
    (r"A100", 312e12), (r"A800", 312e12), (r"L40S", 362e12), (r"L40\b", 181e12), (r"L4\b", 121e12),
    (r"A10\b", 125e12), (r"RTX 6000 Ada", 364e12), (r"RTX 5090", 209.5e12), (r"RTX 4090", 165.2e12),
    (r"RTX 3090", 71e12), (r"V100", 125e12), (r"\bT4\b", 65e12),
    (r"MI325X|MI300X", 1307.4e12), (r"MI250X", 383e12),
]


def measure_cpu_peak_flops(n=512, seconds=0.5):
    """Best observed matmul rate in COMPUTE_DTYPE: the CPU reference for MFU."""
    a, b = torch.randn(n, n, dtype=COMPUTE_DTYPE), torch.randn(n, n, dtype=COMPUTE_DTYPE)
    a @ b
    best, deadline = 0.0, time.time() + seconds
    while time.time() < deadline:
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t0))
    return best


torch.manual_seed(SEED)
if DEVICE.type == "cuda":
    torch.cuda.manual_seed(SEED)
    torch.set_float32_matmul_precision("high")  # TF32 for the few matmuls autocast leaves in fp32
    gpu_name = torch.cuda.get_device_name()
    DEVICE_NAME = f"cuda:{gpu_name}"
    peak_flops = next((f for pattern, f in GPU_PEAK_FLOPS if re.search(pattern, gpu_name)), 0.0)
    if peak_flops:
        mfu_reference = f"{gpu_name} bf16 dense {peak_flops / 1e12:.0f} TFLOPS"
    else:
        mfu_reference = f"unknown GPU {gpu_name}: add its peak to GPU_PEAK_FLOPS (mfu reads 0)"
    capability = torch.cuda.get_device_capability()
    try:  # flex's FLASH backend needs torch's lowering and flash-attn-4 (`pip install --pre flash-attn-4`)
        flash_attn_4 = all(importlib.util.find_spec(m) for m in ("torch._inductor.kernel.flex.flex_flash_attention",
                                                                   "flash_attn.cute"))
    except Exception:  # a flash_attn that fails to import (an extension built for another torch) is none
        flash_attn_4 = False
else:
    DEVICE_NAME = "cpu"
    peak_flops = measure_cpu_peak_flops()
    dtype_name = str(COMPUTE_DTYPE).removeprefix("torch.").replace("float32", "fp32").replace("bfloat16", "bf16")
    mfu_reference = f"cpu {dtype_name} matmul {peak_flops / 1e9:.1f} GFLOPS ({torch.get_num_threads()} threads)"
    capability, flash_attn_4 = (0, 0), False
amp = torch.autocast(DEVICE.type, dtype=COMPUTE_DTYPE) if COMPUTE_DTYPE != torch.float32 else contextlib.nullcontext()
print(f"Device: {DEVICE_NAME} | profile {PROFILE} | compute dtype {COMPUTE_DTYPE} | MFU vs {mfu_reference}")

tokenizer = Tokenizer.from_directory()
vocab_size = tokenizer.get_vocab_size()

model_dim = -(-DEPTH * ASPECT_RATIO // HEAD_DIM) * HEAD_DIM
short_window = max(1, int(SHORT_WINDOW * MAX_SEQ_LEN))
windows = [MAX_SEQ_LEN if WINDOW_PATTERN[i % len(WINDOW_PATTERN)] == "L" else short_window for i in range(DEPTH)]
windows[-1] = MAX_SEQ_LEN
config = GPTConfig(seq_len=MAX_SEQ_LEN, vocab_size=vocab_size, n_layer=DEPTH, n_head=model_dim // HEAD_DIM,
                   n_embd=model_dim, windows=tuple(windows), softcap=SOFTCAP,
                   ve_gate_channels=min(VE_GATE_CHANNELS, model_dim))
print(f"Model config: {asdict(config)}")
with DEVICE:
    model = GPT(config)
model.init_weights()
kernels = choose_attention(DEVICE.type, capability, COMPUTE_DTYPE, torch.backends.cudnn.version(), flash_attn_4)
kernels, fallbacks = probe_attention(kernels, HEAD_DIM, MAX_SEQ_LEN, windows)
model.set_attention(kernels)
print(f"Attention: {attention_name(kernels)}" + "".join(f" | {why}" for why in fallbacks))
num_params = model.num_params()
flops_per_token = model.flops_per_token()
print(f"Parameters: {num_params:,} | FLOPs per token: {flops_per_token:.3e}")

# a total batch below one device batch shrinks the device batch rather than failing
device_batch = max(1, min(DEVICE_BATCH_SIZE, TOTAL_BATCH_SIZE // MAX_SEQ_LEN))
tokens_per_micro_step = device_batch * MAX_SEQ_LEN
assert TOTAL_BATCH_SIZE % tokens_per_micro_step == 0, (
    f"TOTAL_BATCH_SIZE {TOTAL_BATCH_SIZE} is not a multiple of device batch x MAX_SEQ_LEN = {tokens_per_micro_step}")
grad_accum_steps = TOTAL_BATCH_SIZE // tokens_per_micro_step
eval_batch = max(1, min(device_batch, EVAL_TOKENS // MAX_SEQ_LEN))  # evaluate_bpb needs batch x seq <= EVAL_TOKENS

adam_scale = (model_dim / 768) ** -0.5  # AdamW LRs were tuned at width 768: scale them as 1/sqrt(width)
adam = dict(kind="adamw", betas=ADAM_BETAS, eps=1e-10, weight_decay=0.0)
matrices = [p for p in model.blocks.parameters()]
param_groups = [
    dict(adam, params=[model.lm_head.weight], lr=UNEMBEDDING_LR * adam_scale),
    dict(adam, params=[model.wte.weight], lr=EMBEDDING_LR * adam_scale),
    dict(adam, params=list(model.value_embeds.parameters()), lr=EMBEDDING_LR * adam_scale),
    dict(adam, params=[model.resid_lambdas], lr=SCALAR_LR * 0.01),
    dict(adam, params=[model.x0_lambdas], lr=SCALAR_LR, betas=(0.96, 0.95)),
]
for shape in sorted({p.shape for p in matrices}):
    param_groups.append(dict(kind="muon", params=[p for p in matrices if p.shape == shape], lr=MATRIX_LR,
                             momentum=MUON_MOMENTUM_START, beta2=NORMUON_BETA2, ns_steps=POLAR_STEPS,
                             weight_decay=WEIGHT_DECAY))
assert sum(len(g["params"]) for g in param_groups) == len(list(model.parameters())), "a parameter has no group"
optimizer = MuonAdamW(param_groups)
for group in optimizer.param_groups:
    group["initial_lr"] = group["lr"]

if DEVICE.type == "cuda":
    model = torch.compile(model, dynamic=False)

train_loader = make_dataloader(tokenizer, device_batch, MAX_SEQ_LEN, "train")
x, y, epoch = next(train_loader)
print(f"Time budget: {TIME_BUDGET:g}s | batch {device_batch} x {MAX_SEQ_LEN} x {grad_accum_steps} accumulation steps"
      f" | eval tokens: {EVAL_TOKENS:,}")


def lr_multiplier(progress):
    if progress < WARMUP_RATIO:
        return progress / WARMUP_RATIO
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    frac_left = (1.0 - progress) / WARMDOWN_RATIO
    return FINAL_LR_FRAC + (1.0 - FINAL_LR_FRAC) * frac_left


def muon_momentum(progress):
    ramp = min(progress / MUON_MOMENTUM_WARMUP, 1.0) if MUON_MOMENTUM_WARMUP > 0 else 1.0
    return MUON_MOMENTUM_START + (MUON_MOMENTUM - MUON_MOMENTUM_START) * ramp


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------
# Training loop: runs until TIME_BUDGET seconds of training time have passed
# ---------------------------------------------------------------------------

# the first steps compile (CUDA) and warm up allocators: they do not count towards the budget
untimed_steps = 10 if DEVICE.type == "cuda" else 1
log_every = 5.0  # seconds between progress lines: logs stay small
diverged_loss = 1.5 * math.log(vocab_size)  # uniform guessing scores ln(vocab): far above it = blown up
t_loop = time.time()
training_time = 0.0
smooth_loss = 0.0
last_log = 0.0
step = 0

while True:
    sync()
    t0 = time.time()
    train_loss = 0.0
    for _ in range(grad_accum_steps):
        with amp:
            loss = model(x, y)
        train_loss += loss.detach() / grad_accum_steps
        (loss / grad_accum_steps).backward()
        x, y, epoch = next(train_loader)

    progress = min(training_time / TIME_BUDGET, 1.0)
    lrm = lr_multiplier(progress)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * lrm
        if group["kind"] == "muon":
            group["momentum"] = muon_momentum(progress)
            group["weight_decay"] = WEIGHT_DECAY * (1.0 - progress)
    optimizer.step()
    model.zero_grad(set_to_none=True)

    loss_value = train_loss.item()
    smooth_loss = 0.9 * smooth_loss + 0.1 * loss_value
    smooth_loss_debiased = smooth_loss / (1 - 0.9 ** (step + 1))
    # fast fail; NaN is checked on its own because every comparison with NaN is False
    if math.isnan(loss_value) or math.isinf(loss_value):
        print(f"FAIL: training loss is {loss_value} at step {step}")
        sys.exit(1)
    if smooth_loss_debiased > diverged_loss:
        print(f"FAIL: training loss {smooth_loss_debiased:.2f} at step {step} is far above ln(vocab): diverged")
        sys.exit(1)

    sync()
    dt = time.time() - t0
    if step >= untimed_steps:
        training_time += dt

    if step == 0:
        # Python's GC scans every live object (compiled graphs make many): ~0.5 s pauses on CUDA.
        # Freeze what exists now and stop automatic collection; nothing here leaks cycles.
        gc.collect()
        gc.freeze()
        gc.disable()

    now = time.time()
    if step == 0 or now - last_log >= log_every:
        last_log = now
        tok_per_sec = TOTAL_BATCH_SIZE / dt
        mfu = 100 * flops_per_token * tok_per_sec / peak_flops if peak_flops else 0.0
        remaining = max(0.0, TIME_BUDGET - training_time)
        print(f"step {step:05d} ({100 * progress:.1f}%) | loss {smooth_loss_debiased:.4f} | lrm {lrm:.2f} | "
              f"dt {dt * 1000:.0f}ms | tok/s {tok_per_sec:,.0f} | mfu {mfu:.1f}% | epoch {epoch} | "
              f"remaining {remaining:.0f}s")

    step += 1
    if step >= untimed_steps and training_time >= TIME_BUDGET:
        break

# ---------------------------------------------------------------------------
# Evaluation and summary
# ---------------------------------------------------------------------------

model.eval()
t_eval = time.time()
with amp:
    val_bpb = evaluate_bpb(model, tokenizer, eval_batch)
eval_seconds = time.time() - t_eval
t_end = time.time()
# The harness re-evaluates this model with prepare.py's code (only when it sets AUTORESEARCH_HANDOFF).
# torch.export cannot save flex BlockMasks (torch 2.13), so the handed-over model uses SDPA masks of
# the same windows and PyTorch's own kernel order; the audit's number must still match val_bpb.
model.set_attention(("sdpa", "sdpa"))
with amp:
    handoff_model(model, eval_batch)
print(f"Eval: {eval_seconds:.1f}s for {EVAL_TOKENS:,} tokens")

timed_steps = step - untimed_steps
mfu_percent = 100 * flops_per_token * TOTAL_BATCH_SIZE * timed_steps / training_time / peak_flops if (
    peak_flops and training_time > 0) else 0.0
if DEVICE.type == "cuda":
    peak_memory_mb = torch.cuda.max_memory_allocated() / 1024**2
else:
    # no device memory on CPU: report the process's peak resident set size instead (KiB on Linux, bytes on macOS)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_memory_mb = rss / 1024**2 if sys.platform == "darwin" else rss / 1024

summary = [
    ("val_bpb", f"{val_bpb:.6f}"),
    ("training_seconds", f"{training_time:.1f}"),
    ("total_seconds", f"{t_end - T_START:.1f}"),
    ("peak_vram_mb", f"{peak_memory_mb:.1f}"),
    ("mfu_percent", f"{mfu_percent:.2f}"),
    ("total_tokens_M", f"{step * TOTAL_BATCH_SIZE / 1e6:.1f}"),
    ("num_steps", f"{step}"),
    ("num_params_M", f"{num_params / 1e6:.1f}"),
    ("depth", f"{DEPTH}"),
    ("startup_seconds", f"{t_loop - T_START:.1f}"),
    ("device", DEVICE_NAME),
    ("profile", PROFILE),
    ("time_budget", f"{TIME_BUDGET:g}"),
    ("mfu_reference", mfu_reference),
    ("attention", attention_name(kernels)),
]
print("---")
for key, value in summary:
    print(f"{key + ':':<18}{value}")
