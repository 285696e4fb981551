"""Start-up checks (`autoresearch doctor`, and `preflight` before a run's baseline trains).

Each check is cheap and ends in a Check: ok or not, what was seen, and a one-line fix. A night that
would die at 2 a.m. on a missing tokenizer, a rejected key or a full disk should die in the first
second instead:

- gpu:      the gpu profile needs a CUDA device torch sees (gpus.inspect, in a fresh process), else
            why not and the fix: a CPU build, a torch for a newer CUDA than the driver, ...
- data:     the active source (AUTORESEARCH_SOURCE, else the profile's default) is prepared under
            AUTORESEARCH_CACHE (default ~/.cache/autoresearch) as prepare.py lays it out: data/
            with val.parquet and a training shard, tokenizer/ for the profile's VOCAB_SIZE, and
            tokens/ made from that tokenizer and those shards (the same test the loader makes).
- disk:     at least MIN_FREE_GB free where results/ lives.
- proposer: openai / anthropic: the key is there and accepted, by one cheap call that generates
            nothing (GET /models, GET /models/{model}); hparam / optuna: their settings.
- agent:    --proposer command: the command's first word is found (PATH, or a path in the
            checkout), and the agent a harness/ template runs.

A target declared in autoresearch.toml has checks of its own instead of gpu and data
(doctor_target.py, which also holds preflight_run: the lab's or the target's, for loop.run).
"""

import ast
import hashlib
import json
import os
import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from autoresearch.errors import AutoresearchError
from autoresearch.proposers.base import ProposerOptions

# A night writes a few MB of logs, but git objects, the worktree and torch's compile caches need
# room too, and a full disk mid-fsync would cost the row being written: refuse below 2 GiB.
MIN_FREE_GB = 2.0
CHECK_TIMEOUT = 15.0  # seconds for the one API call
TEMPLATE_AGENTS = {"claude.sh": "claude", "codex.sh": "codex"}  # harness/ templates and what they exec


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""  # one line; empty when ok


def run_checks(repo_root: Path, profile: str, proposer: str | None, options: ProposerOptions | None = None,
               env: Mapping[str, str] | None = None) -> list[Check]:
    """Every check for a run of `proposer` on `profile` from the checkout at `repo_root`.
    proposer None (an in-process proposer a test or a caller built itself): no proposer checks."""
    env = os.environ if env is None else env
    options = options or ProposerOptions()
    repo_root = Path(repo_root)
    checks = [check_gpu(profile, env), check_data(repo_root, profile, env), check_disk(repo_root / "results")]
    if proposer is None:
        return checks
    checks.append(check_proposer(proposer, options, env))
    if proposer == "command":
        checks.append(check_agent(options.command, repo_root, env))
    return checks


def preflight(repo_root: Path, profile: str, proposer: str | None, options: ProposerOptions | None = None,
              env: Mapping[str, str] | None = None) -> list[Check]:
    """run_checks, raising AutoresearchError with the first failure as one line."""
    checks = run_checks(repo_root, profile, proposer, options, env)
    for c in checks:
        if not c.ok:
            raise AutoresearchError(f"{c.name}: {c.detail}; fix: {c.fix} (see `autoresearch doctor`)")
    return checks


# ---------------------------------------------------------------------------
# gpu, data, disk
# ---------------------------------------------------------------------------


def check_gpu(profile: str, env: Mapping[str, str] | None = None) -> Check:
    """The gpu profile needs torch to see a GPU: asked of a fresh Python (gpus.inspect), never
    this process (no CUDA context in the harness); a CPU build of torch, a torch built for a newer
    CUDA than the driver, CUDA_VISIBLE_DEVICES or a missing /dev/nvidia-uvm is named with its fix."""
    if profile != "gpu":  # without starting torch (~2 s): preflight runs before every run
        return Check("gpu", True, f"none needed: profile {profile} trains on the CPU")
    from autoresearch.gpus import inspect

    report = inspect(os.environ if env is None else env)
    if report.ok:
        return Check("gpu", True, report.detail)
    return Check("gpu", False, f"profile gpu but no CUDA device is visible to torch: {report.detail}", report.fix)


