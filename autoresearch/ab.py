"""`autoresearch ab`: proposers against each other on one GPU, on equal terms.

    autoresearch ab --tag T --arm anthropic:claude-opus-5-5 --arm optuna --max-experiments 30

Layout (every piece is a normal run that `autoresearch run`, `report` and `status` understand):

    results/T/ab.json          the A/B: its arms (in order) and settings; marks T as an A/B tag
    results/T/                 run T: the shared baseline only (branch autoresearch/T)
    results/T-<arm>/           one run per arm (branch autoresearch/T-<arm>), from the same base
                               commit, its results.tsv starting with copies of the baseline rows

1. The baseline trains once, as run T (--baseline-repeats trials: the first noise estimate).
2. Each arm's run is created from the same commit (the user's HEAD must still be the baseline's
   base commit) and seeded with the baseline's rows and runs/NNNN folders, so its Ledger sees
   experiment 0 as its kept baseline and its keep rule starts from the same bar and noise.
3. The arms take turns, one whole experiment each (its repeats and confirms included): the arm
   with the fewest finished experiments goes next, ties in --arm order, so the order is
   A B A B ... and stays so across a stop. Each turn is `loop.run` on the arm's tag with
   --max-experiments one past what it has: the loop's own resume does the rest.

4. When every arm is done, the comparison is written (results/T/ab.png, results/T/report.html)
   and its verdict said, in the run's metric and direction (ab_report).

The lab or a declared target (autoresearch.toml): each arm is an ordinary run of the same loop,
so "better" is whatever the target declares; only the preflight differs (no GPU or data to check).

Limits: --max-experiments N is per arm, the shared baseline not counted; --max-cost USD is per
arm (each arm's own rows and failed proposals); --max-hours H is overall, for this invocation.
Ctrl-C (or SIGTERM) stops the arm that is running as `autoresearch run` would and stops the A/B;
the same `ab` command resumes it.
"""

import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import git

from autoresearch.config import check_tag
from autoresearch.errors import AutoresearchError
from autoresearch.ledger import Ledger, group
from autoresearch.live import View
from autoresearch.proposers import REGISTRY
from autoresearch.proposers.base import ProposerOptions
from autoresearch.proposers.optuna_backend import SAMPLERS
from autoresearch.records import ResultsFile, RunLock, RunState, metric_of, utc_now
from autoresearch.target import load_target

MANIFEST = "ab.json"
BACKENDS = tuple(sorted(REGISTRY))


@dataclass
class Arm:
    """One contender, parsed from `backend[:model]` (optuna: `optuna:SAMPLER`, hparam:
    `hparam:SEED`, command: `command:CMD`)."""

    spec: str
    name: str  # the tag suffix: T-<name>
    backend: str
    model: str | None = None
    command: str | None = None
    sampler: str = "tpe"
    seed: int = 0

    def options(self, base_url: str | None = None) -> ProposerOptions:
        return ProposerOptions(model=self.model, base_url=base_url if self.backend == "openai" else None,
                               command=self.command, seed=self.seed, sampler=self.sampler)


def parse_arm(spec: str) -> Arm:
    """An --arm as an Arm, or a one-line error."""
    backend, _, rest = spec.partition(":")
    backend, rest = backend.strip().lower(), rest.strip()
    if backend not in BACKENDS:
        raise AutoresearchError(f"bad --arm {spec!r}: the backend is one of {', '.join(BACKENDS)} (as backend[:model])")
    arm = Arm(spec, backend, backend)
    if backend == "command":
        if not rest:
            raise AutoresearchError(f"bad --arm {spec!r}: give the agent command, e.g. --arm command:'harness/claude.sh'")
        arm.command = rest
    elif backend == "optuna" and rest:
        if rest.lower() not in SAMPLERS:
            raise AutoresearchError(f"bad --arm {spec!r}: optuna's sampler is one of {', '.join(SAMPLERS)}")
        arm.sampler, arm.name = rest.lower(), f"optuna-{rest.lower()}"
    elif backend == "hparam" and rest:
        if not re.fullmatch(r"\d+", rest):
            raise AutoresearchError(f"bad --arm {spec!r}: hparam takes a seed, e.g. hparam:1")
        arm.seed, arm.name = int(rest), f"hparam-{rest}"
    elif rest:  # openai / anthropic
        arm.model = rest
        arm.name = f"{backend}-" + re.sub(r"[^A-Za-z0-9._-]+", "-", rest).strip("-.")
    return arm


