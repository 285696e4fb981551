"""A run's settings, resolved once: the CLI's options become one RunConfig here, checked here.

Also the tag rule, which every module that names a run shares.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

from autoresearch.errors import AutoresearchError
from autoresearch.gpus import parse_gpus
from autoresearch.keep_rule import MIN_DELTA, RULES
from autoresearch.lab import find_lab
from autoresearch.proposers.base import ProposerOptions
from autoresearch.trust import AUDIT_CHOICES, SANDBOX_CHOICES

PROFILES = ("gpu", "cpu")
TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # and no "..", no ".lock"/"." ending


def bad_tag(tag: str) -> AutoresearchError:
    return AutoresearchError(
        f"bad --tag {tag!r}: use letters, digits, '.', '_' and '-' (e.g. mar5), starting with a letter or digit"
    )


def check_tag(tag: str) -> str:
    """The tag, or a one-line error; the branch is autoresearch/<tag>."""
    if not TAG.match(tag) or ".." in tag or tag.endswith((".lock", ".")):
        raise bad_tag(tag)
    return tag


@dataclass
class RunConfig:
    repo_root: Path
    tag: str
    resume: bool = False
    proposer: str = "hparam"
    options: ProposerOptions = field(default_factory=ProposerOptions)
    max_experiments: int | None = None  # experiments (baseline included), not trials
    max_hours: float | None = None  # wall clock of this invocation
    max_cost: float | None = None  # USD: rows' cost plus failed proposals' cost
    profile: str | None = None  # passed to the lab as AUTORESEARCH_PROFILE
    time_budget: float | None = None  # passed to the lab as AUTORESEARCH_TIME_BUDGET
    timeout: float | None = None  # hard limit per training run; default budget + max(budget, 120)
    keep_rule: str = "noise"  # keep_rule.RULES
    baseline_repeats: int = 2  # trials of the unmodified baseline (the first noise estimate)
    min_delta: float = MIN_DELTA  # the smallest val_bpb gain worth a keep
    max_fix_attempts: int = 2
    max_consecutive_proposer_failures: int = 5
    pause_seconds: float = 60.0  # first pause after too many proposer failures in a row
    pause_max_seconds: float = 3600.0  # pauses double up to this
    training_command: list[str] | None = None  # default: python train.py (the runner's)
    extra_env: dict[str, str] = field(default_factory=dict)  # more lab variables for training
    preflight: bool = True  # doctor.preflight before anything trains (gpu, data, disk, key, agent)
    audit: str = "on"  # on: every keep is re-evaluated from the base prepare.py (trust.py); off: not
    sandbox: str = "auto"  # on | off | auto (bubblewrap when it works here, else a warning)
    speculate: bool = True  # ask for the next proposal while one trains (slow proposers only; asking.py)
    workers: int | None = None  # trainings at once; None: one, or one per --gpus entry
    gpus: str | None = None  # "0,1,2,3", UUIDs, MIG ids or "all": one worker per GPU, pinned by CUDA_VISIBLE_DEVICES (gpus.py)
    ray: str | None = None  # a Ray cluster's address, or "auto": workers are Ray actors (ray_pool.py)
    track: str | None = None  # mlflow | wandb: every row also goes to that tracker (tracking.py)

    def __post_init__(self):
        check_tag(self.tag)
        if self.profile not in (None, *PROFILES):
            raise AutoresearchError(f"bad --profile {self.profile!r}: use {' or '.join(PROFILES)}")
        if self.keep_rule not in RULES:
            raise AutoresearchError(f"bad --keep-rule {self.keep_rule!r}: use {' or '.join(RULES)}")
        if self.baseline_repeats < 1:
            raise AutoresearchError(f"bad --baseline-repeats {self.baseline_repeats}: train the baseline at least once")
        if self.audit not in AUDIT_CHOICES:
            raise AutoresearchError(f"bad --audit {self.audit!r}: use {' or '.join(AUDIT_CHOICES)}")
        if self.sandbox not in SANDBOX_CHOICES:
            raise AutoresearchError(f"bad --sandbox {self.sandbox!r}: use {', '.join(SANDBOX_CHOICES)}")
        if self.min_delta < 0:
            raise AutoresearchError(f"bad --min-delta {self.min_delta:g}: a gain, 0 or more")
        if self.workers is not None and self.workers < 1:
            raise AutoresearchError(f"bad --workers {self.workers}: at least 1")
        if self.gpus is not None:
            if self.ray is not None:
                raise AutoresearchError("--gpus is for this machine's GPUs; with --ray, Ray places the workers "
                                        "(pass --workers N, default: the cluster's GPUs)")
            gpus = parse_gpus(self.gpus)
            if gpus is not None and self.workers is not None and self.workers != len(gpus):
                raise AutoresearchError(f"--workers {self.workers} but --gpus names {len(gpus)} GPUs; "
                                        f"one worker per GPU (drop --workers)")
        if self.track is not None:
            from autoresearch.tracking import tracker_class

            tracker_class(self.track)  # a one-line error naming the pip command, before anything runs
        self.repo_root = Path(self.repo_root)
        if self.options.run_dir is None:
            self.options.run_dir = self.repo_root / "results" / self.tag


def find_research_root(start: Path) -> Path:
    """The nearest folder at or above `start` with an autoresearch.toml (a declared target) or
    the lab's prepare.py and train.py; the lab's error when there is neither."""
    for folder in [start, *start.parents]:
        if (folder / "autoresearch.toml").is_file():
            return folder
        if (folder / "prepare.py").is_file() and (folder / "train.py").is_file():
            return folder
    return find_lab(start)  # raises its one-line error


def from_cli(tag: str, repo: Path | None = None, proposer: str = "hparam", model: str | None = None,
             base_url: str | None = None, command: str | None = None, seed: int = 0,
             sampler: str = "tpe", **settings) -> RunConfig:
    """`autoresearch run`'s options as a RunConfig: the proposer's go to ProposerOptions, the
    rest are RunConfig fields of the same name."""
    check_tag(tag)
    root = find_research_root(Path(repo or Path.cwd()).resolve())
    options = ProposerOptions(model=model, base_url=base_url, command=command, seed=seed, sampler=sampler)
    return RunConfig(repo_root=root, tag=tag, proposer=proposer, options=options, **settings)
