"""The one small proposer interface: a backend gets a Context and returns a Proposal."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass
class Usage:
    input_tokens: int = 0  # all input tokens, cached ones included
    output_tokens: int = 0
    cost_usd: float = 0.0
    cached_input_tokens: int = 0  # the part of input_tokens read from a prompt cache (cheaper)
    note: str = ""  # why the cost is missing or estimated, e.g. "no price for model 'x'"

    def __add__(self, other: "Usage") -> "Usage":
        notes = [n for n in (self.note, other.note) if n]
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cost_usd + other.cost_usd,
            self.cached_input_tokens + other.cached_input_tokens,
            "; ".join(dict.fromkeys(notes)),  # the same note twice says nothing new
        )


@dataclass
class TargetBrief:
    """What the proposer is told about the target (autoresearch/target.py's Target.brief)."""

    metric: str = "val_bpb"
    direction: str = "min"  # "max" | "min"
    description: str = ""  # metric, command, budget, edit files, what counts as a crash, as lines
    lab: bool = True  # the nanochat lab: its own prompt wording


@dataclass
class Context:
    """Everything one experiment's proposer sees; built afresh for every experiment.

    `files` holds the edit files' current texts (path -> text); the lab's context has only
    train.py there, mirrored in `train_py`, and a declared target's context leaves train_py ""
    unless train.py is one of its edit files. target.build_context fills both."""

    program: str  # program.md, read afresh from the user's checkout
    train_py: str  # the current best train.py (the lab; "" for a target without one)
    lab_contract: str  # prepare.py's fixed constants and metric, as text ("" for a declared target)
    history: list[dict]  # every results row so far, keyed by column name
    workdir: Path  # the run's worktree (the command proposer edits the edit files there)
    experiment: int
    profile: str  # "gpu" | "cpu"
    feedback: str | None = None  # on a fix attempt: why the last attempt crashed, with the log tail
    best: dict | None = None  # the Ledger's best: commit, experiment, val_bpb (its mean), trials
    noise: float | None = None  # the pooled run-to-run sigma of the metric, once measured
    files: dict[str, str] = field(default_factory=dict)  # the edit files' texts, by relative path
    context_files: dict[str, str] = field(default_factory=dict)  # fixed files shown to the proposer
    target: TargetBrief = field(default_factory=TargetBrief)

    def __post_init__(self):
        if not self.files:
            self.files = {"train.py": self.train_py}
        elif "train.py" in self.files and not self.train_py:
            self.train_py = self.files["train.py"]

    @property
    def metric(self) -> str:
        return self.target.metric


@dataclass
class Proposal:
    """One proposed change. `files` holds the new text of every edit file it proposes (path ->
    text); `train_py` mirrors files["train.py"] both ways, so lab code that reads or sets
    train_py and target code that reads files agree."""

    hypothesis: str
    description: str
    train_py: str = ""  # the full new text of train.py (the lab)
    model: str = ""
    usage: Usage = field(default_factory=Usage)
    prompt: str = ""
    raw: str = ""  # the raw reply (or replies), kept in proposal.json
    attempts: int = 1
    files: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        files = dict(self.files)
        if self.train_py and "train.py" not in files:
            files["train.py"] = self.train_py
        object.__setattr__(self, "files", files)
        object.__setattr__(self, "train_py", files.get("train.py", ""))
        object.__setattr__(self, "_synced", True)

    def __setattr__(self, name, value):
        object.__setattr__(self, name, value)
        if not self.__dict__.get("_synced"):  # still in __init__: __post_init__ syncs
            return
        if name == "train_py":
            object.__setattr__(self, "files", {**self.files, "train.py": value})
        elif name == "files":
            object.__setattr__(self, "files", dict(value))
            object.__setattr__(self, "train_py", self.files.get("train.py", ""))


class ProposerError(Exception):
    """The proposer could not produce an applicable change this time (network, bad replies)."""

    def __init__(self, message: str, usage: Usage | None = None, raw: str = ""):
        super().__init__(message)
        self.usage = usage or Usage()
        self.raw = raw


class Exhausted(ProposerError):
    """The proposer has nothing left to propose from this history (hparam: every nearby value
    tried). Final only when nothing is in flight: a keep still to come may open new ground, so
    the loop ends the run (rather than pausing and asking forever) once nothing else is left."""


class NothingEdited(ProposerError):
    """An agent ended well but left every edit file as it was. `proposal` is what it said it did
    (its files empty): the asker may find it changed a fixed file instead, which a declared
    target records as a crash row rather than a failed proposal."""

    def __init__(self, message: str, proposal: "Proposal"):
        super().__init__(message, proposal.usage, proposal.raw)
        self.proposal = proposal


@dataclass
class ProposerOptions:
    """What the CLI passes to a backend's factory; each backend reads the fields it needs."""

    model: str | None = None
    base_url: str | None = None
    api_key: str | None = None
    command: str | None = None
    seed: int = 0
    timeout: float = 600.0  # seconds for one API call or one agent command
    api_retries: int = 4  # SDK retries of one API call on 429 / 5xx / connection errors
    max_edit_retries: int = 3
    prices: dict | None = None  # model -> (USD per 1M input tokens, USD per 1M output tokens)
    sampler: str = "tpe"  # --proposer optuna: tpe | cmaes | random
    run_dir: Path | None = None  # results/<tag>/: where a proposer keeps state across resumes (optuna.db)


class Proposer:
    """A backend: gets a Context, returns a Proposal (or raises ProposerError). What it can do
    is declared here, on the class, and read by the loop as it is."""

    name: str = ""
    can_fix: bool = False  # shown a crashed change's log, it can propose a fix
    speculative: bool = False  # slow (an API call, an agent): worth asking while a training runs
    edits_files: bool = True  # works on files in ctx.workdir (a scratch checkout of its own)

    def propose(self, ctx: Context) -> Proposal:
        raise NotImplementedError


# Backends add themselves here: name -> factory(ProposerOptions) -> Proposer.
REGISTRY: dict[str, Callable[[ProposerOptions], Proposer]] = {}