def parse_arms(specs: list[str], tag: str) -> list[Arm]:
    """Two or more arms; repeated names (two command arms) get -2, -3; a repeated spec is an error."""
    if len(specs or []) < 2:
        raise AutoresearchError("an A/B needs at least two --arm options, e.g. --arm anthropic:claude-opus-5-5 --arm optuna")
    arms, seen = [], set()
    for spec in specs:
        arm = parse_arm(spec)
        if arm.spec in seen:
            raise AutoresearchError(f"--arm {spec!r} is given twice")
        seen.add(arm.spec)
        base, n = arm.name, 1
        while arm.name in {a.name for a in arms}:
            n += 1
            arm.name = f"{base}-{n}"
        try:
            check_tag(f"{tag}-{arm.name}")
        except AutoresearchError:
            raise AutoresearchError(f"bad --arm {spec!r}: the run tag {tag}-{arm.name} is not a valid tag "
                                    f"(use a shorter --tag or model name)") from None
        arms.append(arm)
    return arms


@dataclass
class ABConfig:
    repo_root: Path
    tag: str
    arms: list[Arm]
    max_experiments: int | None = None  # per arm, the shared baseline not counted
    max_hours: float | None = None  # overall, this invocation
    max_cost: float | None = None  # per arm
    base_url: str | None = None  # for openai arms
    preflight: bool = True
    run_settings: dict = field(default_factory=dict)  # RunConfig fields every run shares (profile, keep_rule...)

    def arm_tag(self, arm: Arm) -> str:
        return f"{self.tag}-{arm.name}"


@dataclass
class ABOutcome:
    exit_code: int  # 0 done, 130 stopped
    message: str
    experiments: dict  # arm name -> finished experiments (baseline not counted)


class ArmView(View):
    """Plain lines, each prefixed with the arm's name; the per-turn `done (...)` notes are left out
    (a turn ends at its --max-experiments by design)."""

    def __init__(self, label: str, tag: str, quiet: bool = False):
        super().__init__(tag, quiet=quiet)
        self.label = label

    def note(self, text: str) -> None:
        if not text.startswith(("done (", "stopped; resume with")):  # the A/B says how it ends and resumes
            super().note(text)

    def target(self, metric: str, higher_is_better: bool) -> None:
        """The metric is the run's; the A/B names it and its direction once, not on every turn."""
        self.state.metric, self.state.higher_is_better = metric, higher_is_better

    def show(self, line: str | None) -> None:
        super().show(f"{self.label:<14} {line}" if line else line)


def say(text: str) -> None:
    print(text, flush=True)


# ---------------------------------------------------------------------------
# The A/B
# ---------------------------------------------------------------------------


def run_ab(cfg: ABConfig) -> ABOutcome:
    from autoresearch import loop, opening

    root, tag = Path(cfg.repo_root), check_tag(cfg.tag)
    folder = root / "results" / tag
    manifest = check_manifest(folder, cfg)
    target = load_target(root)  # a declared target, or None for the lab; a bad one: one line, nothing made
    if cfg.preflight:  # every arm's key, agent and the lab, before anything is created or trained
        preflight_arms(cfg, declared=target is not None)
    folder.mkdir(parents=True, exist_ok=True)
    if target is not None:
        say(f"[ab {tag}] target: {target.metric}, {'higher' if target.higher_is_better else 'lower'} is better "
            f"({target.run})")
    try:
        with opening.stop_signals_as_interrupt(), RunLock(folder / "ab.lock"):
            if manifest is None:
                write_manifest(folder, cfg)
            baseline = run_baseline(cfg, loop)
            if baseline is None:
                return ABOutcome(130, f"stopped; resume with the same `autoresearch ab --tag {tag}` command", {})
            for arm in cfg.arms:
                seed_arm(cfg, arm, baseline, loop)
            return interleave(cfg, baseline, loop)
    except KeyboardInterrupt:  # between two turns: nothing is training, every run is consistent
        return ABOutcome(130, f"stopped; resume with the same `autoresearch ab --tag {tag}` command", {})


