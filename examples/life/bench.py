"""The fixed benchmark of examples/life (autoresearch never edits this file; program.py is edited).

Runs program.simulate on a seeded 96x96 torus for 300 generations, checks the live-cell count at
fixed checkpoint generations and the final board against values hard-coded below, and prints:

    correct: True
    generations_per_s: 61.23
    seconds: 4.90

A wrong simulator fails fast: generations 0-5 are checked first, untimed, and a mismatch prints
`correct: False` with the first wrong generation and exits 1 within a second or so.
"""

import hashlib
import random
import sys
import time

import program

# ---------------------------------------------------------------------------
# The board and the expected answer (fixed: this is the correctness check)
# ---------------------------------------------------------------------------

SIZE = 96
DENSITY = 0.3
SEED = 2026
GENERATIONS = 300
# Live cells after each checkpoint generation, from three independent simulators that agree.
EXPECTED = {0: 2776, 1: 3238, 2: 2679, 3: 2580, 4: 2473, 5: 2377, 60: 1080, 100: 920, 200: 596, 300: 666}
FINAL_SHA256 = "f07debba0fe0e3392208269fa935f24e5357023ccb0d7d01c5c345d87d3dde4d"


def board():
    rng = random.Random(SEED)
    return [[1 if rng.random() < DENSITY else 0 for _ in range(SIZE)] for _ in range(SIZE)]


def digest(final) -> str:
    return hashlib.sha256(bytes(int(v) for row in final for v in row)).hexdigest()


def fail(why: str) -> None:
    print(f"wrong simulator: {why}")
    print("correct: False")
    sys.exit(1)


def check(counts, checkpoints, when: str) -> None:
    for generation in checkpoints:
        got = counts.get(generation)
        if got != EXPECTED[generation]:
            fail(f"{when}, generation {generation}: {got} live cells, expected {EXPECTED[generation]}")


def main() -> None:
    early = [g for g in EXPECTED if g <= 5]
    counts, _ = program.simulate(board(), max(early), early)  # untimed: a wrong simulator stops here
    check(counts, early, "before timing")

    start = time.perf_counter()
    counts, final = program.simulate(board(), GENERATIONS, sorted(EXPECTED))
    seconds = time.perf_counter() - start
    check(counts, sorted(EXPECTED), "timed run")
    if digest(final) != FINAL_SHA256:
        fail(f"the board after generation {GENERATIONS} differs (live cells match)")
    print("correct: True")
    print(f"generations_per_s: {GENERATIONS / seconds:.2f}")
    print(f"seconds: {seconds:.3f}")


if __name__ == "__main__":
    main()
