"""A search-space YAML file, validated with one schema, and the command line's overrides.

:func:`load_search_space` reads ``search_spaces/NAME.yaml`` into a :class:`SearchSpace`: the
``data:`` block (:mod:`deepsc_tune.data`'s schema), the backend's ``finetune:`` block (the
backend's schema), ``search:`` as Optuna distributions (``_search_params``) and ``study:``
(``_study_settings``: metric, budget, sampler, pruner, ``enqueue``, ``confirm``, ``tracking``).
Every problem is reported at once, naming file, key and value. ``_overrides`` applies
``key=value`` overrides within the same limits and blames the override a problem came from.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "_overrides": ["override_paths"],
        "_search_space": [
            "NEUTRAL_KEYS",
            "SearchSpace",
            "build_search_space",
            "dump_settings",
            "folder_name_problem",
            "list_search_spaces",
            "load_search_space",
            "parse_yaml",
            "resolve_search_space_path",
        ],
        "_study_settings": ["DEFAULT_STUDY"],
        "_tracking": ["Tracker", "TrialRun", "build_tracker"],
    },
)