def check_manifest(folder: Path, cfg: ABConfig) -> dict | None:
    """The stored A/B (None for a new tag); the same arms in the same order, or a one-line error."""
    path = folder / MANIFEST
    if not path.is_file():
        if (folder / "run.json").is_file():
            raise AutoresearchError(f"results/{cfg.tag} is a run, not an A/B (no {MANIFEST}); pick another --tag")
        return None
    manifest = json.loads(path.read_text())
    stored = [a["spec"] for a in manifest.get("arms", [])]
    if stored != [a.spec for a in cfg.arms]:
        raise AutoresearchError(f"A/B {cfg.tag} has the arms {' '.join(repr(s) for s in stored)}; "
                                f"give the same --arm options in that order to resume it (or a new --tag)")
    return manifest


def write_manifest(folder: Path, cfg: ABConfig) -> None:
    data = {"tag": cfg.tag, "created_at": utc_now(), "baseline_tag": cfg.tag,
            "arms": [{**asdict(a), "tag": cfg.arm_tag(a)} for a in cfg.arms],
            "max_experiments": cfg.max_experiments, "max_cost": cfg.max_cost, "max_hours": cfg.max_hours,
            "settings": {k: v for k, v in cfg.run_settings.items() if k != "extra_env"}}
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, folder / MANIFEST)


def preflight_arms(cfg: ABConfig, declared: bool = False) -> None:
    """Every arm's key or agent, and for the lab its GPU and data (a declared target has neither:
    `run` checks its command, and the shared baseline is its dry run)."""
    from autoresearch.doctor import check_agent, check_proposer, preflight
    from autoresearch.lab import detect_profile

    env = {**os.environ, **cfg.run_settings.get("extra_env", {})}
    profile = cfg.run_settings.get("profile") or env.get("AUTORESEARCH_PROFILE") or detect_profile()
    for arm in cfg.arms:
        options = arm.options(cfg.base_url)
        try:
            if not declared:
                preflight(cfg.repo_root, profile, arm.backend, options, env)
                continue
            # a declared target has no GPU or data to check: only what the arm's proposer needs
            checks = [check_proposer(arm.backend, options, env)]
            if arm.backend == "command":
                checks.append(check_agent(options.command, Path(cfg.repo_root), env))
            for c in checks:
                if not c.ok:
                    raise AutoresearchError(f"{c.name}: {c.detail}; fix: {c.fix} (see `autoresearch doctor`)")
        except AutoresearchError as err:
            raise AutoresearchError(f"arm {arm.spec}: {err}") from None


def run_config(cfg: ABConfig, tag: str, proposer: str, options: ProposerOptions, **limits):
    from autoresearch.config import RunConfig

    return RunConfig(repo_root=cfg.repo_root, tag=tag, proposer=proposer, options=options, preflight=False,
                     **cfg.run_settings, **limits)


def run_baseline(cfg: ABConfig, loop) -> list | None:
    """Run T's baseline unless it is decided; its rows, or None when the user stopped it."""
    folder = Path(cfg.repo_root) / "results" / cfg.tag
    if not _baseline_rows(folder):
        say(f"[ab {cfg.tag}] the shared baseline ({cfg.run_settings.get('baseline_repeats', 2)} trials)")
        outcome = loop.run(run_config(cfg, cfg.tag, "hparam", ProposerOptions(), max_experiments=1),
                           view=ArmView("baseline", cfg.tag))
        if outcome.state == "stopped":
            return None
    rows = _baseline_rows(folder)
    if not rows:
        raise AutoresearchError(f"the shared baseline of {cfg.tag} did not finish; see results/{cfg.tag}/")
    return rows


