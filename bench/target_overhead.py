"""What a declared target adds per experiment over running its command by hand.

Copies an example (examples/<name>) into a fresh git repository, times its command run directly
(`--direct` times, the median), then runs `autoresearch run --proposer hparam` on it for
`--experiments` experiments and compares: the baseline's run_seconds (the same program, run by
a worker), each trial's wall_seconds minus run_seconds (what the loop adds around the command),
and the whole run's wall time divided by the trials it recorded. Candidates change the
program's own speed, so only the baseline is compared with the command by hand.

    python bench/target_overhead.py --example compress --experiments 10
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autoresearch.records import ResultsFile  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", default="compress")
    parser.add_argument("--experiments", type=int, default=10)
    parser.add_argument("--direct", type=int, default=10)
    parser.add_argument("--sandbox", default="auto")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / args.example
        shutil.copytree(ROOT / "examples" / args.example, repo, ignore=shutil.ignore_patterns("__pycache__"))
        for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "x"]):
            subprocess.run(cmd, cwd=repo, check=True, env=env)
        direct = []
        for _ in range(args.direct):
            t0 = time.perf_counter()
            subprocess.run(["/bin/sh", "-c", "python bench.py"], cwd=repo, env=env, check=True, capture_output=True)
            direct.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "autoresearch", "run", "--tag", "b", "--proposer", "hparam",
                        "--max-experiments", str(args.experiments), "--sandbox", args.sandbox],
                       cwd=repo, env=env, check=True, capture_output=True)
        total = time.perf_counter() - t0
        rows = ResultsFile(repo / "results" / "b" / "results.tsv").rows()
    base = [r.run_seconds for r in rows if r.experiment == 0 and r.run_seconds is not None]
    around = [r.wall_seconds - r.run_seconds for r in rows if r.wall_seconds is not None and r.run_seconds is not None]
    hand = statistics.median(direct)
    print(f"example {args.example}: {len(rows)} trials of {args.experiments} experiments, --sandbox {args.sandbox}")
    print(f"  the command by hand (median of {args.direct}):           {hand:.3f} s")
    print(f"  the same program as a run's baseline (run_seconds):  {statistics.median(base):.3f} s "
          f"(+{statistics.median(base) - hand:.3f} s: worker folder, sandbox, supervision)")
    print(f"  per trial around the command (wall - run, median):   {statistics.median(around):.3f} s "
          f"(judging, the row, git)")
    print(f"  whole run / trials (proposing and commits included): {total / len(rows):.3f} s")

if __name__ == "__main__":
    main()
