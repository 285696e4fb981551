"""Stand-in lab for loop tests: a tiny train.py whose outcome is set by its own constants, a
stub prepare.py, program.md, and an in-process proposer that plays a script.

A proposer's edit of `VAL = ...` or `MODE = ...` decides what the next training run does, so the
loop's keep / discard / crash logic runs against real git and real subprocesses in well under a
second per experiment.
"""

import re
from collections import deque
from pathlib import Path

import git

from autoresearch.proposers import Proposal, Proposer, ProposerError, Usage

TRAIN_PY = '''\
"""Stand-in train.py: prints a summary whose val_bpb is VAL, or misbehaves as MODE says."""
import os
import sys
import time

VAL = 1.000000  # the val_bpb this run reports
JITTER = {}  # seed -> added to VAL: scripted run-to-run noise (AUTORESEARCH_SEED picks the trial)
MODE = "ok"  # ok | crash | hang | fail | nan | silent | write_prepare | write_file
SLEEP = 0.0  # seconds before the summary
SLEEP_BY_SEED = {}  # seed -> seconds, instead of SLEEP (STANDIN_SLEEP overrides both)

seed = int(os.environ.get("AUTORESEARCH_SEED", "42"))
by_seed = SLEEP_BY_SEED.get(seed, SLEEP_BY_SEED.get(str(seed), SLEEP))  # JSON keys are text
time.sleep(float(os.environ.get("STANDIN_SLEEP", by_seed)))
print("step 00001 | loss 3.0", flush=True)
print("saw OPENAI_API_KEY:", "OPENAI_API_KEY" in os.environ)
print("lab env:", *[os.environ.get(f"AUTORESEARCH_{name}") for name in ("PROFILE", "TIME_BUDGET", "CACHE", "SOURCE", "EVAL_TOKENS")])
if MODE == "crash":
    raise RuntimeError("boom: the stand-in crashed on purpose")
if MODE == "hang":
    time.sleep(3600)
if MODE == "fail":
    print("FAIL")
    sys.exit(1)
if MODE == "silent":
    sys.exit(0)
if MODE == "write_prepare":
    with open("prepare.py", "a") as f:
        f.write("# tampered\\n")
if MODE == "write_file":
    with open("stray.txt", "w") as f:
        f.write("x\\n")
val = float("nan") if MODE == "nan" else VAL + JITTER.get(seed, JITTER.get(str(seed), 0.0))
print("---")
print(f"val_bpb:          {val:.6f}")
print("training_seconds: 1.5")
print("total_seconds:    2.0")
print("peak_vram_mb:     2048.0")
print("mfu_percent:      1.25")
print("num_steps:        7")
print("profile:          cpu")
'''

PREPARE_PY = '''\
"""Stub prepare.py: the fixed constants and the metric of the stand-in lab."""

MAX_SEQ_LEN = 64  # context length
TIME_BUDGET = 5  # seconds of training
EVAL_TOKENS = 1024  # tokens for the validation metric


def evaluate_bpb(model, tokenizer, batch_size):
    """Bits per byte on the pinned validation shard."""
    return 1.0
'''

PROGRAM_MD = "# Research program\n\nMake val_bpb go down.\n"

GITIGNORE = "results/\n.autoresearch/\n__pycache__/\n"


def make_lab(repo: git.Repo, train_py: str = TRAIN_PY, prepare_py: str = PREPARE_PY) -> Path:
    """Commit the stand-in lab into `repo` (a fixture's empty repository); returns its folder."""
    root = Path(repo.working_tree_dir)
    files = {"train.py": train_py, "prepare.py": prepare_py, "program.md": PROGRAM_MD, ".gitignore": GITIGNORE}
    for name, text in files.items():
        (root / name).write_text(text)
    repo.index.add(list(files))
    repo.index.commit("stand-in lab")
    return root


def set_constants(train_py: str, **values) -> str:
    """train_py with `NAME = ...` lines replaced, e.g. set_constants(text, VAL=0.99, MODE="crash")."""
    for name, value in values.items():
        train_py, count = re.subn(
            rf"^{name} = [^#\n]*", f"{name} = {value!r}  ", train_py, count=1, flags=re.M
        )
        assert count == 1, name
    return train_py


class ScriptedProposer(Proposer):
    """Plays a queue of steps: a dict of constants to set, an Exception to raise, or a callable
    (ctx -> Proposal). Remembers every Context it was given."""

    name = "scripted"
    can_fix = True

    def __init__(self, steps, cost: float = 0.0):
        self.steps = deque(steps)
        self.contexts = []
        self.cost = cost

    def propose(self, ctx):
        self.contexts.append(ctx)
        if not self.steps:
            raise ProposerError("script exhausted")
        step = self.steps.popleft()
        if isinstance(step, BaseException):
            raise step
        if callable(step):
            return step(ctx)
        changes = ", ".join(f"{k} {v}" for k, v in step.items())
        return Proposal(
            hypothesis=f"setting {changes} helps",
            description=f"set {changes}",
            train_py=set_constants(ctx.train_py, **step),
            model="script-1",
            usage=Usage(100, 20, self.cost),
            prompt=f"prompt for experiment {ctx.experiment}",
            raw=f"raw reply {changes}",
        )
