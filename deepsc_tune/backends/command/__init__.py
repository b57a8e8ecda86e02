"""Any fine-tuner run as a subprocess, DeepSC's first: settings, argv, the run, its metrics.

:class:`CommandFinetuner` (``_finetuner``) builds the child's command line as Hydra overrides
(``_hydra_overrides``) from :class:`CommandSettings` (``_settings``), runs it in its own process
group (``_run``: log, metrics to ``on_epoch``, stop on prune, timeout or Ctrl-C) and reads its
per-epoch metrics from stdout (``_metrics_parsing``). What is particular to DeepSC's own code is
in :mod:`deepsc_tune.backends.command.deepsc`.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "_finetuner": ["CommandFinetuner"],
        "_hydra_overrides": ["RUN_DIR_PLACEHOLDER", "build_argv", "checkout_pythonpath", "format_value"],
        "_settings": ["CommandSettings", "DEFAULT_COMMAND"],
    },
)
