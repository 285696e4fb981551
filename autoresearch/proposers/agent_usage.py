"""Tokens and cost of one coding-agent run, read from what the agent printed.

Two machine-readable reports are understood, wherever they sit among other output lines (the
command's stderr is merged into its stdout, so prose and warnings come with them):

- Claude Code, `claude -p --output-format json`: one object `{"type": "result", "subtype", "is_error",
  "num_turns", "total_cost_usd", "result": <final text>, "usage": {"input_tokens",
  "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens"}, ...}`; with
  `--verbose` a JSON array of all messages ending in that object; `stream-json` ends with it too.
  Claude prices the run itself; an error result (`is_error`) still carries what it cost.
- Codex, `codex exec --json`: one event per line. `turn.completed` carries `usage`
  (`input_tokens`, which include `cached_input_tokens`, and `output_tokens`) but no price, so it
  is priced from our table by model; `item.completed` with an `agent_message` item carries the
  agent's text; `turn.failed` and `error` say why a turn failed (with no usage).

Anything else (a plain script) reports no usage. The returned text is the output with each JSON
report replaced by the agent text inside it, so HYPOTHESIS:/DESCRIPTION: lines that the agent
wrote in its final message are found by the usual line parser.
"""

import json

from autoresearch.proposers.base import Usage
from autoresearch.proposers.pricing import PriceTable

_DECODER = json.JSONDecoder()


def usage_from_output(output: str, model: str, prices: PriceTable) -> tuple[Usage, str]:
    """(usage, text for the HYPOTHESIS/DESCRIPTION parser) of one agent run's output."""
    spans = list(_json_spans(output))
    claude, codex = _Claude(), _Codex()
    pieces, last = [], 0
    for start, end, value in spans:
        pieces.append(output[last:start])
        texts = []
        for obj in value if isinstance(value, list) else [value]:
            if isinstance(obj, dict):
                text = claude.feed(obj) if obj.get("type") == "result" else codex.feed(obj)
                if text:
                    texts.append(text)
        pieces.append("\n".join(texts) + "\n" if texts else "")
        last = end
    pieces.append(output[last:])
    text = "".join(pieces) if spans else output

    if claude.seen:
        usage = claude.usage(model, prices)
    elif codex.seen:
        usage = codex.usage(model, prices)
    else:
        usage = Usage(note="the command reported no token usage")
    return usage, text


def _json_spans(output: str):
    """(start, end, value) of each JSON object or array that begins a line.

    Lines are tried one at a time, so a line of prose, a truncated event from a killed agent or a
    stray brace costs only that line; a pretty-printed object spanning lines is decoded whole.
    """
    pos, n = 0, len(output)
    while pos < n:
        line_end = output.find("\n", pos)
        line_end = n if line_end < 0 else line_end + 1
        start = pos
        while start < line_end and output[start] in " \t\r":
            start += 1
        if start < line_end and output[start] in "{[":
            try:
                value, end = _DECODER.raw_decode(output, start)
            except (json.JSONDecodeError, RecursionError):
                value = None
            if isinstance(value, (dict, list)):
                yield start, end, value
                nl = output.find("\n", end)
                pos = n if nl < 0 else nl + 1
                continue
        pos = line_end


def _int(value) -> int:
    try:
        return max(int(value), 0)
    except (TypeError, ValueError, OverflowError):
        return 0


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if value >= 0 else None


