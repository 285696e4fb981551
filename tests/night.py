"""A small but complete night on disk, written by the loop's own writer (ResultsFile + Row): a
baseline measured twice, a change discarded after a confirm, one discarded at once, a crash, a
keep with its audit, speculation of every kind, and runs/NNNN/ with diffs, logs and proposals."""

import json
from pathlib import Path

from autoresearch.records import ResultsFile, Row

DIFF = """--- a/train.py
+++ b/train.py
@@ -1,3 +1,3 @@
-MATRIX_LR = 0.04  # <b>not bold</b> & "quoted"
+MATRIX_LR = 0.05  # <script>alert('x')</script>
 DEPTH = 8
"""

TRIALS = [  # (experiment, trial, status, val_bpb, extra fields)
    (0, 1, "trial", 2.625220, dict(role="baseline", proposer="baseline", description="baseline")),
    (0, 2, "keep", 2.794640, dict(role="repeat", proposer="baseline", description="baseline",
                                  mean_val_bpb=2.709930, audit="pass", audit_val_bpb=2.794700,
                                  heldout_bpb=2.801000)),
    (1, 1, "trial", 2.620000, dict(description="raise MATRIX_LR to 0.05", speculation="used",
                                   hypothesis="a higher Muon LR converges faster in a short budget")),
    (1, 2, "discard", 2.798000, dict(description="raise MATRIX_LR to 0.05", mean_val_bpb=2.709000,
                                     delta=-0.000930, reason="mean gain 0.000930 is within 1 sigma")),
    (2, 1, "discard", 2.900000, dict(description="DEPTH 12", speculation="rebased", delta=0.190070,
                                     hypothesis="deeper helps", reason="worse than the best")),
    (3, 1, "crash", 0.0, dict(description="halve TOTAL_BATCH_SIZE", speculation="discarded-asked-again",
                              reason="exit 1: out of memory", cost_usd=0.01, input_tokens=1000,
                              output_tokens=200)),
    (4, 1, "keep", 2.500000, dict(description="warmup ratio 0.1", speculation="failed-asked-again",
                                  hypothesis="warmup steadies the first steps", delta=-0.209930,
                                  audit="pass", audit_val_bpb=2.500100, heldout_bpb=2.510000)),
]


def write_night(folder: Path, device: str = "cpu") -> Path:
    """results/<tag>/ as the loop leaves it; returns the folder."""
    folder = Path(folder)
    results = ResultsFile(folder / "results.tsv")
    for i, (n, trial, status, val, extra) in enumerate(TRIALS):
        extra = {"proposer": "hparam", "hypothesis": "", **extra}
        row = Row(commit=f"c{n:06d}", val_bpb=val, memory_gb=1.0, status=status, experiment=n, trial=trial,
                  started_at=f"2026-11-22T00:{i * 2:02d}:00Z", wall_seconds=110.0, training_seconds=15.0,
                  run_seconds=100.0, gpu_idle_seconds=10.0, **extra)
        results.append(row)
        run_dir = folder / "runs" / f"{n:04d}"
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "diff.patch").write_text("" if n == 0 else DIFF.replace("0.05", f"0.05{n}"))
        (run_dir / "run.log").write_text(f"step 1\n---\nval_bpb: {val:.6f}\ndevice: {device}\n")
    (folder / "runs" / "0003" / "proposal.json").write_text(json.dumps({
        "experiment": 3, "attempts": [],
        "discarded": {"description": "an idea on an old best", "usage": {"cost_usd": 0.02}, "why": "overlaps"}}))
    (folder / "run.json").write_text(json.dumps({
        "tag": folder.name, "state": "done", "proposer": "hparam", "proposal_cost_usd": 0.025,
        "started_at": "2026-11-22T00:00:00Z", "updated_at": "2026-11-22T00:14:00Z"}))
    return folder
