"""The ``deepsc-tune`` command line (typer): :data:`app` and the console script :func:`entry`."""

from deepsc_tune.cli._app import app, entry

__all__ = ["app", "entry"]
