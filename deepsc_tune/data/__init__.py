"""Cells in, arrays out: the ``data:`` block, loading, splitting, preprocessing, chance, baseline.

:func:`prepare_data` turns a :class:`DataSettings` into :class:`PreparedData` (train, validation
and test arrays), cached on disk (``_cache``). Everything learned from data
(highly variable genes, normalisation) comes from the training split only (``_preprocess``);
validation cells are split off seeded and stratified (``_split``). ``_chance`` gives the
majority-class level of the validation cells, ``_baseline`` the logistic-regression baseline on
the same cells, ``_metrics`` accuracy and macro-F1. Knows no Optuna and no model.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "_baseline": [
            "BASELINE_ATTR",
            "baseline_for",
            "baseline_for_files",
            "baseline_line",
            "record_baseline",
        ],
        "_chance": ["CHANCE_ATTR", "TOLERANCE", "chance_levels", "chance_note", "chance_trials"],
        "_loading": ["check_inputs", "read_input", "resolve_inputs", "with_hint"],
        "_metrics": ["classification_metrics"],
        "_prepare": ["PreparedData", "prepare_data"],
        "_preprocess": ["prepare_expression", "prepare_query"],
        "_settings": ["DataSettings"],
        "_split": ["split_adata", "validation_warning"],
    },
)
