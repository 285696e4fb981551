"""What every chat-model backend shares: prompt -> reply -> parse -> apply, with edit retries.

A backend only implements `complete(system, messages) -> (text, Usage)` and maps its SDK's
errors to ProposerError. When a reply cannot be applied (no blocks, a SEARCH that matches
nowhere, another file, a syntax error) the reply and the EditError go back to the model as the
next turn, up to `options.max_edit_retries` more times; usage is summed over every call.
"""

import os

from autoresearch.edits import EditError, apply_reply_files
from autoresearch.errors import AutoresearchError
from autoresearch.proposers.base import Context, Proposal, Proposer, ProposerError, ProposerOptions, Usage
from autoresearch.proposers.pricing import PriceTable
from autoresearch.proposers.prompt import build_messages

MAX_ECHO = 12_000  # characters of a failed reply sent back to the model (a reply may be huge)
REPLY_SEPARATOR = "\n\n----- reply {n} -----\n\n"
PLACEHOLDER_KEY = "not-needed"  # local OpenAI-compatible servers ignore the key but the SDK wants one


def resolve_key(options: ProposerOptions, env_var: str, backend: str) -> str:
    """Explicit option, then the environment; a base_url without a key gets a placeholder."""
    key = options.api_key or os.environ.get(env_var)
    if key:
        return key
    if options.base_url:
        return PLACEHOLDER_KEY
    raise AutoresearchError(f"the {backend} proposer needs an API key: set {env_var}")


class ChatProposer(Proposer):
    """Base of the LLM backends; subclasses set `name` and implement `complete`."""

    name = "llm"
    edits_files = False  # text in, text out: no scratch checkout needed
    can_fix = True
    speculative = True

    def __init__(self, options: ProposerOptions, model: str, key: str = ""):
        self.options = options
        self.model = model
        self.prices = PriceTable(options.prices)
        self._secret = key

    def complete(self, system: str, messages: list[dict]) -> tuple[str, Usage]:
        raise NotImplementedError

    def usage(self, input_tokens: int | None, output_tokens: int | None) -> Usage:
        i, o = int(input_tokens or 0), int(output_tokens or 0)
        return Usage(i, o, self.prices.cost(self.model, i, o))

    def propose(self, ctx: Context) -> Proposal:
        system, user = build_messages(ctx)
        prompt = f"[system]\n{system}\n\n[user]\n{user}"
        messages = [{"role": "user", "content": user}]
        usage, raws = Usage(), []
        attempts = 1 + max(0, self.options.max_edit_retries)
        last_error = ""
        for attempt in range(1, attempts + 1):
            try:
                text, used = self.complete(system, messages)
            except ProposerError as err:
                raise ProposerError(
                    self.redact(str(err)), usage + err.usage, _join_raws(raws)
                ) from None
            usage = usage + used
            raws.append(text)
            try:
                reply, new_files = apply_reply_files(ctx.files, text)
            except EditError as err:
                last_error = str(err)
                messages.append({"role": "assistant", "content": _clip(text) or "(empty reply)"})
                messages.append({"role": "user", "content": _feedback(last_error, attempt, attempts, list(ctx.files))})
                continue
            changed = [name for name in ctx.files if new_files[name] != ctx.files[name]]
            description = reply.description or reply.hypothesis or f"edit of {', '.join(changed)}"
            return Proposal(
                hypothesis=reply.hypothesis or description,
                description=description,
                files={name: new_files[name] for name in changed},
                model=self.model,
                usage=usage,
                prompt=prompt,
                raw=_join_raws(raws),
                attempts=attempt,
            )
        first_line = last_error.split("\n", 1)[0]
        raise ProposerError(
            f"{self.name}: no applicable edit after {attempts} replies; last problem: {first_line}",
            usage,
            _join_raws(raws),
        )

    def redact(self, text: str) -> str:
        """Never let a key reach a log: error texts sometimes echo request details."""
        if self._secret and len(self._secret) >= 8:
            text = text.replace(self._secret, "***")
        return text

    def error(self, message: str) -> ProposerError:
        return ProposerError(self.redact(f"{self.name}: {message}"))


def _feedback(error: str, attempt: int, attempts: int, files: list[str]) -> str:
    left = attempts - attempt
    return (
        f"Your edit could not be applied:\n\n{error}\n\n"
        f"Reply again in the same format with corrected SEARCH/REPLACE blocks for {' or '.join(files)} "
        f"({left} attempt{'s' if left != 1 else ''} left)."
    )


def _clip(text: str) -> str:
    if len(text) <= MAX_ECHO:
        return text
    half = MAX_ECHO // 2
    return text[:half] + f"\n[... {len(text) - MAX_ECHO} characters cut ...]\n" + text[-half:]


def _join_raws(raws: list[str]) -> str:
    if len(raws) <= 1:
        return raws[0] if raws else ""
    return "".join(REPLY_SEPARATOR.format(n=i + 1) + r for i, r in enumerate(raws)).lstrip()


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_text(err) -> str:
    """The server's own error message from an SDK status error, else the SDK's text."""
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(getattr(err, "message", err))
