"""The lab as the harness sees it: where it is, `autoresearch prepare`, and prepare.py's fixed
contract (constants, the metric, the time budget) read from its source without importing it."""

import ast
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from autoresearch.errors import AutoresearchError

# The lab's settings (docs/architecture.md). Passed through to training; the credential filter
# would otherwise drop AUTORESEARCH_EVAL_TOKENS for its TOKEN.
LAB_VARIABLES = ("AUTORESEARCH_PROFILE", "AUTORESEARCH_TIME_BUDGET", "AUTORESEARCH_CACHE",
                 "AUTORESEARCH_SOURCE", "AUTORESEARCH_EVAL_TOKENS", "AUTORESEARCH_SEED")
SEED = 42  # train.py's default seed; trial k of an experiment trains with SEED + k - 1

BANNER = re.compile(r"^# ?-{10,}\s*$")
DEFAULT_BUDGET = 300.0  # seconds, when neither --time-budget nor prepare.py says otherwise


def find_lab(start: Path) -> Path:
    """The nearest folder at or above `start` that holds prepare.py and train.py."""
    for folder in [start, *start.parents]:
        if (folder / "prepare.py").is_file() and (folder / "train.py").is_file():
            return folder
    raise AutoresearchError(
        f"no prepare.py and train.py found in {start} or above; run this inside an autoresearch checkout"
    )


def run_prepare(args: list[str], start: Path | None = None) -> int:
    """Run `python prepare.py ARGS` in the lab folder; returns its exit code."""
    lab = find_lab((start or Path.cwd()).resolve())
    return subprocess.call([sys.executable, "prepare.py", *args], cwd=lab)


# ---------------------------------------------------------------------------
# The lab contract, read from prepare.py in the worktree
# ---------------------------------------------------------------------------


def lab_contract(prepare_py: str) -> str:
    """prepare.py's fixed parts as compact text: the sections whose banner says they are fixed
    (`# Profiles (fixed: ...)`, `# Evaluation (fixed: this is the metric)`), and evaluate_bpb if
    no such section holds it. Without banners: the UPPER_CASE constants and evaluate_bpb."""
    lines = prepare_py.splitlines()
    sections, title, start = [], None, 0
    for i, line in enumerate(lines):
        banner = BANNER.match(line) and i + 2 < len(lines) and BANNER.match(lines[i + 2])
        if banner and lines[i + 1].startswith("#"):
            if title is not None:
                sections.append((title, lines[start:i]))
            title, start = lines[i + 1], i
    if title is not None:
        sections.append((title, lines[start:]))
    fixed = ["\n".join(body).strip() for title, body in sections if "fixed" in title.lower()]
    text = "\n\n".join(fixed)
    if "def evaluate_bpb" not in text:
        parts = _constants_and_metric(prepare_py)
        text = "\n\n".join([text, *parts] if text else parts)
    return text.strip() + "\n"


def _constants_and_metric(prepare_py: str) -> list[str]:
    try:
        tree = ast.parse(prepare_py)
    except SyntaxError:
        return [prepare_py]
    lines = prepare_py.splitlines()
    constants, metric = [], []
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            if names and all(name.isupper() for name in names):
                constants.append("\n".join(lines[node.lineno - 1 : node.end_lineno]))
        elif isinstance(node, ast.FunctionDef) and node.name == "evaluate_bpb":
            first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
            metric.append("\n".join(lines[first - 1 : node.end_lineno]))
    return (["# prepare.py constants (fixed)\n" + "\n".join(constants)] if constants else []) + metric


def lab_time_budget(prepare_py: str, profile: str) -> float:
    """The training budget prepare.py sets for this profile: TIME_BUDGET in the profile's entry
    of a dict (`"cpu": dict(TIME_BUDGET=120, ...)` or `{"TIME_BUDGET": 120}`), else a top-level
    `TIME_BUDGET = <number>`, else DEFAULT_BUDGET."""
    try:
        tree = ast.parse(prepare_py)
    except SyntaxError:
        return DEFAULT_BUDGET
    top = None
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == profile:
                    found = _dict_number(value, "TIME_BUDGET")
                    if found:
                        return found
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "TIME_BUDGET" for t in node.targets):
            top = _number(node.value) or top
    return top or DEFAULT_BUDGET


def _dict_number(node, name: str) -> float | None:
    """node["name"] (any case) of a dict literal or a dict(...) call."""
    if isinstance(node, ast.Dict):
        pairs = [(k.value, v) for k, v in zip(node.keys, node.values) if isinstance(k, ast.Constant)]
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        pairs = [(kw.arg, kw.value) for kw in node.keywords if kw.arg]
    else:
        return None
    for key, value in pairs:
        if isinstance(key, str) and key.upper() == name:
            return _number(value)
    return None


def _number(node) -> float | None:
    try:
        value = ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        return None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def detect_profile() -> str:
    """The lab's default profile: gpu when this machine has a GPU, whether or not torch can use
    it (then the gpu check says why not and the fix, instead of the night quietly training the
    cpu profile); cpu otherwise. Asked of a fresh Python: the harness never starts CUDA."""
    from autoresearch.gpus import inspect

    report = inspect()
    return "gpu" if report.ok or report.present else "cpu"


@dataclass(frozen=True)
class LabSettings:
    """The lab as one run trains it, resolved once at the start: profile, budget, timeout, the
    variables every training gets (named here, as the credential filter would drop
    AUTORESEARCH_EVAL_TOKENS for its TOKEN) and the lab contract the proposer is shown."""

    profile: str
    budget: float
    timeout: float
    variables: dict
    contract: str

    @classmethod
    def resolve(cls, config, prepare_py: str, environ: dict) -> "LabSettings":
        profile = config.profile or environ.get("AUTORESEARCH_PROFILE") or detect_profile()
        budget = config.time_budget or _float(environ.get("AUTORESEARCH_TIME_BUDGET")) or lab_time_budget(
            prepare_py, profile)
        variables = {name: environ[name] for name in LAB_VARIABLES if environ.get(name)}
        variables.update(config.extra_env)
        if config.profile:
            variables["AUTORESEARCH_PROFILE"] = config.profile
        if config.time_budget:
            variables["AUTORESEARCH_TIME_BUDGET"] = f"{config.time_budget:g}"
        return cls(profile, budget, config.timeout or budget + max(budget, 120.0), variables, lab_contract(prepare_py))

    def env(self, trial: int = 1) -> dict[str, str]:
        """The lab's variables and the trial's seed: repeats of one commit measure run-to-run
        variation, not one run twice."""
        return {**self.variables, "AUTORESEARCH_SEED": str(SEED + trial - 1)}


def _float(text: str | None) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None
