"""What a finished (or running) study says: the chosen configuration, exported; the LR range test.

``_export`` writes the chosen configuration as a YAML block, a shell command or JSON, ready to
paste back into DeepSC (for a DeepSC study the winning trial's whole command line);
``_lr_find`` is ``deepsc-tune lr-find``, the usage guide's range test, on the trials' own training
step. The HTML report is :mod:`deepsc_tune.results.report`. Reads studies, never writes trials.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "_export": ["FORMATS", "best_notes", "format_best", "reference_notes"],
        "_lr_find": ["check_bounds", "override_line", "run_lr_find", "write_lr_find"],
    },
)