def check_data(repo_root: Path, profile: str, env: Mapping[str, str]) -> Check:
    prepare_py = repo_root / "prepare.py"
    try:
        text = prepare_py.read_text()
        if "PROFILES" not in text:  # a lab of its own (a stand-in, a fork): its layout is not ours to check
            return Check("data", True, f"not checked: {prepare_py} has no PROFILES table")
        vocab, default_source = lab_vocab_and_source(text, profile)
    except (OSError, SyntaxError, ValueError) as err:
        return Check("data", False, f"cannot read the profiles in {prepare_py}: {err}", "run from an autoresearch checkout")
    cache = Path(env.get("AUTORESEARCH_CACHE") or Path.home() / ".cache" / "autoresearch").expanduser()
    source = env.get("AUTORESEARCH_SOURCE") or default_source
    root = cache / source
    fix = (f"autoresearch prepare --profile {profile} --source {source}" if source in ("climbmix", "tinystories", "stdlib")
           else f"autoresearch prepare --profile {profile} --from-dir PATH (or --from-parquet PATH) --name {source}")
    shards = sorted((root / "data").glob("*.parquet"))
    if not (root / "data" / "val.parquet").is_file() or len(shards) < 2:
        return Check("data", False, f"source {source!r} is not prepared: no val.parquet and training shards in {root / 'data'}", fix)
    tok = root / "tokenizer"
    missing = [n for n in ("tokenizer.pkl", "token_bytes.pt", "meta.json") if not (tok / n).is_file()]
    if missing:
        return Check("data", False, f"no {', '.join(missing)} in {tok}", fix)
    tok_vocab = _json(tok / "meta.json").get("vocab_size")
    if tok_vocab != vocab:
        return Check("data", False, f"the tokenizer in {tok} has vocab {tok_vocab}, profile {profile} needs {vocab}", fix)
    meta = _json(root / "tokens" / "meta.json")
    digest = hashlib.sha256((tok / "tokenizer.pkl").read_bytes()).hexdigest()
    made = meta.get("shards", {})
    stale = [p.name for p in shards
             if made.get(p.stem, {}).get("size") != p.stat().st_size or not (root / "tokens" / f"{p.stem}.npy").is_file()]
    if meta.get("tokenizer") != digest or stale:
        what = "were made with another tokenizer" if meta.get("tokenizer") != digest else f"miss or are stale for {', '.join(stale[:3])}"
        return Check("data", False, f"the tokens in {root / 'tokens'} {what}", fix)
    tokens = sum(int(s.get("tokens", 0)) for s in made.values())
    return Check("data", True, f"{source}: {len(shards) - 1} training shards + val, vocab {vocab}, {tokens / 1e6:.1f}M tokens in {root}")


def lab_vocab_and_source(prepare_py: str, profile: str) -> tuple[int, str]:
    """(VOCAB_SIZE, default source) of `profile`, read from prepare.py's PROFILES and DEFAULT_SOURCE."""
    profiles = defaults = None
    for node in ast.parse(prepare_py).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id == "PROFILES":
                profiles = node.value
            elif node.targets[0].id == "DEFAULT_SOURCE":
                defaults = ast.literal_eval(node.value)
    entry = None
    if isinstance(profiles, ast.Dict):
        entry = next((v for k, v in zip(profiles.keys, profiles.values) if isinstance(k, ast.Constant) and k.value == profile), None)
    if not (isinstance(entry, ast.Call) and isinstance(defaults, dict) and profile in defaults):
        raise ValueError(f"no profile {profile!r}")
    vocab = next((ast.literal_eval(kw.value) for kw in entry.keywords if kw.arg == "VOCAB_SIZE"), None)
    if not isinstance(vocab, int):
        raise ValueError(f"profile {profile!r} has no VOCAB_SIZE")
    return vocab, defaults[profile]


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def check_disk(results: Path, min_free_gb: float = MIN_FREE_GB) -> Check:
    where = results
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free / 2**30
    if free < min_free_gb:
        return Check("disk", False, f"{free:.1f} GiB free at {where} (under {min_free_gb:g} GiB)",
                     "free space on that disk, or run from a checkout on another one")
    return Check("disk", True, f"{free:.0f} GiB free at {where}")


# ---------------------------------------------------------------------------
# proposer and agent
# ---------------------------------------------------------------------------


def check_proposer(proposer: str, options: ProposerOptions, env: Mapping[str, str]) -> Check:
    from autoresearch.proposers import REGISTRY

    if proposer not in REGISTRY:
        return Check("proposer", False, f"unknown proposer {proposer!r}", f"use one of: {', '.join(sorted(REGISTRY))}")
    if proposer == "openai":
        return _check_openai(options, env)
    if proposer == "anthropic":
        return _check_anthropic(options, env)
    if proposer == "optuna":
        from autoresearch.proposers.optuna_backend import SAMPLERS

        sampler = (options.sampler or "tpe").lower()
        if sampler not in SAMPLERS:
            return Check("proposer", False, f"unknown sampler {options.sampler!r}", f"use --sampler {' or '.join(SAMPLERS)}")
        try:
            import optuna  # noqa: F401

            if sampler == "cmaes":
                import cmaes  # noqa: F401  (Optuna imports it only when CMA-ES samples)
        except ImportError as err:
            return Check("proposer", False, f"optuna {sampler}: {err}", "pip install 'optuna>=4' cmaes")
        return Check("proposer", True, f"optuna, sampler {sampler}: no key needed")
    if proposer == "command":
        return Check("proposer", True, "command: the agent's own login (see the agent check)")
    return Check("proposer", True, f"{proposer}: no key needed")


