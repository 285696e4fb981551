"""Proposers: where the next change to train.py comes from (an LLM, a coding agent, or no LLM)."""

from autoresearch.proposers.base import (
    REGISTRY,
    Context,
    Proposal,
    Proposer,
    ProposerError,
    ProposerOptions,
    Usage,
)

__all__ = ["REGISTRY", "Context", "Proposal", "Proposer", "ProposerError", "ProposerOptions", "Usage"]
