"""The keep audit of examples/life (fixed, like bench.py; autoresearch runs it on every keep).

bench.py checks one seeded board against hard-coded counts, so a program could learn those
answers instead of simulating. This runs program.simulate on three boards nobody has seen (new
random sizes, densities and seeds on every audit) and compares every checkpoint and the final
board with the plain reference simulator below. It prints no metric: it only passes (exit 0) or
fails (exit 1, the row becomes a crash).
"""

import random
import sys

import program


def reference(board, generations):
    """Live-cell counts per generation and the final board, the slow obvious way."""
    height, width = len(board), len(board[0])
    cells = [row[:] for row in board]
    counts = [sum(map(sum, cells))]
    for _ in range(generations):
        cells = [[1 if (n := sum(cells[(y + dy) % height][(x + dx) % width] for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                                 if dy or dx)) == 3 or (n == 2 and cells[y][x]) else 0
                  for x in range(width)] for y in range(height)]
        counts.append(sum(map(sum, cells)))
    return counts, cells


def main() -> None:
    rng = random.SystemRandom()
    for case in range(3):
        height, width = rng.randint(12, 40), rng.randint(12, 40)
        density, generations = rng.uniform(0.05, 0.6), rng.randint(20, 60)
        board = [[1 if rng.random() < density else 0 for _ in range(width)] for _ in range(height)]
        checkpoints = sorted({0, 1, 2, generations // 2, generations})
        expected, final = reference(board, generations)
        counts, got = program.simulate([row[:] for row in board], generations, checkpoints)
        wrong = [g for g in checkpoints if counts.get(g) != expected[g]]
        if wrong or [list(map(int, row)) for row in got] != final:
            where = f"generation {wrong[0]}" if wrong else "the final board"
            print(f"audit: board {case + 1} ({height}x{width}, density {density:.2f}): {where} differs from the reference")
            sys.exit(1)
    print("audit: 3 unseen boards match the reference simulator")


if __name__ == "__main__":
    main()
