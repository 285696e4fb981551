"""Command line: parse options, call one function, turn AutoresearchError into one line + exit 1.

Each command lives in its own section below; the work happens in the modules it calls.
"""

from contextlib import contextmanager
from pathlib import Path

import typer

from autoresearch.config import PROFILES
from autoresearch.errors import AutoresearchError
from autoresearch.keep_rule import RULES
from autoresearch.proposers import REGISTRY
from autoresearch.trust import AUDIT_CHOICES, SANDBOX_CHOICES

PROPOSERS = ", ".join(sorted(REGISTRY))

app = typer.Typer(
    help="Let an LLM do ML research on one GPU overnight: propose a change to train.py, "
    "train for a fixed budget, keep it if val_bpb improved, report in the morning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main():
    """Let an LLM do ML research on one GPU overnight."""


@contextmanager
def user_errors():
    """Bad input ends as one line on stderr and exit code 1, never a traceback."""
    try:
        yield
    except AutoresearchError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1)


# ---------------------------------------------------------------------------
# prepare
# ---------------------------------------------------------------------------


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def prepare(ctx: typer.Context):
    """Prepare data and tokenizer (same options as `python prepare.py`; try --help)."""
    from autoresearch.lab import run_prepare

    with user_errors():
        code = run_prepare(list(ctx.args))
    raise typer.Exit(code)


# ---------------------------------------------------------------------------
# init: declare your own program as the target (autoresearch/init.py)
# ---------------------------------------------------------------------------


@app.command()
def init(
    edit: list[str] = typer.Option(None, "--edit", help="A file (or glob) the proposals may change; repeat for several."),
    run_: str = typer.Option(None, "--run", help="The experiment command, run in the repository: \"python evaluate.py\"."),
    metric: str = typer.Option(None, "--metric", help="The name the command prints as `name: value`."),
    direction: str = typer.Option(None, "--direction", help="max (higher is better) or min (lower is better)."),
    timeout: float = typer.Option(600.0, "--timeout", min=1.0, help="Seconds before one run is killed."),
    require: list[str] = typer.Option(None, "--require", help="A line every run must print, e.g. 'correct: True'; repeatable."),
    context: list[str] = typer.Option(None, "--context", help="A fixed file shown to the proposer; repeatable."),
    force: bool = typer.Option(False, "--force", help="Replace an existing autoresearch.toml."),
    repo: Path = typer.Option(None, "--repo", help="The repository (default: the current folder)."),
):
    """Declare your own program as the target: dry-run it once, then write autoresearch.toml."""
    import sys

    from autoresearch.init import init_target

    with user_errors():
        answers = {"edit": edit, "run": run_, "metric": metric, "direction": direction}
        missing = [k for k, v in answers.items() if not v]
        if missing and not sys.stdin.isatty():
            raise AutoresearchError(f"init needs --{missing[0]} (or run it on a terminal to be asked)")
        if not edit:
            edit = typer.prompt("File(s) the proposals may edit (comma-separated)").replace(",", " ").split()
        run_ = run_ or typer.prompt("Command that runs one experiment")
        metric = metric or typer.prompt("Metric name it prints (as `name: value`)")
        direction = direction or typer.prompt("Direction: max (higher is better) or min", default="max")
        done = init_target(Path(repo or Path.cwd()), edit, run_, metric, direction.strip().lower(), timeout,
                           require, context, force)
    m = done.dry_run.measured
    typer.echo(f"dry run: {done.target.metric} = {m.value:g} ({done.dry_run.seconds:.1f} s, "
               f"{'higher' if done.target.higher_is_better else 'lower'} is better)")
    typer.echo(f"wrote {', '.join(done.wrote)}; next: git add {' '.join(done.wrote)} && git commit, "
               "then autoresearch run --tag <name>")


# ---------------------------------------------------------------------------
# run / demo
# ---------------------------------------------------------------------------


