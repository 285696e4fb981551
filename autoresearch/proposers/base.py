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
class Context:
    """Everything one experiment's proposer sees; built afresh for every experiment."""

    program: str  # program.md, read afresh from the user's checkout
    train_py: str  # the current best train.py
    lab_contract: str  # prepare.py's fixed constants and metric, as text
    history: list[dict]  # every results row so far, keyed by column name
    workdir: Path  # the run's worktree (the command proposer edits train.py there)
    experiment: int
    profile: str  # "gpu" | "cpu"
    feedback: str | None = None  # on a fix attempt: why the last attempt crashed, with the log tail
    best: dict | None = None  # the Ledger's best: commit, experiment, val_bpb (its mean), trials
    noise: float | None = None  # the pooled run-to-run sigma of val_bpb, once measured


@dataclass
class Proposal:
    hypothesis: str
    description: str
    train_py: str  # the full new text of train.py
    model: str = ""
    usage: Usage = field(default_factory=Usage)
    prompt: str = ""
    raw: str = ""  # the raw reply (or replies), kept in proposal.json
    attempts: int = 1


class ProposerError(Exception):
    """The proposer could not produce an applicable change this time (network, bad replies)."""

    def __init__(self, message: str, usage: Usage | None = None, raw: str = ""):
        super().__init__(message)
        self.usage = usage or Usage()
        self.raw = raw


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
