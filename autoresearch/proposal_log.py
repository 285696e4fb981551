"""runs/NNNN/proposal.json: what each ask of an experiment was shown and answered (the idea, its
fixes, the failures before it), and the feedback a fix ask is given."""

import json
import os
from dataclasses import asdict
from pathlib import Path

from autoresearch.proposers import Context, Proposal, ProposerError

LOG_TAIL_LINES = 50  # of a crashed run's log, shown to the proposer for a fix
RAW_CHARS = 20_000  # of a failed reply, kept


def proposal_record(proposal: Proposal, ctx: Context, fix: int = 0) -> dict:
    return {
        "fix": fix,
        "feedback": ctx.feedback,
        "hypothesis": proposal.hypothesis,
        "description": proposal.description,
        "model": proposal.model,
        "edit_attempts": proposal.attempts,
        "usage": asdict(proposal.usage),
        "prompt": proposal.prompt,
        "raw": proposal.raw,
        "train_py": proposal.train_py,
    }


def failure_record(err: ProposerError) -> dict:
    return {"error": str(err), "raw": clip(err.raw), "usage": asdict(err.usage)}


def feedback(reason: str, log: Path) -> str:
    tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:] if log.exists() else []
    return (
        f"The last attempt of this change crashed: {reason}.\n"
        f"The last {len(tail)} lines of its log:\n" + "\n".join(tail) + "\n"
        "Fix the cause with the smallest edit; keep the idea."
    )


def clip(text: str, limit: int = RAW_CHARS) -> str:
    text = text or ""
    return text if len(text) <= limit else text[:limit] + f"\n... ({len(text) - limit} more characters)"


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
