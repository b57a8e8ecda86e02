"""DeepSC's own fine-tuner as its checkouts have it (commits 2416d85 and abcf2be).

Which commit a checkout is (``_commits``), its Hydra config read without running it
(``_checkout``), what it accepts, checked on a search space before any trial (``_space``), the
cells it trains and evaluates on (``_data``, labels only, never X), its cosine in real optimizer
steps (``_schedule``: DeepSC plans for 100,000 cells; the warmup is searched as a fraction of the
real run), DeepSC-ready split files (``_split``), one output folder per trial
(``_output_folders``) and the checkpoint files it writes (``_checkpoints``).
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "_checkout": ["deepsc_values", "load_config"],
        "_checkpoints": [
            "CHECKPOINTS_FILE",
            "DEFAULT_KEEP",
            "KEEP_POLICIES",
            "best_epoch_checkpoint",
            "checkpoint_folder",
            "disk_usage",
            "format_bytes",
            "record_checkpoint",
            "recorded",
            "saved_path",
        ],
        "_commits": ["HYDRA_RUN_DIR", "commit_of_module", "entry_module", "is_deepsc_command"],
        "_data": ["deepsc_chance", "deepsc_inputs"],
        "_output_folders": ["StartSpacing", "claim_output_dir", "start_lock_path"],
        "_schedule": ["DEEPSC_WARMUP", "WarmupPlan", "recorded_plan", "recorded_ratio", "run_plan"],
        "_space": ["check_command_space"],
        "_split": ["deepsc_options", "write_deepsc_split", "write_split"],
    },
)
