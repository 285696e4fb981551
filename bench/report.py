"""Benchmark `autoresearch report` on a long run: text, JSON, the plot and the HTML page for a
10,000-row TSV (each experiment with a runs/NNNN/diff.patch, as the loop leaves them).

    python bench/report.py [--rows 10000] [--repeats 5]

Writes its scratch under bench/out/ (ignored by git) and prints a table of median seconds. The
goal is under 2 s for text + JSON + plot together, each run in a fresh interpreter
(`python -m autoresearch report ...`), so imports count as the user would see them. Last, what the
loop pays after every row: html_report.write_html_report() in-process (imports already done).
"""

import argparse
import random
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

HEADER = ("commit val_bpb memory_gb status description experiment hypothesis proposer model reason "
          "training_seconds total_seconds num_steps mfu_percent input_tokens output_tokens cost_usd "
          "started_at wall_seconds parent").split()
IDEAS = ["raise MATRIX_LR to {:.3f}", "halve TOTAL_BATCH_SIZE", "DEPTH {}", "warmup ratio {:.2f}",
         "swap ReLU² for SwiGLU in the MLP — ünïcode", "weight decay {:.3f} on embeddings",
         "window pattern SSSL with long context every {} layers", "seed {}"]
REASONS = ["timeout", "diverged", "exit 1: torch.OutOfMemoryError: CUDA out of memory", "no summary"]


def make_rows(n: int, seed: int = 0) -> list[list[str]]:
    """A plausible night (or month): mostly discards, some crashes, rare strict improvements."""
    rng = random.Random(seed)
    start = datetime(2026, 11, 22, 0, 0, tzinfo=timezone.utc)
    best, parent, rows = 0.997900, "a0b0c0d", []
    for i in range(n):
        commit = f"{rng.getrandbits(28):07x}"
        proposer, model = ("baseline", "") if i == 0 else rng.choice(
            [("openai", "gpt-5"), ("anthropic", "claude-sonnet-4-5"), ("hparam", "")])
        template = rng.choice(IDEAS)
        idea = "baseline" if i == 0 else template.format(rng.uniform(0, 0.1) if "{:" in template else rng.randint(2, 16))
        wall = rng.uniform(320, 360)
        tokens_in, tokens_out = (0, 0) if proposer in ("baseline", "hparam") else (rng.randint(6000, 12000), rng.randint(500, 3000))
        cost = tokens_in * 1.25e-6 + tokens_out * 1e-5
        if i and rng.random() < 0.08:
            status, val, mem, reason, train = "crash", 0.0, 0.0, rng.choice(REASONS), ""
        else:
            # wins get rarer as the night goes on (~40 in 10,000); misses land just above the best
            win = rng.random() < 0.15 / (1 + i / 50)
            val = best if i == 0 else best - rng.expovariate(500) if win else best + abs(rng.gauss(0.003, 0.004))
            status = "keep" if i == 0 or val < best else "discard"
            mem, reason, train = rng.uniform(30, 60), "", f"{rng.uniform(299.5, 300.5):.1f}"
        if status == "keep":
            best, parent = val, commit
        rows.append([commit, f"{val:.6f}", f"{mem:.1f}", status, idea, str(i), f"because {idea}", proposer,
                     model, reason, train, f"{wall - 20:.1f}" if train else "", "953" if train else "",
                     "39.80" if train else "", str(tokens_in), str(tokens_out), f"{cost:.6f}",
                     (start + timedelta(seconds=i * 340)).strftime("%Y-%m-%dT%H:%M:%SZ"), f"{wall:.1f}", parent])
    return rows


def write_tsv(path: Path, rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\t".join(HEADER) + "\n" + "".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_diffs(folder: Path, rows: list[list[str]]) -> None:
    """runs/NNNN/diff.patch per experiment: a one-line hyperparameter change, about 300 bytes."""
    for row in rows:
        run_dir = folder / "runs" / f"{int(row[5]):04d}"
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "diff.patch").write_text(
            f"--- a/train.py\n+++ b/train.py\n@@ -60,7 +60,7 @@\n WARMUP_RATIO = 0.0\n-MATRIX_LR = 0.04\n"
            f"+MATRIX_LR = 0.0{row[5][-2:]}  # {row[4]}\n WEIGHT_DECAY = 0.2\n")


def html_in_process(folder: Path, repeats: int) -> tuple[list[float], list[float], int]:
    """Wall and CPU seconds of write_html_report() as the loop calls it, and the page's size."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from autoresearch.html_report import write_html_report

    write_html_report(folder)  # imports and a warm file cache, as in a running loop
    walls, cpus = [], []
    for _ in range(repeats):
        began, cpu = time.perf_counter(), time.process_time()
        page = write_html_report(folder)
        walls.append(time.perf_counter() - began)
        cpus.append(time.process_time() - cpu)
    return walls, cpus, page.stat().st_size


def timed(args: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + sys) of one fresh `python -m autoresearch` run; CPU
    time is the steadier figure when other jobs share the machine."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "autoresearch", *args], check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    out = Path(__file__).resolve().parent / "out" / "report"
    rows = make_rows(args.rows)
    tsv = write_tsv(out / "results.tsv", rows)
    write_diffs(out, rows)
    cases = {
        "--help": ["--help"],
        "text only": ["report", "--results", str(tsv), "--no-plot"],
        "json only": ["report", "--results", str(tsv), "--no-plot", "--json"],
        "text + plot": ["report", "--results", str(tsv), "--plot", str(out / "progress.png")],
        "text + json + plot + md": ["report", "--results", str(tsv), "--plot", str(out / "progress.png"),
                                    "--json", "--markdown", str(out / "report.md")],
        "text + html": ["report", "--results", str(tsv), "--no-plot", "--html", str(out / "page.html")],
    }
    print(f"{args.rows} rows ({tsv.stat().st_size / 1e6:.1f} MB), {args.repeats} runs each, fresh interpreter")
    print(f"{'case':<26}{'median s':>10}{'min s':>8}{'max s':>8}{'median cpu s':>14}")
    for name, argv in cases.items():
        walls, cpus = zip(*(timed(argv) for _ in range(args.repeats)))
        print(f"{name:<26}{statistics.median(walls):>10.2f}{min(walls):>8.2f}{max(walls):>8.2f}"
              f"{statistics.median(cpus):>14.2f}")
    walls, cpus, size = html_in_process(out, args.repeats)
    print(f"{'loop: write_html_report':<26}{statistics.median(walls):>10.2f}{min(walls):>8.2f}{max(walls):>8.2f}"
          f"{statistics.median(cpus):>14.2f}   (report.html {size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