@app.command()
def run(
    tag: str = typer.Option(..., "--tag", help="Name of the run: branch autoresearch/<tag>, results in results/<tag>/."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run (the same command without it does too)."),
    proposer: str = typer.Option("hparam", "--proposer", help=f"{PROPOSERS} (hparam: no LLM, the default)."),
    model: str = typer.Option(None, "--model", help="Model name for openai / anthropic."),
    base_url: str = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint (vLLM, Ollama, llama.cpp, OpenRouter); else OPENAI_BASE_URL."),
    command: str = typer.Option(None, "--command", help="For --proposer command: the agent command, run in the worktree with the prompt on stdin."),
    seed: int = typer.Option(0, "--seed", help="Seed of the hparam proposer."),
    sampler: str = typer.Option("tpe", "--sampler", help="For --proposer optuna: tpe, cmaes or random."),
    keep_rule: str = typer.Option("noise", "--keep-rule", help=f"{' or '.join(RULES)}: noise keeps only what beats the best beyond the noise, greedy (upstream) any lower val_bpb."),
    baseline_repeats: int = typer.Option(2, "--baseline-repeats", min=1, help="Times the unmodified baseline is trained (its spread is the first noise estimate)."),
    min_delta: float = typer.Option(1e-4, "--min-delta", min=0.0, help="Smallest val_bpb gain worth keeping, whatever the noise (a declared target: its toml's min_delta)."),
    max_experiments: int = typer.Option(None, "--max-experiments", min=1, help="Stop after N experiments (baseline included; repeats and confirms are trials of one experiment)."),
    max_hours: float = typer.Option(None, "--max-hours", min=0.0, help="Stop starting experiments after H hours."),
    max_cost: float = typer.Option(None, "--max-cost", min=0.0, help="Stop once proposals have cost this many USD."),
    profile: str = typer.Option(None, "--profile", help=f"Lab profile, {' or '.join(PROFILES)} (default: gpu when CUDA is available)."),
    time_budget: float = typer.Option(None, "--time-budget", min=0.1, help="Training seconds per experiment (default: the profile's)."),
    timeout: float = typer.Option(None, "--timeout", min=1.0, help="Hard limit per training run (default: budget + max(budget, 120))."),
    audit: str = typer.Option("on", "--audit", help=f"{' or '.join(AUDIT_CHOICES)}. on: every keep is re-evaluated from the base commit's prepare.py (val and held-out), or by a declared target's `audit` command; off: for labs whose train.py hands over no model."),
    sandbox: str = typer.Option("auto", "--sandbox", help=f"{', '.join(SANDBOX_CHOICES)} (auto: bubblewrap when it works here, else a warning): training cannot write outside its run folder, reach the network or read the held-out split."),
    no_speculate: bool = typer.Option(False, "--no-speculate", help="Ask for the next proposal only after the last one trained (default: while it trains, for openai, anthropic and command)."),
    workers: int = typer.Option(None, "--workers", min=1, help="Train this many candidates at once, one shared best (CPU, tests; with --ray: actors, default the cluster's GPUs)."),
    gpus: str = typer.Option(None, "--gpus", help="One worker per GPU of this machine: 0,1,2,3 or all."),
    ray: str = typer.Option(None, "--ray", help="Train on a Ray cluster: its address (HEAD:6379) or auto; git and results stay here. Needs autoresearch\\[ray]."),
    track: str = typer.Option(None, "--track", help="Also log every row to mlflow (results/<tag>/mlflow.db, or MLFLOW_TRACKING_URI) or wandb (WANDB_MODE=offline works offline)."),
    repo: Path = typer.Option(None, "--repo", help="The autoresearch checkout (default: found above the current folder)."),
):
    """Run experiments all night: propose one change, train, keep it if val_bpb went down beyond the noise."""
    options = dict(locals())  # the parameters above, by name: config.from_cli resolves them
    options["speculate"] = not options.pop("no_speculate")
    from autoresearch.loop import run_from_cli

    with user_errors():
        code = run_from_cli(**options)
    raise typer.Exit(code)


@app.command()
def demo(
    repo: Path = typer.Option(None, "--repo", help="The autoresearch checkout (default: found above the current folder)."),
):
    """Offline demo on CPU: prepare a small corpus, run the baseline and 3 hparam experiments."""
    from autoresearch.demo import run_demo

    with user_errors():
        code = run_demo(repo)
    raise typer.Exit(code)


# ---------------------------------------------------------------------------
# ab: proposers against each other (autoresearch/ab.py)
# ---------------------------------------------------------------------------


@app.command()
def ab(
    tag: str = typer.Option(..., "--tag", help="Name of the A/B: the shared baseline is run <tag>, each arm run <tag>-<arm>."),
    arm: list[str] = typer.Option(..., "--arm", help="backend[:model], repeat for each arm: anthropic:MODEL, openai:MODEL, optuna[:SAMPLER], hparam[:SEED], command:'CMD'."),
    max_experiments: int = typer.Option(None, "--max-experiments", min=1, help="Experiments per arm (the shared baseline not counted)."),
    max_hours: float = typer.Option(None, "--max-hours", min=0.0, help="Stop starting experiments after H hours (overall)."),
    max_cost: float = typer.Option(None, "--max-cost", min=0.0, help="USD per arm: an arm stops once its proposals cost this much."),
    base_url: str = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint for openai arms; else OPENAI_BASE_URL."),
    keep_rule: str = typer.Option("noise", "--keep-rule", help=f"{' or '.join(RULES)}, the same for every arm."),
    baseline_repeats: int = typer.Option(2, "--baseline-repeats", min=1, help="Trials of the shared baseline (its spread is the first noise estimate)."),
    min_delta: float = typer.Option(1e-4, "--min-delta", min=0.0, help="Smallest val_bpb gain worth keeping (a declared target: its toml's min_delta)."),
    profile: str = typer.Option(None, "--profile", help=f"Lab profile, {' or '.join(PROFILES)} (default: gpu when CUDA is available)."),
    time_budget: float = typer.Option(None, "--time-budget", min=0.1, help="Training seconds per experiment (default: the profile's)."),
    timeout: float = typer.Option(None, "--timeout", min=1.0, help="Hard limit per training run."),
    audit: str = typer.Option("on", "--audit", help=f"{' or '.join(AUDIT_CHOICES)}. on: every keep re-evaluated by the base prepare.py (a declared target: its `audit` command); off for labs that train no model."),
    sandbox: str = typer.Option("auto", "--sandbox", help=f"{', '.join(SANDBOX_CHOICES)} (auto: bubblewrap when it works here)."),
    repo: Path = typer.Option(None, "--repo", help="The autoresearch checkout (default: found above the current folder)."),
):
    """A/B: one shared baseline, then the arms take turns on the same GPU (A B A B ...); the same command resumes."""
    options = dict(locals())
    from autoresearch.ab import run_from_cli

    with user_errors():
        code = run_from_cli(**options)
    raise typer.Exit(code)


# ---------------------------------------------------------------------------
# report / status
# ---------------------------------------------------------------------------


@app.command()
def report(
    tag: list[str] = typer.Option(None, "--tag", help="Run to report (results/<tag>/); repeat to compare runs. Default: the most recent run."),
    results: list[Path] = typer.Option(None, "--results", help="Any results.tsv (ours or upstream's five columns); repeatable."),
    root: Path = typer.Option(None, "--root", help="Checkout holding results/ (default: found above the current folder)."),
    as_json: bool = typer.Option(False, "--json", help="Print the machine-readable summary (docs/report.md) instead of tables."),
    markdown: Path = typer.Option(None, "--markdown", help="Also write a Markdown report here, plot embedded by relative path."),
    html: Path = typer.Option(None, "--html", help="Also write one self-contained HTML page here (plot, kept chain, every experiment and its diff)."),
    plot: Path = typer.Option(None, "--plot", help="Where to write the PNG (default: results/<tag>/progress.png)."),
    no_plot: bool = typer.Option(False, "--no-plot", help="Skip the plot."),
    top: int = typer.Option(20, "--top", min=1, help="How many top hits to list."),
    noise: float = typer.Option(3e-4, "--noise", min=0.0, help="Kept gains below this val_bpb are flagged as within noise."),
):
    """What happened overnight: outcomes, best val_bpb, top hits, cost, and a progress plot."""
    from autoresearch.html_report import write_ab_html, write_html
    from autoresearch.report import run_report

    with user_errors():
        if tag and len(tag) == 1 and not results and _ab_root(root, tag[0]):  # an A/B: its arms side by side
            from autoresearch.ab_report import run_ab_report

            if markdown:
                raise AutoresearchError(f"--markdown is not available for the A/B {tag[0]} yet; use --json")
            run_ab_report(_ab_root(root, tag[0]), tag[0], as_json, plot, no_plot, html=html, write_ab_html=write_ab_html)
            return
        run_report(tag or [], results or [], root, as_json, markdown, plot, no_plot, top, noise, html=html,
                   write_html=write_html)


def _ab_root(root: Path | None, tag: str) -> Path | None:
    """The checkout whose results/<tag>/ is an A/B (has ab.json), else None."""
    from autoresearch.ab_report import is_ab
    from autoresearch.analysis import find_root

    root = Path(root) if root else find_root(Path.cwd())
    return root if is_ab(root, tag) else None


@app.command()
def status(
    root: Path = typer.Option(None, "--root", help="Checkout holding results/ (default: found above the current folder)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """Every run under results/: state (running / paused / stopped / done), experiments, best val_bpb."""
    from autoresearch.report import run_status

    with user_errors():
        run_status(root, as_json)


# ---------------------------------------------------------------------------
# export: a run's rows to a tracker (autoresearch/tracking.py)
# ---------------------------------------------------------------------------


@app.command()
def export(
    tag: str = typer.Option(..., "--tag", help="The run to export (results/<tag>/)."),
    to: str = typer.Option(..., "--to", help="mlflow (results/<tag>/mlflow.db, or MLFLOW_TRACKING_URI) or wandb (WANDB_MODE=offline works offline)."),
    root: Path = typer.Option(None, "--root", help="Checkout holding results/ (default: found above the current folder)."),
):
    """Log a run to MLflow or Weights & Biases: one tracker run per experiment; what it holds already is skipped."""
    from autoresearch.tracking import export as export_run

    with user_errors():
        typer.echo(export_run(root, tag, to))


# ---------------------------------------------------------------------------
# doctor
# ---------------------------------------------------------------------------


@app.command()
def doctor(
    proposer: str = typer.Option("hparam", "--proposer", help="The proposer to check: hparam, optuna, openai, anthropic or command."),
    model: str = typer.Option(None, "--model", help="Model name for openai / anthropic (checked against the API)."),
    base_url: str = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint; else OPENAI_BASE_URL."),
    command: str = typer.Option(None, "--command", help="For --proposer command: the agent command."),
    sampler: str = typer.Option("tpe", "--sampler", help="For --proposer optuna: tpe, cmaes or random."),
    profile: str = typer.Option(None, "--profile", help=f"Lab profile, {' or '.join(PROFILES)} (default: gpu when CUDA is available)."),
    sandbox: str = typer.Option("auto", "--sandbox", help=f"A declared target's dry run: {', '.join(SANDBOX_CHOICES)}, as for run."),
    repo: Path = typer.Option(None, "--repo", help="The autoresearch checkout (default: found above the current folder)."),
):
    """Check before a night: data prepared, GPU visible, disk space, the proposer's key or agent
    (a target in autoresearch.toml: the file, its files committed, the command, a dry run)."""
    from rich.console import Console
    from rich.table import Table

    from autoresearch.config import find_research_root
    from autoresearch.doctor import run_checks
    from autoresearch.lab import detect_profile
    from autoresearch.proposers import ProposerOptions

    with user_errors():
        if profile not in (None, "gpu", "cpu"):
            raise AutoresearchError(f"bad --profile {profile!r}: use gpu or cpu")
        if sandbox not in SANDBOX_CHOICES:
            raise AutoresearchError(f"bad --sandbox {sandbox!r}: use {', '.join(SANDBOX_CHOICES)}")
        root = find_research_root(Path(repo or Path.cwd()).resolve())
        options = ProposerOptions(model=model, base_url=base_url, command=command, sampler=sampler)
        if (root / "autoresearch.toml").is_file():
            from autoresearch.doctor_target import target_checks

            checks = list(target_checks(root, proposer, options, sandbox=sandbox))
        else:
            checks = run_checks(root, profile or detect_profile(), proposer, options)
    table = Table(title=f"autoresearch doctor ({root})", title_justify="left")
    for column in ("check", "", "what was seen", "fix"):
        table.add_column(column, overflow="fold")
    for c in checks:
        table.add_row(c.name, "[green]ok[/]" if c.ok else "[red]FAIL[/]", c.detail, c.fix)
    Console().print(table)
    failed = [c for c in checks if not c.ok]
    if failed and (root / "autoresearch.toml").is_file():  # the first failure as `run` would refuse it
        typer.echo(f"error: {failed[0].name}: {failed[0].detail}; fix: {failed[0].fix}", err=True)
    raise typer.Exit(1 if failed else 0)
