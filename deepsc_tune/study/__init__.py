"""The Optuna study: create or resume it, run trials, recover from faults, choose the result.

:func:`run_search` (``_search``) is ``deepsc-tune run`` as a library call: the search
(:func:`run_study`; :func:`open_study` creates or resumes a study made from the same space and
data) to its target, then ``study.confirm``'s repeats; :func:`record_references` stores chance
and the baseline first. Every runner goes through the one trial loop (``_runner``) and the trial
function (``_objective``: suggest, run a backend, report every epoch); the study's pruner never
stops a repeat nor a last epoch (``_pruning``). A study lives in one folder (``_folder``: :class:`StudyFolder` owns every path under
``RESULTS_DIR/STUDY/``) with its database (``_storage``, ``_file``, ``_reconnect``, ``_start_lock``).
Trials of dead, preempted or suspended workers are failed with their reason and re-queued
(``_recovery``); ``_workers`` runs local worker processes. The trial record's keys and views are
in ``_trial_record``; the one ranking of configurations in ``_selection``; repeats with further
seeds in ``_repeat`` and ``_confirm``.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "_checkpoints": ["CheckpointKeeper"],
        "_confirm": ["run_confirmation"],
        "_file": ["check_study_file_unchanged", "study_names"],
        "_folder": [
            "BEST_YAML",
            "DB_FILE",
            "INDEX_HTML",
            "LR_FIND_HTML",
            "LR_FIND_JSON",
            "REPORT_HTML",
            "StudyFolder",
            "TRIALS_CSV",
            "as_folder",
            "cache_dir",
            "command_args",
            "find_databases",
            "rehome_model",
            "study_model",
            "trial_dir",
        ],
        "_objective": ["last_epoch", "read_trial_file", "trial_device"],
        "_repeat": [
            "check_same_data",
            "enqueue_repeats",
            "open_for_repeats",
            "plan_repeats",
            "recover_dead_repeats",
            "run_repeats",
            "top_trials",
            "trial_seed",
            "waiting_repeats",
        ],
        "_search": [
            "SearchOutcome",
            "attach_keepers",
            "prune_checkpoints",
            "record_references",
            "run_search",
        ],
        "_selection": [
            "RULES",
            "Selection",
            "best_search_trial",
            "configurations",
            "format_mean_sd",
            "format_reported",
            "pick_notes",
            "pick_record",
            "rank_configurations",
            "select",
        ],
        "_space_record": ["config_value", "read_record", "space_from_study", "study_fixed"],
        "_storage": ["folder_storage_url", "last_study_file", "open_storage", "redact", "storage_of"],
        "_study": ["RunSummary", "load_existing_study", "open_study", "run_study", "sampler_label"],
        "_trial_record": [
            "ENQUEUED",
            "N_TRIALS",
            "OLD_ARGV",
            "REPEAT_OF",
            "REPEAT_SEED",
            "RETRY_OF",
            "SEARCH_SPACE_NAME",
            "SETTINGS",
            "TrialResult",
            "Worker",
            "complete_repeats",
            "count_states",
            "epochs_run",
            "failure_reason",
            "is_repeat",
            "last_reported",
            "metric_value",
            "n_finished",
            "search_only",
            "search_trials",
            "seed_of",
            "setting",
            "state_counts",
            "study_backend",
            "study_metric",
            "trial_result",
            "worker_of",
            "trial_settings",
        ],
        "_workers": ["parse_gpus", "plan_workers", "run_workers", "watch_parent"],
    },
)