class _Claude:
    """Sums Claude Code result objects (one per `claude -p`; a script may run several)."""

    def __init__(self):
        self.seen = 0
        self.input = self.cached = self.output = 0
        self.cost = 0.0
        self.unpriced = []  # results without total_cost_usd, priced from the table instead
        self.errors = []
        self.models = set()

    def feed(self, obj: dict) -> str:
        self.seen += 1
        usage = obj.get("usage") if isinstance(obj.get("usage"), dict) else {}
        fresh, written = _int(usage.get("input_tokens")), _int(usage.get("cache_creation_input_tokens"))
        read, out = _int(usage.get("cache_read_input_tokens")), _int(usage.get("output_tokens"))
        self.input += fresh + written + read
        self.cached += read
        self.output += out
        model_usage = obj.get("modelUsage") if isinstance(obj.get("modelUsage"), dict) else {}
        self.models.update(model_usage)
        cost = _number(obj.get("total_cost_usd"))
        if cost is None:  # older versions and some error paths: the per-model costs, else our table
            costs = [_number(m.get("costUSD")) for m in model_usage.values() if isinstance(m, dict)]
            cost = sum(costs) if costs and None not in costs else None
        if cost is None:
            self.unpriced.append((fresh + written + read, read, out))
        else:
            self.cost += cost
        subtype = str(obj.get("subtype") or "")
        if subtype not in ("", "success"):
            self.errors.append(subtype)  # error_max_turns, error_during_execution, error_max_budget_usd
        elif obj.get("is_error"):
            self.errors.append("an error result")  # an API error comes as subtype success
        result = obj.get("result")
        return result if isinstance(result, str) else ""

    def usage(self, model: str, prices: PriceTable) -> Usage:
        notes = []
        if self.unpriced:
            name = model or (next(iter(self.models)) if len(self.models) == 1 else "")
            if name and prices.lookup(name):
                self.cost += sum(prices.cost(name, i, o, c) for i, c, o in self.unpriced)
                notes.append(f"Claude reported no cost; priced from the table as {name!r}")
            else:
                notes.append(f"Claude reported no cost and {_unknown(name)}: cost counted as 0")
        if self.errors:
            notes.append("Claude ended with " + ", ".join(self.errors) + " (its cost is counted)")
        return Usage(self.input, self.output, self.cost, self.cached, "; ".join(notes))


CODEX_EVENTS = {"thread.started", "turn.started", "turn.completed", "turn.failed",
                "item.started", "item.updated", "item.completed", "error"}


class _Codex:
    """Codex exec events: usage is the thread's running total, so the last one of a thread counts."""

    def __init__(self):
        self.seen = 0
        self.threads = []  # [input, cached, output] per thread, the latest total of each
        self.completed = 0
        self.failures = []

    def feed(self, obj: dict) -> str:
        kind = obj.get("type")
        if kind not in CODEX_EVENTS:
            return ""
        self.seen += 1
        if kind == "thread.started" or not self.threads:
            self.threads.append([0, 0, 0])
        if kind == "turn.completed":
            self.completed += 1
            usage = obj.get("usage") if isinstance(obj.get("usage"), dict) else {}
            self.threads[-1] = [_int(usage.get(k)) for k in ("input_tokens", "cached_input_tokens", "output_tokens")]
        elif kind in ("turn.failed", "error"):
            error = obj.get("error") if kind == "turn.failed" else obj
            message = error.get("message") if isinstance(error, dict) else None
            self.failures.append(" ".join(str(message or kind).split())[:200])
        elif kind == "item.completed":
            item = obj.get("item")
            if isinstance(item, dict) and item.get("type") == "agent_message" and isinstance(item.get("text"), str):
                return item["text"]
        return ""

    def usage(self, model: str, prices: PriceTable) -> Usage:
        total = sum(t[0] for t in self.threads)
        cached = min(sum(t[1] for t in self.threads), total)
        out = sum(t[2] for t in self.threads)
        failures = "; ".join(self.failures[-2:])
        notes = []
        if not self.completed:
            why = f"its turn failed: {failures}" if failures else "it was stopped or crashed"
            notes.append(f"Codex reported no usage ({why}): cost unknown, counted as 0")
        elif failures:
            notes.append(f"Codex reported an error: {failures}")
        cost = 0.0
        if total or out:
            if model and prices.lookup(model):
                cost = prices.cost(model, total, out, cached)
            else:
                notes.append(f"Codex reports tokens, not prices, and {_unknown(model)}: cost counted as 0")
        return Usage(total, out, cost, cached, "; ".join(notes))


def _unknown(model: str) -> str:
    if not model:
        return "the model is unknown (pass --model to price it)"
    return f"there is no price for model {model!r} (add it with AUTORESEARCH_PRICES)"
