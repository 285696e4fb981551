"""Anthropic Messages API.

Key: options.api_key, then ANTHROPIC_API_KEY. Base URL: --base-url, then ANTHROPIC_BASE_URL (which the
SDK reads itself). The SDK retries 429, 529 and 5xx (honouring retry-after) `options.api_retries`
times, each call limited to `options.timeout` seconds.
"""

import os

from autoresearch.proposers.base import REGISTRY, ProposerOptions, Usage
from autoresearch.proposers.llm import ChatProposer, error_text, one_line, resolve_key

DEFAULT_MODEL = "claude-opus-5-5"  # the current Opus (Nov 2026)
MAX_TOKENS = 16_000  # room for thinking out loud plus a few blocks; a whole-file rewrite fits too


class AnthropicProposer(ChatProposer):
    name = "anthropic"

    def __init__(self, options: ProposerOptions):
        import anthropic  # imported here: the SDK is slow to import and only this backend needs it

        key = resolve_key(options, "ANTHROPIC_API_KEY", self.name)
        super().__init__(options, options.model or DEFAULT_MODEL, key)
        self.base_url = options.base_url or os.environ.get("ANTHROPIC_BASE_URL") or None
        self.sdk = anthropic
        self.client = anthropic.Anthropic(
            api_key=key,
            base_url=self.base_url,
            timeout=options.timeout,
            max_retries=options.api_retries,
        )

    def complete(self, system: str, messages: list[dict]) -> tuple[str, Usage]:
        anthropic = self.sdk
        try:
            response = self.client.messages.create(
                model=self.model,
                max_tokens=MAX_TOKENS,
                system=system,
                messages=messages,
            )
        except anthropic.APITimeoutError:
            raise self.error(f"request timed out after {self.options.timeout:g}s") from None
        except anthropic.APIConnectionError:
            raise self.error(f"cannot connect to {self.base_url or 'api.anthropic.com'}") from None
        except anthropic.APIStatusError as err:
            raise self.error(f"HTTP {err.status_code}: {one_line(error_text(err))}") from None
        except (anthropic.AnthropicError, ValueError) as err:  # a body that is not the expected JSON
            raise self.error(f"unreadable response: {one_line(err)}") from None
        try:
            text = "".join(
                block.text for block in response.content if getattr(block, "type", "") == "text"
            )
        except (AttributeError, TypeError):
            raise self.error("response has no content blocks") from None
        usage = getattr(response, "usage", None)
        used = self.usage(getattr(usage, "input_tokens", 0), getattr(usage, "output_tokens", 0))
        return text, used


REGISTRY["anthropic"] = AnthropicProposer
