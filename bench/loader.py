"""Benchmark the dataloader: our prepare.py against upstream's, on the same data, in one run.

    mkdir -p /tmp/upstream && git -C <karpathy/autoresearch clone> archive HEAD | tar -x -C /tmp/upstream
    python prepare.py --profile cpu                      # the stdlib source, if not prepared yet
    python bench/loader.py --upstream /tmp/upstream [--profile cpu] [--source stdlib] [--seconds 5]

Both loaders read the prepared source in $AUTORESEARCH_CACHE (upstream's reads the parquet shards
and tokenizes as it goes; ours reads the token cache prepare.py wrote) and share one Tokenizer.
Upstream's file is loaded at run time, never copied here: its hard-coded `device="cuda"` and
`pin_memory=True` are replaced with CPU settings, and its data paths point at our cache.
Prints tokens/s for each (B, T) and the ratio; the goal is at least 5x.
"""

import argparse
import os
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CPU_SUBSTITUTIONS = {'device="cuda"': 'device="cpu"', "pin_memory=True": "pin_memory=False"}


def load_upstream(path: Path, lab: types.ModuleType) -> types.ModuleType:
    """Upstream's prepare.py as a module that runs on CPU and reads `lab`'s prepared source."""
    source = (path / "prepare.py").read_text()
    for old, new in CPU_SUBSTITUTIONS.items():
        if old not in source:
            sys.exit(f"error: {old!r} not found in {path / 'prepare.py'}; upstream changed, adapt CPU_SUBSTITUTIONS")
        source = source.replace(old, new)
    module = types.ModuleType("upstream_prepare")
    module.__file__ = str(path / "prepare.py")
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    module.DATA_DIR = str(lab.DATA_DIR)
    module.TOKENIZER_DIR = str(lab.TOKENIZER_DIR)
    module.VAL_FILENAME = lab.VAL_FILENAME  # so both loaders train on the same shards
    return module


def tokens_per_second(loader, seconds: float) -> float:
    next(loader)  # the first batch fills the document buffer: not steady state
    start, tokens = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        inputs, _, _ = next(loader)
        tokens += inputs.numel()
    return tokens / (time.perf_counter() - start)


def tokenize_rate(lab: types.ModuleType, tokenizer, max_docs: int = 4000) -> float:
    """What prepare.py's one-time tokenization of the shards runs at (tokens/s)."""
    import pyarrow.parquet as pq

    train = sorted(p for p in lab.DATA_DIR.glob("*.parquet") if p.name != lab.VAL_FILENAME)[0]
    texts = pq.read_table(train, columns=["text"]).column("text").to_pylist()[:max_docs]
    start = time.perf_counter()
    tokens = lab.encode_with_bos(tokenizer.enc, texts, tokenizer.get_bos_token_id())
    return len(tokens) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", type=Path, required=True, help="a checkout of karpathy/autoresearch")
    parser.add_argument("--profile", default="cpu", help="profile the source was prepared for (its VOCAB_SIZE)")
    parser.add_argument("--source", default="stdlib", help="a prepared source in $AUTORESEARCH_CACHE")
    parser.add_argument("--shapes", default="32x256,8x2048", help="comma-separated BxT")
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per loader and shape")
    args = parser.parse_args()

    os.environ.update(AUTORESEARCH_PROFILE=args.profile, AUTORESEARCH_SOURCE=args.source)
    sys.path.insert(0, str(REPO))
    import prepare as lab
    import torch

    tokenizer = lab.Tokenizer.from_directory()
    upstream = load_upstream(args.upstream, lab)
    shapes = [tuple(int(n) for n in shape.split("x")) for shape in args.shapes.split(",")]
    print(f"source {args.source} in {lab.CACHE_DIR}, vocab {tokenizer.get_vocab_size()}, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, {args.seconds:g} s per cell")
    print(f"{'B x T':>10}  {'upstream tok/s':>15}  {'ours tok/s':>12}  {'ratio':>7}")
    for b, t in shapes:
        theirs = tokens_per_second(upstream.make_dataloader(tokenizer, b, t, "train"), args.seconds)
        ours = tokens_per_second(lab.make_dataloader(tokenizer, b, t, "train", device="cpu"), args.seconds)
        print(f"{f'{b} x {t}':>10}  {theirs:>15,.0f}  {ours:>12,.0f}  {ours / theirs:>6.1f}x")
    print(f"ours moves tokenization into prepare.py, once per shard: {tokenize_rate(lab, tokenizer):,.0f} tok/s there")


if __name__ == "__main__":
    main()
