"""deepsc-tune: hyperparameter search for DeepSC cell-type fine-tuning, built on Optuna."""

__version__ = "0.1.0"