def _check_openai(options: ProposerOptions, env: Mapping[str, str]) -> Check:
    import openai

    from autoresearch.proposers.llm import PLACEHOLDER_KEY
    from autoresearch.proposers.openai_backend import DEFAULT_MODEL

    key = options.api_key or env.get("OPENAI_API_KEY")
    base_url = options.base_url or env.get("OPENAI_BASE_URL")
    if not key and not base_url:
        return Check("proposer", False, "OPENAI_API_KEY is not set", "export OPENAI_API_KEY=... (or --base-url for a local server)")
    model = options.model or DEFAULT_MODEL
    where = base_url or "api.openai.com"
    client = openai.OpenAI(api_key=key or PLACEHOLDER_KEY, base_url=base_url or "https://api.openai.com/v1",
                           timeout=CHECK_TIMEOUT, max_retries=0)
    try:
        ids = [m.id for m in client.models.list()]
    except openai.NotFoundError:  # a server without /models answered: it is there, the key is not refused
        return Check("proposer", True, f"openai at {where} answers (no model list to check {model} against)")
    except openai.APIStatusError as err:
        return _status_failure("openai", err, key, "OPENAI_API_KEY", where)
    except openai.APIConnectionError:
        return Check("proposer", False, f"openai: cannot connect to {where}", "check --base-url / OPENAI_BASE_URL and the network")
    if ids and not any(i == model or i.startswith(model + ":") for i in ids):
        offered = ", ".join(sorted(ids)[:5]) + (", ..." if len(ids) > 5 else "")
        return Check("proposer", False, f"openai at {where} accepts the key but offers no model {model!r}",
                     f"pass --model with one of: {offered}")
    return Check("proposer", True, f"openai at {where} accepts the key; model {model} offered")


def _check_anthropic(options: ProposerOptions, env: Mapping[str, str]) -> Check:
    import anthropic

    from autoresearch.proposers.anthropic_backend import DEFAULT_MODEL

    key = options.api_key or env.get("ANTHROPIC_API_KEY")
    if not key:
        return Check("proposer", False, "ANTHROPIC_API_KEY is not set", "export ANTHROPIC_API_KEY=...")
    base_url = options.base_url or env.get("ANTHROPIC_BASE_URL") or "https://api.anthropic.com"
    model = options.model or DEFAULT_MODEL
    client = anthropic.Anthropic(api_key=key, base_url=base_url, timeout=CHECK_TIMEOUT, max_retries=0)
    try:
        client.models.retrieve(model)
    except anthropic.NotFoundError:
        return Check("proposer", False, f"anthropic accepts the key but has no model {model!r}",
                     "pass --model with a current model name")
    except anthropic.APIStatusError as err:
        return _status_failure("anthropic", err, key, "ANTHROPIC_API_KEY", base_url)
    except anthropic.APIConnectionError:
        return Check("proposer", False, f"anthropic: cannot connect to {base_url}", "check --base-url / ANTHROPIC_BASE_URL and the network")
    return Check("proposer", True, f"anthropic accepts the key; model {model} exists")


def _status_failure(backend: str, err, key: str | None, variable: str, where: str) -> Check:
    from autoresearch.proposers.llm import error_text, one_line

    message = one_line(error_text(err), 160)
    if key:
        message = message.replace(key, "***")  # some servers echo the key back
    code = err.status_code
    if code in (401, 403):
        return Check("proposer", False, f"{backend} at {where} refused the key (HTTP {code}: {message})", f"set a valid {variable}")
    return Check("proposer", False, f"{backend} at {where} answered HTTP {code}: {message}", "try again later, or check the service's status")


def check_agent(command: str | None, repo_root: Path, env: Mapping[str, str]) -> Check:
    if not command or not command.strip():
        return Check("agent", False, "no --command given", "pass --command 'CMD' (e.g. harness/claude.sh)")
    try:
        words = shlex.split(command)
    except ValueError as err:
        return Check("agent", False, f"--command does not parse: {err}", "fix the quoting of --command")
    words = [w for w in words if not (("=" in w) and w.split("=", 1)[0].isidentifier())]  # FOO=1 cmd
    if not words:
        return Check("agent", False, "--command has no program", "pass --command 'CMD'")
    program = words[0]
    path = _path(env)
    found = _find(program, repo_root, path)
    if found is None:
        return Check("agent", False, f"{program!r} is not found on PATH or in the checkout", "install it, or pass its full path in --command")
    agent = TEMPLATE_AGENTS.get(Path(program).name)
    if agent and shutil.which(agent, path=path) is None:
        return Check("agent", False, f"{program} runs {agent!r}, which is not on PATH", f"install {agent} and log in (see harness/README.md)")
    return Check("agent", True, f"{program} -> {found}" + (f" (runs {shutil.which(agent, path=path)})" if agent else ""))


def _path(env: Mapping[str, str]) -> str:
    return env.get("PATH", os.defpath)


def _find(program: str, repo_root: Path, path: str) -> str | None:
    if "/" in program:  # the command runs in the worktree, which holds the checkout's files
        candidate = Path(program).expanduser()
        candidate = candidate if candidate.is_absolute() else repo_root / candidate
        return str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else None
    return shutil.which(program, path=path)