def _baseline_rows(folder: Path) -> list:
    """The rows of the first experiment of results.tsv once it is decided, else []."""
    path = folder / "results.tsv"
    if not path.is_file():
        return []
    experiments = group(ResultsFile(path).rows())
    return list(experiments[0].rows) if experiments and experiments[0].decided else []


def seed_arm(cfg: ABConfig, arm: Arm, baseline: list, loop) -> None:
    """Create the arm's run on the baseline's base commit and copy the baseline's rows into it
    (idempotent: an arm that has them is left alone)."""
    root, tag = Path(cfg.repo_root), cfg.arm_tag(arm)
    folder = root / "results" / tag
    base = RunState.load(root / "results" / cfg.tag / "run.json").get("base_commit") or ""
    if not (folder / "run.json").is_file():
        head = git.Repo(root).head.commit.hexsha
        if base and head != base:
            raise AutoresearchError(
                f"your checkout is at {head[:7]} but the A/B's baseline trained {base[:7]}: check out "
                f"{base[:7]} to add arm {arm.spec} (or start a new --tag)")
        # max_experiments 0: the loop creates the branch, worktree and run.json, and stops.
        outcome = loop.run(run_config(cfg, tag, arm.backend, arm.options(cfg.base_url), max_experiments=0),
                           view=ArmView(arm.name, tag, quiet=True))
        if outcome.state == "stopped":
            raise KeyboardInterrupt
    arm_base = RunState.load(folder / "run.json").get("base_commit") or ""
    if arm_base != base:
        raise AutoresearchError(f"run {tag} starts at {arm_base[:7]}, not at the baseline's {base[:7]}; "
                                f"delete results/{tag} and branch autoresearch/{tag}, or start a new --tag")
    ledger = Ledger(folder, metric_of(ResultsFile(root / "results" / cfg.tag / "results.tsv").header() or []))
    rows = ledger.rows()
    numbers = {r.experiment for r in baseline}
    copied = [r for r in rows if r.experiment in numbers]
    if rows and (rows[0].commit != baseline[0].commit or rows[0].proposer != "baseline"
                 or (len(copied) < len(baseline) and len(rows) > len(copied))):
        raise AutoresearchError(f"run {tag} does not start with the shared baseline's rows; start a new --tag")
    if len(copied) == len(baseline):
        return
    source = root / "results" / cfg.tag / "runs"
    for number in sorted(numbers):  # the logs first: the rows are the commit point
        src = source / f"{number:04d}"
        if src.is_dir():
            shutil.copytree(src, folder / "runs" / f"{number:04d}", dirs_exist_ok=True)
    for row in baseline[len(copied):]:  # a seeding cut short by Ctrl-C gets the rest
        ledger.append(row)
    say(f"[ab {cfg.tag}] arm {arm.name}: run {tag} seeded with the shared baseline ({len(baseline)} trials)")


def finished(cfg: ABConfig, arm: Arm, baseline: list) -> int:
    """The arm's decided experiments, the shared baseline not counted."""
    numbers = {r.experiment for r in baseline}
    rows = ResultsFile(Path(cfg.repo_root) / "results" / cfg.arm_tag(arm) / "results.tsv").rows()
    return sum(1 for e in group(rows) if e.decided and e.number not in numbers)


