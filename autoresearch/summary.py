"""Read what train.py printed: the `---` summary block and the `FAIL` line of a diverged run.

train.py ends a successful run with a line `---` followed by `key: value` lines:

    ---
    val_bpb:          0.997900
    num_steps:        953
    device:           cuda:NVIDIA H100 80GB HBM3

A run whose loss diverges prints a line starting with `FAIL` (maybe with a reason) and exits 1.
"""

import re

SUMMARY_KEYS = (
    "val_bpb",
    "training_seconds",
    "total_seconds",
    "peak_vram_mb",
    "mfu_percent",
    "total_tokens_M",
    "num_steps",
    "num_params_M",
    "depth",
    "startup_seconds",
    "device",
    "profile",
    "time_budget",
)

INT_KEYS = frozenset({"num_steps", "depth"})
TEXT_KEYS = frozenset({"device", "profile"})  # never numbers, even if they look like one

# Lower-case keys only: a traceback line such as `RuntimeError: boom` is not a summary field.
_FIELD = re.compile(r"^([a-z_][A-Za-z0-9_]*)\s*:\s*(.*?)$")
_FAIL = re.compile(r"^FAIL\b.*$")
# Upstream prints FAIL straight after a `\r`-refreshed progress line, so it can share its line.
_FAIL_AFTER_PROGRESS = re.compile(r"^step\b.*?\s(FAIL\b.*)$")


def _lines(text: str) -> list[str]:
    """Complete lines only: a last line with no line ending was cut off mid-write and is dropped."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith(("\n", "\r")):
        lines.pop()
    return [line.rstrip("\r\n") for line in lines]


def _value(key: str, raw: str) -> float | int | str:
    if key in TEXT_KEYS:
        return raw
    try:
        number = float(raw)  # also takes 'nan', 'inf', '-inf'
    except ValueError:
        return raw
    if key in INT_KEYS and number.is_integer():
        return int(number)
    return number


def parse_summary(text: str) -> dict[str, float | int | str]:
    """The `key: value` fields after the last `---` line; {} when there is no such line.

    Numbers become floats (ints for num_steps and depth), other values stay strings. Unknown
    lower-case keys are kept; lines that are not fields are ignored. A last line without a line
    ending (output cut off mid-write) is ignored, so a truncated number is never read as a value.
    """
    lines = _lines(text)
    start = None
    for i, line in enumerate(lines):
        if line.strip() == "---":
            start = i + 1
    if start is None:
        return {}
    fields: dict[str, float | int | str] = {}
    for line in lines[start:]:
        match = _FIELD.match(line.strip())
        if match is None:
            continue
        key, raw = match.groups()
        if raw:
            fields[key] = _value(key, raw)
    return fields


def diverged(text: str) -> str | None:
    """The last `FAIL ...` line train.py printed (the reason included), or None if there is none."""
    found = None
    for line in text.splitlines():
        line = line.strip()
        match = _FAIL.match(line) or _FAIL_AFTER_PROGRESS.match(line)
        if match:
            found = match.group(match.lastindex or 0).strip()
    return found
