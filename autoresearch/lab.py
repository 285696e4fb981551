"""`autoresearch prepare`: run the lab's prepare.py from the repository, with the same options."""

import subprocess
import sys
from pathlib import Path

from autoresearch.errors import AutoresearchError


def find_lab(start: Path) -> Path:
    """The nearest folder at or above `start` that holds prepare.py and train.py."""
    for folder in [start, *start.parents]:
        if (folder / "prepare.py").is_file() and (folder / "train.py").is_file():
            return folder
    raise AutoresearchError(
        f"no prepare.py and train.py found in {start} or above; run this inside an autoresearch checkout"
    )


def run_prepare(args: list[str], start: Path | None = None) -> int:
    """Run `python prepare.py ARGS` in the lab folder; returns its exit code."""
    lab = find_lab((start or Path.cwd()).resolve())
    return subprocess.call([sys.executable, "prepare.py", *args], cwd=lab)
