"""``python -m deepsc_tune.cli``: the console script (how local workers start)."""

from deepsc_tune.cli._app import entry

entry()
