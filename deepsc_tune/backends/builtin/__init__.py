"""The built-in PyTorch fine-tuner on AnnData files: the only place torch is imported.

:class:`BuiltinFinetuner` (``_finetuner``) runs :func:`run_training` (``_train``: the epoch loop
and the one optimizer step, also :func:`run_range_test` for ``lr-find``) on prepared data, with
DeepSC's schedules (``_schedules``), AdamW and clipping (``_optimizer``), the models
(``_model``), batched evaluation (``_evaluation``) and the kept best weights (``_tuned_model``).
Its ``finetune:`` keys are :class:`TrainSettings` (``_settings``, no torch, so ``validate`` stays
fast). The face is lazy: importing it loads no torch until a name is used.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "_finetuner": ["BuiltinFinetuner"],
        "_schedules": ["ExponentialRange"],
        "_settings": ["TRAIN_KEYS", "TrainSettings", "device_problem"],
        "_train": ["run_range_test", "run_training"],
        "_tuned_model": ["ModelKeeper", "model_lock", "predict_file", "read_card"],
    },
)