def interleave(cfg: ABConfig, baseline: list, loop) -> ABOutcome:
    """The arms take turns, one experiment each, the one with the fewest first."""
    started = time.monotonic()
    done = {arm.name: finished(cfg, arm, baseline) for arm in cfg.arms}
    ended: dict[str, str] = {}  # arm -> why it takes no more turns
    limit = f"--max-experiments {cfg.max_experiments}"
    for arm in cfg.arms:
        if cfg.max_experiments is not None and done[arm.name] >= cfg.max_experiments:
            ended[arm.name] = limit
    while len(ended) < len(cfg.arms):
        hours = (time.monotonic() - started) / 3600
        if cfg.max_hours is not None and hours >= cfg.max_hours:
            ended.update({a.name: f"--max-hours {cfg.max_hours:g}" for a in cfg.arms if a.name not in ended})
            break
        arm = min((a for a in cfg.arms if a.name not in ended), key=lambda a: done[a.name])  # ties: --arm order
        tag = cfg.arm_tag(arm)
        say(f"[ab {cfg.tag}] arm {arm.name}: experiment {done[arm.name] + 1}"
            + (f" of {cfg.max_experiments}" if cfg.max_experiments else ""))
        limits = dict(max_experiments=len({r.experiment for r in baseline}) + done[arm.name] + 1,
                      max_cost=cfg.max_cost,
                      max_hours=None if cfg.max_hours is None else cfg.max_hours - hours)
        outcome = loop.run(run_config(cfg, tag, arm.backend, arm.options(cfg.base_url), **limits),
                           view=ArmView(arm.name, tag))
        if outcome.state == "stopped":
            return ABOutcome(130, f"stopped; resume with the same `autoresearch ab --tag {cfg.tag}` command", done)
        now = finished(cfg, arm, baseline)
        if now <= done[arm.name]:  # its --max-cost (or the hours) ran out before a new experiment
            said = re.match(r"done \((.*)\): \d+ experiments", outcome.message)
            why = said.group(1) if said else outcome.message
            ended[arm.name] = why
            say(f"[ab {cfg.tag}] arm {arm.name} takes no more turns: {why}")
        done[arm.name] = now
        if cfg.max_experiments is not None and now >= cfg.max_experiments:
            ended[arm.name] = limit
    conclude(cfg)
    counts = ", ".join(f"{name} {n} ({ended.get(name, '-')})" for name, n in done.items())
    message = f"done: experiments per arm: {counts}; see `autoresearch report --tag {cfg.tag}`"
    say(message)
    return ABOutcome(0, message, done)


def conclude(cfg: ABConfig) -> None:
    """The comparison, written where `autoresearch report --tag T --html` would put it
    (results/T/ab.png, results/T/report.html, the arms side by side), and its verdict said: which
    arm did better in the metric's direction, and whether beyond the noise. The runs are the
    record; a page that cannot be written is one warning, never a failed A/B."""
    from autoresearch.ab_report import ab_summary
    from autoresearch.html_report import write_ab_html
    from autoresearch.plot import plot_arms

    folder = Path(cfg.repo_root) / "results" / cfg.tag
    try:
        summary = ab_summary(cfg.repo_root, cfg.tag)
        summary["plot"] = str(plot_arms(summary, folder / "ab.png"))
        write_ab_html(folder / "report.html", summary)
    except Exception as err:  # a report must never cost the A/B (as write_html_report for a run)
        say(f"[ab {cfg.tag}] warning: could not write the comparison: {err}")
        return
    say(f"[ab {cfg.tag}] {summary['verdict']['text'] or 'one arm: nothing to compare'} "
        f"Wrote {folder / 'ab.png'} and {folder / 'report.html'}.")


def from_cli(tag: str, arm: list[str], repo: Path | None = None, base_url: str | None = None,
             max_experiments: int | None = None, max_hours: float | None = None,
             max_cost: float | None = None, **settings) -> ABConfig:
    """`autoresearch ab`'s options as an ABConfig; `settings` are RunConfig fields every run shares."""
    from autoresearch.config import find_research_root

    check_tag(tag)
    arms = parse_arms(list(arm or []), tag)
    root = find_research_root(Path(repo or Path.cwd()).resolve())  # the lab, or a declared target
    settings = {k: v for k, v in settings.items() if v is not None}
    from autoresearch.config import RunConfig

    RunConfig(repo_root=root, tag=tag, **settings)  # bad --profile, --keep-rule ...: one line, before anything runs
    return ABConfig(root, tag, arms, max_experiments, max_hours, max_cost, base_url, run_settings=settings)


def run_from_cli(**options) -> int:
    outcome = run_ab(from_cli(**options))
    if outcome.exit_code:
        say(outcome.message)  # a finished A/B has said so already
    return outcome.exit_code


__all__ = ["ABConfig", "ABOutcome", "Arm", "parse_arm", "parse_arms", "run_ab", "run_from_cli"]
