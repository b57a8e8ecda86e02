"""The ``deepsc-tune`` command line: a thin shell over plain functions.

This module is the typer app (the console entry point ``deepsc_tune.cli:entry``, also
``python -m deepsc_tune.cli``): its commands, in the order of ``--help``, and the help layout.
The commands themselves live in one module per group: ``cli_run`` (run, repeat),
``cli_results`` (best, status, report), ``cli_spaces`` (validate, list), ``cli_data`` (split)
and ``cli_model`` (finetune, predict, lr-find). ``cli_common`` holds what they share, including
the one place that turns :class:`~deepsc_tune.errors.DeepscTuneError` into a red one-line message
and a non-zero exit code (``user_errors``).
"""

from __future__ import annotations

from typing import Annotated

import typer

from deepsc_tune import __version__
from deepsc_tune.cli._data import split
from deepsc_tune.cli._model import finetune, lr_find, predict
from deepsc_tune.cli._results import best, report, status
from deepsc_tune.cli._run import repeat, run
from deepsc_tune.cli._spaces import list_spaces, validate

app = typer.Typer(
    name="deepsc-tune",
    help=(
        "Hyperparameter search for DeepSC cell-type fine-tuning, built on Optuna.\n\n"
        "Typical use: `deepsc-tune run pbmc68k` (search; run again to resume), "
        "`deepsc-tune report pbmc68k` (HTML report), `deepsc-tune best pbmc68k --format hydra` "
        "(the winning settings for DeepSC)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Markdown joins the docstrings' wrapped lines into paragraphs in --help.
    rich_markup_mode="markdown",
)

# The commands live in cli_*.py, one module per group; registered here in the order of --help.
app.command()(run)
app.command()(finetune)
app.command()(validate)
app.command()(best)
app.command()(status)
app.command()(split)
app.command(name="list")(list_spaces)
app.command()(report)
app.command()(repeat)
app.command()(predict)
app.command(name="lr-find")(lr_find)


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"deepsc-tune {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Hyperparameter search for DeepSC cell-type fine-tuning, built on Optuna."""


# ----------------------------------------------------------------------------- help layout


def _flags_without_type(params):
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""  # a flag takes no value: nothing to show after it
    return params


class _HelpGroup(typer.core.TyperGroup):
    def get_params(self, ctx):
        return _flags_without_type(super().get_params(ctx))


class _HelpCommand(typer.core.TyperCommand):
    """Help without type tags after flags (``--verbose <bool>``) and with plain usage lines.

    typer marks required arguments ``{name}`` in usage lines; ``NAME`` / ``[NAME]`` is what the
    docstrings say and what users know from other tools.
    """

    def get_params(self, ctx):
        return _flags_without_type(super().get_params(ctx))

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = (param.metavar or param.name or "").upper()
                name = name if param.required else f"[{name}]"
                pieces.append(name + ("..." if param.nargs != 1 else ""))
        return pieces


for _info in app.registered_commands:
    if _info.cls in (None, typer.core.TyperCommand):
        _info.cls = _HelpCommand
if not isinstance(app.info.cls, type):  # typer's default placeholder: nobody chose a class
    app.info.cls = _HelpGroup


def entry() -> None:
    """The ``deepsc-tune`` console script (and ``python -m deepsc_tune.cli``, a worker's)."""
    from deepsc_tune.cli import _common as cli_common

    cli_common.PROCESS_ENDS_WITH_COMMAND = True
    app()
