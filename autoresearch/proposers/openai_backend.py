"""OpenAI Chat Completions, and every server that speaks it (vLLM, Ollama, llama.cpp, OpenRouter).

Key: options.api_key (the CLI has no key option), then OPENAI_API_KEY; with a base URL and no
key a placeholder is sent, since local servers do not check it. Base URL: --base-url, then
OPENAI_BASE_URL. The SDK retries 429 and 5xx itself (honouring retry-after)
`options.api_retries` times, each call limited to `options.timeout` seconds.
"""

import os

from autoresearch.proposers.base import REGISTRY, ProposerOptions, Usage
from autoresearch.proposers.llm import ChatProposer, error_text, one_line, resolve_key

DEFAULT_MODEL = "gpt-5.5"  # OpenAI's recommended start for complex reasoning and coding (Nov 2026)


class OpenAIProposer(ChatProposer):
    name = "openai"

    def __init__(self, options: ProposerOptions):
        import openai  # imported here: the SDK is slow to import and only this backend needs it

        key = resolve_key(options, "OPENAI_API_KEY", self.name)
        super().__init__(options, options.model or DEFAULT_MODEL, key)
        self.base_url = options.base_url or os.environ.get("OPENAI_BASE_URL") or None
        self.sdk = openai
        self.client = openai.OpenAI(
            api_key=key,
            base_url=self.base_url,
            timeout=options.timeout,
            max_retries=options.api_retries,
        )

    def complete(self, system: str, messages: list[dict]) -> tuple[str, Usage]:
        openai = self.sdk
        try:
            response = self.client.chat.completions.create(
                model=self.model,
                messages=[{"role": "system", "content": system}, *messages],
            )
        except openai.APITimeoutError:
            raise self.error(f"request timed out after {self.options.timeout:g}s") from None
        except openai.APIConnectionError:
            raise self.error(f"cannot connect to {self.base_url or 'api.openai.com'}") from None
        except openai.APIStatusError as err:
            raise self.error(f"HTTP {err.status_code}: {one_line(error_text(err))}") from None
        except (openai.OpenAIError, ValueError) as err:  # a body that is not the expected JSON
            raise self.error(f"unreadable response: {one_line(err)}") from None
        try:
            choice = response.choices[0]
            message = choice.message
            text = message.content or ""
        except (AttributeError, IndexError, TypeError):
            raise self.error("response has no choices[0].message") from None
        usage = getattr(response, "usage", None)
        used = self.usage(getattr(usage, "prompt_tokens", 0), getattr(usage, "completion_tokens", 0))
        if not text and getattr(message, "refusal", None):
            text = f"(refusal) {message.refusal}"
        return text, used


REGISTRY["openai"] = OpenAIProposer
