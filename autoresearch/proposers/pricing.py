"""What an LLM call cost: USD per 1M input / output tokens, by model name.

Prices change: the built-in table is a convenience (list prices as reported in November 2026),
not an authority. Override it, per model, with `ProposerOptions.prices` or with a JSON
file named by the environment variable AUTORESEARCH_PRICES:

    {"gpt-5": [1.25, 10.0], "my-local-model": {"input": 0, "output": 0}}

Lookup: the options first, then the file, then the table; each by exact name, then as a dated
snapshot of a known name ("claude-sonnet-4-5-20250929" -> "claude-sonnet-4-5"), ignoring a
provider prefix such as "openai/" (OpenRouter). An unknown model costs 0; its tokens are still counted.

Cached input (a coding agent re-reads the same long context every turn, so most of its input is
cached) is charged at the model family's cached share of the input price: 10% for GPT-5 and
Claude models, 25% for GPT-4.1, 50% for GPT-4o. A model of no known family pays the full input
price for cached tokens, an upper bound.
"""

import json
import os
import re
from pathlib import Path

from autoresearch.errors import AutoresearchError

PRICES_ENV = "AUTORESEARCH_PRICES"
SNAPSHOT = re.compile(r"^(.+?)-(?:\d{4}-?\d{2}-?\d{2}|latest)$")  # gpt-5-mini-2025-08-07

# model -> (USD per 1M input tokens, USD per 1M output tokens). Standard tier, short context,
# no caching. Checked against the providers' pricing pages as reported in November 2026.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-5.5": (5.0, 30.0),
    "gpt-5.5-pro": (30.0, 180.0),
    "gpt-5.4": (2.50, 15.0),
    "gpt-5.4-pro": (30.0, 180.0),
    "gpt-5.4-mini": (0.75, 4.50),
    "gpt-5.4-nano": (0.20, 1.25),
    "gpt-5": (1.25, 10.0),
    "gpt-5-mini": (0.25, 2.0),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-5.1": (1.25, 10.0),
    # Codex models (what `codex exec -m` takes). gpt-5-codex: its page on developers.openai.com;
    # gpt-5.2/5.3-codex: the OpenAI Codex rate card (credits at 25 per USD) and GitHub's
    # Copilot model price table, which agree; gpt-5.1-codex*: OpenAI's pricing page as reported
    # in November 2026. gpt-5.3-codex-spark (a research preview) has no API price: not listed.
    "gpt-5.3-codex": (1.75, 14.0),
    "gpt-5.2-codex": (1.75, 14.0),
    "gpt-5.2": (1.75, 14.0),
    "gpt-5.1-codex-max": (1.25, 10.0),
    "gpt-5.1-codex": (1.25, 10.0),
    "gpt-5.1-codex-mini": (0.25, 2.0),
    "gpt-5-codex": (1.25, 10.0),
    "codex-mini-latest": (1.50, 6.0),
    "gpt-4.1": (2.0, 8.0),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4o": (2.50, 10.0),
    "gpt-4o-mini": (0.15, 0.60),
    "claude-fable-5-1": (10.0, 50.0),
    "claude-opus-5-5": (4.0, 20.0),
    "claude-opus-5": (5.0, 25.0),
    "claude-sonnet-5-5": (2.0, 10.0),
    "claude-opus-4-6": (5.0, 25.0),
    "claude-opus-4-5": (5.0, 25.0),
    "claude-opus-4-1": (15.0, 75.0),
    "claude-sonnet-4-6": (3.0, 15.0),
    "claude-sonnet-4-5": (3.0, 15.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-haiku-4-5": (1.0, 5.0),
}

# Share of the input price charged for a cached input token, by model-name prefix (first match).
CACHED_INPUT_SHARE: list[tuple[str, float]] = [
    ("gpt-5", 0.1),
    ("codex-mini", 0.25),
    ("gpt-4.1", 0.25),
    ("gpt-4o", 0.5),
    ("claude-", 0.1),  # cache reads; cache writes cost more, and are charged as plain input here
]


def cached_share(model: str) -> float:
    name = model.rsplit("/", 1)[-1]
    for prefix, share in CACHED_INPUT_SHARE:
        if name.startswith(prefix):
            return share
    return 1.0


def load_prices_file(path: str | os.PathLike) -> dict[str, tuple[float, float]]:
    """Read a prices JSON file; raises AutoresearchError with the reason if it is unusable."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as err:
        raise AutoresearchError(f"{PRICES_ENV}={path}: cannot read it ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise AutoresearchError(f"{PRICES_ENV}={path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(data, dict):
        raise AutoresearchError(f"{PRICES_ENV}={path}: expected an object of model -> [input, output]")
    return normalise(data, source=f"{PRICES_ENV}={path}")


def normalise(prices: dict, source: str = "prices") -> dict[str, tuple[float, float]]:
    """Accept {model: [in, out]} or {model: {"input": in, "output": out}}."""
    out = {}
    for model, value in prices.items():
        if isinstance(value, dict):
            value = (value.get("input"), value.get("output"))
        try:
            pair = (float(value[0]), float(value[1]))
        except (TypeError, ValueError, IndexError, KeyError):
            raise AutoresearchError(
                f"{source}: price of {model!r} must be [input, output] USD per 1M tokens"
            ) from None
        if pair[0] < 0 or pair[1] < 0:
            raise AutoresearchError(f"{source}: price of {model!r} is negative")
        out[str(model)] = pair
    return out


class PriceTable:
    """Options, then AUTORESEARCH_PRICES file, then the built-in table."""

    def __init__(self, overrides: dict | None = None, env: dict | None = None):
        env = os.environ if env is None else env
        self.layers = []
        if overrides:
            self.layers.append(normalise(overrides, source="--prices"))
        if env.get(PRICES_ENV):
            self.layers.append(load_prices_file(env[PRICES_ENV]))
        self.layers.append(PRICES)

    def lookup(self, model: str) -> tuple[float, float] | None:
        names = [model]
        if "/" in model:
            names.append(model.rsplit("/", 1)[1])
        for table in self.layers:
            for name in names:
                if name in table:
                    return table[name]
            for name in names:
                m = SNAPSHOT.match(name)
                if m and m.group(1) in table:
                    return table[m.group(1)]
        return None

    def cost(self, model: str, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0) -> float:
        """USD; `cached_input_tokens` are the part of `input_tokens` read from a prompt cache."""
        price = self.lookup(model)
        if price is None:
            return 0.0
        cached = min(max(cached_input_tokens, 0), input_tokens)
        fresh = input_tokens - cached
        return (fresh * price[0] + cached * price[0] * cached_share(model) + output_tokens * price[1]) / 1_000_000
