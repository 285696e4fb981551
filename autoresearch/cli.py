"""Command line: parse options, call one function, turn AutoresearchError into one line + exit 1.

Each command lives in its own section below; the work happens in the modules it calls.
"""

from contextlib import contextmanager

import typer

from autoresearch.errors import AutoresearchError

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
