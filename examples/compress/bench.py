"""The fixed benchmark of examples/compress (autoresearch never edits this file; program.py is).

Compresses a fixed, seeded 24 kB text with program.compress, then decompresses it in a fresh
Python process (so nothing kept in memory by compress can stand in for the data) and prints:

    roundtrip: ok
    ratio: 0.7312          (compressed bytes / original bytes: lower is better)
    compress_seconds: 1.9

A result that does not round-trip prints `roundtrip: failed` and exits 1.
"""

import random
import subprocess
import sys
import time

import program

SEED = 7
SIZE = 24_000
WORDS = (
    "the of and to in is that it for on was with as by at be this from or have an which one "
    "all were are but not they their has more when there can been its who will would some time "
    "into only other new could these two may first then than any like our over such after most "
    "also made many before must through years where much your way well down should because each "
    "just those people how too little state good very make world still own see men work long get "
    "here between both life being under never day same another know while last might us great old"
).split()


def corpus() -> bytes:
    """Pseudo-English with a Zipf-like word law, punctuation and line breaks: a fixed text."""
    rng = random.Random(SEED)
    weights = [1 / (rank + 1) for rank in range(len(WORDS))]
    out, line = [], []
    while sum(len(w) + 1 for w in out) < SIZE:
        word = rng.choices(WORDS, weights)[0]
        line.append(word)
        if rng.random() < 0.08:
            line[-1] += rng.choice(".,;")
        if len(" ".join(line)) > 70:
            out.append(" ".join(line))
            line = []
    return ("\n".join(out)[:SIZE]).encode()


DECOMPRESS = "import sys, program; sys.stdout.buffer.write(program.decompress(sys.stdin.buffer.read()))"


def main() -> None:
    data = corpus()
    start = time.perf_counter()
    blob = program.compress(data)
    seconds = time.perf_counter() - start
    back = subprocess.run([sys.executable, "-c", DECOMPRESS], input=blob, capture_output=True, timeout=300)
    if back.returncode != 0 or back.stdout != data:
        why = back.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["the bytes differ"]
        print(f"decompress did not give the data back: {why[0]}")
        print("roundtrip: failed")
        sys.exit(1)
    print("roundtrip: ok")
    print(f"ratio: {len(blob) / len(data):.6f}")
    print(f"compress_seconds: {seconds:.3f}")


if __name__ == "__main__":
    main()
