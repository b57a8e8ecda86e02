"""The fine-tuners behind one interface, and the registry that picks one for a search space.

:class:`Finetuner` (``_interface``): ``run(params, *, metric, on_epoch, run_dir) ->
FinetuneResult``, where ``on_epoch`` returning ``True`` stops the run (the study prunes with it).
:data:`BACKENDS` (``_registry``) maps a ``finetune.backend`` name to its settings schema,
factory, file checks and what it implies. Two backends, which know nothing of each other:
:mod:`deepsc_tune.backends.builtin` (PyTorch on AnnData, in process) and
:mod:`deepsc_tune.backends.command` (DeepSC, or any program, as a subprocess). Knows no Optuna.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "_interface": ["EpochMetrics", "FinetuneResult", "Finetuner", "METRICS"],
        "_registry": ["BACKENDS", "DEFAULT_BACKEND", "FinetuneBlock", "get_backend"],
    },
)
