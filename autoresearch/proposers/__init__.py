"""Proposers: where the next change to train.py comes from (an LLM, a coding agent, or no LLM).

`get_proposer(name, options)` is the one entry point the loop uses; backends register their
factory in REGISTRY when their module is imported (below). The SDKs themselves are imported
only when a backend is built.
"""

from autoresearch.errors import AutoresearchError
from autoresearch.proposers import anthropic_backend, command, hparam, openai_backend, optuna_backend  # noqa: F401  (register)
from autoresearch.proposers.base import (
    REGISTRY,
    Context,
    Proposal,
    Proposer,
    ProposerError,
    ProposerOptions,
    Usage,
)


def get_proposer(name: str, options: ProposerOptions) -> Proposer:
    """Build the named proposer; bad names, missing keys or commands raise AutoresearchError."""
    factory = REGISTRY.get(name)
    if factory is None:
        known = ", ".join(sorted(REGISTRY))
        raise AutoresearchError(f"unknown proposer {name!r}; known proposers: {known}")
    return factory(options)


__all__ = [
    "REGISTRY",
    "Context",
    "Proposal",
    "Proposer",
    "ProposerError",
    "ProposerOptions",
    "Usage",
    "get_proposer",
]
