"""The ``deepsc-tune`` command line (typer): :data:`app` and the console script :func:`entry`.

The top layer, and the only place where errors become exit codes (``_common.user_errors``: a
:class:`~deepsc_tune.errors.DeepscTuneError` is one red line and exit 1, an interruption 130/143/141).
One module per group of commands, in the order of ``--help``: ``_run`` (run, repeat),
``_results`` (best, status, report), ``_spaces`` (validate, list), ``_data`` (split), ``_model``
(finetune, predict, lr-find); ``_progress`` draws a running study's lines, ``_console_table``
the tables. Each command parses its options and calls the layers below.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "_app": ["app", "entry"],
        "_progress": ["Progress"],
    },
)
