"""Conway's Game of Life on a torus: the file autoresearch edits (bench.py is fixed).

`simulate(board, generations, checkpoints)` advances `board` (H rows of W ints, 0 or 1; the
edges wrap) by `generations` steps and returns ({generation: live cells} for every checkpoint,
the final board). It is deliberately naive: every cell looks up its 8 neighbours with modulo
arithmetic every generation. The constants below switch on faster paths that give the same
boards; anything else that gives the same boards is fair game too.
"""

NEIGHBOUR_TABLE = 0  # 1: precompute each cell's neighbour indices once instead of 8 modulos per cell
SPARSE_BELOW = 0.0  # live-cell density under which to step a set of live cells instead of the grid
COUNT_STRIDE = 1  # also recount the live cells every this many generations (a leftover debug check)


def simulate(board, generations, checkpoints):
    height, width = len(board), len(board[0])
    cells = [v for row in board for v in row]
    table = _table(width, height) if NEIGHBOUR_TABLE else None
    wanted = set(checkpoints)
    counts = {}
    live = None  # the set of live indices once the sparse path is taken
    for generation in range(generations + 1):
        if live is None and (generation in wanted or generation % COUNT_STRIDE == 0):
            population = sum(cells)
        elif live is not None:
            population = len(live)
        if generation in wanted:
            counts[generation] = population
        if generation == generations:
            break
        if live is None and SPARSE_BELOW and population < SPARSE_BELOW * width * height:
            live = {i for i, v in enumerate(cells) if v}
        if live is not None:
            live = _step_sparse(live, width, height)
        elif table is not None:
            cells = _step_table(cells, table)
        else:
            cells = _step_naive(cells, width, height)
    if live is not None:
        cells = [0] * (width * height)
        for i in live:
            cells[i] = 1
    return counts, [cells[r * width:(r + 1) * width] for r in range(height)]


def _step_naive(cells, width, height):
    new = [0] * (width * height)
    for y in range(height):
        for x in range(width):
            n = 0
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    if dx or dy:
                        n += cells[((y + dy) % height) * width + (x + dx) % width]
            alive = cells[y * width + x]
            new[y * width + x] = 1 if n == 3 or (alive and n == 2) else 0
    return new


def _table(width, height):
    return [
        [((y + dy) % height) * width + (x + dx) % width for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dx or dy]
        for y in range(height) for x in range(width)
    ]


def _step_table(cells, table):
    new = [0] * len(cells)
    for i, around in enumerate(table):
        n = 0
        for j in around:
            n += cells[j]
        new[i] = 1 if n == 3 or (cells[i] and n == 2) else 0
    return new


def _step_sparse(live, width, height):
    counts = {}
    for i in live:
        y, x = divmod(i, width)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dx or dy:
                    j = ((y + dy) % height) * width + (x + dx) % width
                    counts[j] = counts.get(j, 0) + 1
    return {j for j, n in counts.items() if n == 3 or (n == 2 and j in live)}
