"""Helpers of bench/gpu_check.sh: an offline climbmix-shaped corpus, and the results table.

    python bench/gpu_check.py corpus OUT.parquet --mb 40
    python bench/gpu_check.py table --baseline baseline.log --run results/<tag>   # exit 1: a row crashed

The corpus is English prose taken from the docstrings of this Python's standard library, cut into
paragraphs and regrouped (seeded) into documents of 3 to 30 paragraphs, web-page sized, in one
parquet file with a `text` column: the shape of a climbmix shard, made without a network.
"""

import argparse
import ast
import csv
import random
import re
import statistics
import sys
import sysconfig
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from autoresearch.summary import parse_summary  # noqa: E402

STEP = re.compile(r"^step (\d+) .*?\| dt (\d+)ms", re.M)
EVAL = re.compile(r"^Eval: ([\d.]+)s", re.M)


# ---------------------------------------------------------------------------
# corpus
# ---------------------------------------------------------------------------


def paragraphs(limit_chars: int) -> list[str]:
    """Docstring paragraphs of the standard library, in path order, until limit_chars are found."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found, total = [], 0
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts or "test" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                for para in (doc or "").split("\n\n"):
                    para = " ".join(para.split())
                    if len(para) >= 40:
                        found.append(para)
                        total += len(para)
        if total >= limit_chars:
            break
    return found


def make_corpus(out: Path, megabytes: float, seed: int = 0) -> tuple[int, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = int(megabytes * 1e6)
    paras = paragraphs(target)
    rng = random.Random(seed)
    docs, size = [], 0
    while size < target:
        doc = "\n\n".join(rng.choice(paras) for _ in range(rng.randint(3, 30)))
        docs.append(doc)
        size += len(doc)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": docs}), out)
    return len(docs), size


# ---------------------------------------------------------------------------
# table
# ---------------------------------------------------------------------------

COLUMNS = ["run", "status", "val_bpb", "steps", "tokens_M", "mfu_%", "peak_mem_GB", "startup_s", "eval_s",
           "compile_s"]


def log_line(name: str, status: str, log: Path) -> list[str]:
    """One table row from a train.py log; '-' for what the log does not have."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    s = parse_summary(text)
    steps = [(int(a), int(b) / 1000) for a, b in STEP.findall(text)]
    # compile time: how much longer the first step took than a typical later one (CUDA only: on
    # the CPU nothing is compiled and the difference is noise)
    on_cuda = str(s.get("device", "")).startswith("cuda")
    compile_s = steps[0][1] - statistics.median(dt for _, dt in steps[1:]) if on_cuda and len(steps) > 1 else None
    ev = EVAL.search(text)

    def num(key, fmt, scale=1.0):
        value = s.get(key)
        return fmt.format(value * scale) if isinstance(value, (int, float)) else "-"

    return [name, status or ("ok" if s else "failed"), num("val_bpb", "{:.6f}"), num("num_steps", "{:.0f}"),
            num("total_tokens_M", "{:.2f}"), num("mfu_percent", "{:.2f}"), num("peak_vram_mb", "{:.2f}", 1 / 1024),
            num("startup_seconds", "{:.1f}"), f"{float(ev.group(1)):.1f}" if ev else "-",
            f"{compile_s:.1f}" if compile_s is not None else "-"]


NOTE = ("note: the corpus is made offline (the standard library's docstrings, shaped like a climbmix shard), so "
        "val_bpb here is not comparable with upstream's 0.9979 on climbmix; steps, tokens, MFU and memory are")


def crashes(run_dir: Path) -> list[str]:
    """Every crashed row of the run, with its reason verbatim."""
    tsv = run_dir / "results.tsv"
    if not tsv.is_file():
        return []
    with open(tsv, newline="") as f:
        return [f"exp {row.get('experiment')} trial {row.get('trial') or 1} {row.get('status')}: {row.get('reason')}"
                for row in csv.DictReader(f, delimiter="\t") if row.get("status") == "crash"]


def run_lines(run_dir: Path) -> list[list[str]]:
    """A row per training log of every experiment in results.tsv, found by experiment number."""
    tsv = run_dir / "results.tsv"
    if not tsv.is_file():
        return []
    lines = []
    with open(tsv, newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            try:
                n = int(row.get("experiment") or "")
            except ValueError:
                continue
            folder = run_dir / "runs" / f"{n:04d}"
            for log in sorted(folder.glob("*.log")) or [folder / "run.log"]:
                label = f"exp {n}" + ("" if log.name == "run.log" else f" {log.stem}")
                lines.append(log_line(label, row.get("status", ""), log))
    return lines


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    for r in [COLUMNS, *rows]:
        print("  ".join(cell.rjust(w) if i > 1 else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths))))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    c = sub.add_parser("corpus")
    c.add_argument("out", type=Path)
    c.add_argument("--mb", type=float, default=40.0)
    t = sub.add_parser("table")
    t.add_argument("--baseline", type=Path)
    t.add_argument("--run", type=Path)
    args = parser.parse_args(argv)
    if args.what == "corpus":
        n, size = make_corpus(args.out, args.mb)
        print(f"corpus: {n} documents, {size / 1e6:.1f} MB -> {args.out}")
        return 0
    rows = []
    if args.baseline:
        rows.append(log_line("baseline (train.py)", "", args.baseline))
    if args.run:
        rows += run_lines(args.run)
    print(NOTE)
    print_table(rows)
    failures = crashes(args.run) if args.run else []
    for line in failures:
        print(f"crashed: {line}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
