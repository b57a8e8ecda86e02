"""The training loop: settings validation, step counts, determinism, callback, metrics, errors."""

from __future__ import annotations

import math
import re
from dataclasses import fields

import numpy as np
import pytest
import torch
from data_helpers import make_data
from data_helpers import train_settings as settings
from sklearn.utils.class_weight import compute_class_weight
from torch.optim.optimizer import register_optimizer_step_post_hook

from deepsc_tune.backends._interface import EpochMetrics
from deepsc_tune.backends.builtin._model import MLPClassifier
from deepsc_tune.backends.builtin._train import (
    TRAIN_KEYS,
    TrainSettings,
    balanced_class_weights,
    run_training,
)
from deepsc_tune.data._prepare import prepare_data
from deepsc_tune.data._settings import DataSettings
from deepsc_tune.errors import ConfigError, FinetuneError


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def quiet(_line: str) -> None:
    pass


# ---------------------------------------------------------------- settings


def test_train_keys_are_the_dataclass_fields():
    assert TRAIN_KEYS == tuple(f.name for f in fields(TrainSettings))
    for key in (
        "learning_rate",
        "lr_scheduler_type",
        "warmup_ratio",
        "epoch",
        "batch_size",
        "grad_acc",
        "seed",
        "model",
        "finetune_mode",
        "init_checkpoint",
        "num_threads",
    ):
        assert key in TRAIN_KEYS


def test_defaults():
    s = TrainSettings.from_dict({})
    assert (s.model, s.hidden, s.learning_rate, s.lr_scheduler_type, s.warmup_ratio) == (
        "mlp",
        (256, 128),
        1e-4,
        "cosine",
        0.03,
    )
    assert (s.epoch, s.batch_size, s.grad_acc, s.seed, s.loss, s.device) == (10, 32, 1, 42, "standard", "auto")
    assert s.to_dict()["hidden"] == [256, 128]


@pytest.mark.parametrize(
    ("given", "field", "expected"),
    [
        ({"learning_rate": "1e-4"}, "learning_rate", 1e-4),  # PyYAML reads 1e-4 as a string
        ({"warmup_ratio": "0.05"}, "warmup_ratio", 0.05),
        ({"epoch": 5.0}, "epoch", 5),
        ({"epoch": "20"}, "epoch", 20),
        ({"hidden": "512,128"}, "hidden", (512, 128)),
        ({"hidden": [64]}, "hidden", (64,)),
        ({"hidden": "none"}, "hidden", ()),
        ({"num_cycles": None}, "num_cycles", None),
        ({"lr_scheduler_type": "cosine_restarts"}, "lr_scheduler_type", "cosine_restarts"),
        ({"device": "cuda:1"}, "device", "cuda:1"),
    ],
)
def test_values_are_coerced(given, field, expected):
    assert getattr(TrainSettings.from_dict(given), field) == expected


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"learning_rate": -1e-4}, "finetune.learning_rate: expected a positive number such as 1e-4, got -0.0001"),
        ({"learning_rate": "fast"}, "finetune.learning_rate: expected a positive number such as 1e-4, got 'fast'"),
        ({"warmup_ratio": 1.5}, "finetune.warmup_ratio: expected a number in [0.0, 1.0], got 1.5"),
        ({"epoch": 2.5}, "finetune.epoch: expected an integer >= 1, got 2.5"),
        ({"batch_size": 0}, "finetune.batch_size: expected an integer >= 1, got 0"),
        ({"seed": True}, "finetune.seed: expected an integer >= 0, got True"),
        ({"model": "gpt"}, "finetune.model: expected one of 'mlp', 'transformer', got 'gpt'"),
        ({"loss": "focal"}, "finetune.loss: expected one of 'standard', 'balanced', got 'focal'"),
        ({"d_model": 30}, "finetune.d_model: expected a multiple of n_heads (4), got 30"),
        ({"device": "tpu"}, "finetune.device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
        (
            {"lr_scheduler_type": "linear"},
            "finetune.lr_scheduler_type: Unknown lr_scheduler_type: 'linear'. "
            "Must be one of: 'constant', 'cosine', 'cosine_restarts'",
        ),
        ({"lr": 1e-4}, "finetune.lr: unknown key; expected one of model, hidden,"),
    ],
)
def test_bad_values_name_key_value_and_expectation(given, message):
    with pytest.raises(ConfigError) as err:
        TrainSettings.from_dict(given)
    assert str(err.value).startswith(message)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        TrainSettings.from_dict({"learning_rate": 0, "warmup_ratio": -1, "nope": 1}, source="search")
    lines = str(err.value).splitlines()
    assert lines[0] == "search: 3 problems:"
    assert [ln.split(":")[0] for ln in lines[1:]] == [
        "  - search.learning_rate",
        "  - search.warmup_ratio",
        "  - search.nope",
    ]


# ---------------------------------------------------------------- the loop


def test_optimizer_steps_with_grad_acc():
    # 320 cells / batch 32 = 10 batches; grad_acc 4 -> steps of 4, 4 and 2 batches = 3 per epoch.
    steps = []
    handle = register_optimizer_step_post_hook(  # counts real optimizer steps
        lambda opt, args, kwargs: steps.append(1)
    )
    try:
        lines: list[str] = []
        result = run_training(make_data(), settings(grad_acc=4, epoch=2), log=lines.append)
    finally:
        handle.remove()
    assert len(steps) == 6
    assert result.extra["steps_per_epoch"] == 3 and result.extra["total_steps"] == 6
    banner = "\n".join(lines)
    assert "  - Warmup steps: 1\n  - Total steps: 6\n" in banner  # ceil(0.03 * 6) = 1
    # The LR recorded for the last epoch is that of the last update (step index 5 of 6).
    sched = result.extra["schedule"]
    last = 0.5 * (1 + math.cos(math.pi * (5 - 1) / (6 - 1))) * 1e-2
    assert sched["total_steps"] == 6 and result.history[-1].learning_rate == pytest.approx(last)


def test_logs_banner_and_deepscs_epoch_lines():
    lines: list[str] = []
    run_training(make_data(), settings(lr_scheduler_type="constant"), log=lines.append)
    text = "\n".join(lines)
    assert "Using CONSTANT learning rate: 0.01\nNo learning rate scheduling will be applied." in text
    assert "Epoch 2 [Finetune Cell Type Annotation]" in text
    assert re.search(
        r"Evaluation Loss: \d\.\d{4}, Error Rate: \d\.\d{4}, Accuracy: \d\.\d{4}, "
        r"Precision: \d\.\d{4}, Recall: \d\.\d{4}, Macro F1: \d\.\d{4}",
        text,
    )


def test_same_seed_same_history_and_another_seed_differs():
    data = make_data()

    def run(seed):
        r = run_training(data, settings(seed=seed, epoch=3), log=quiet)
        return [{k: v for k, v in m.to_dict().items() if k != "seconds"} for m in r.history], r

    (h1, r1), (h2, r2), (h3, _) = run(7), run(7), run(8)
    assert h1 == h2
    assert (r1.test_accuracy, r1.test_macro_f1, r1.best_epoch) == (r2.test_accuracy, r2.test_macro_f1, r2.best_epoch)
    assert h1 != h3


def test_learns_and_reports_test_of_best_epoch():
    data = make_data()
    data.X_test, data.y_test = data.X_val, data.y_val  # test == val: test must equal best val
    r = run_training(data, settings(epoch=4, lr_scheduler_type="constant"), log=quiet)
    assert r.history[-1].val_accuracy > 0.8
    best = r.best()
    assert best is not None and best.val_accuracy == max(m.val_accuracy for m in r.history)
    assert r.best_epoch == min(m.epoch for m in r.history if m.val_accuracy == best.val_accuracy)
    assert r.test_accuracy == pytest.approx(best.val_accuracy)
    assert r.test_macro_f1 == pytest.approx(best.val_macro_f1)
    assert r.device == "cpu" and not r.stopped


def test_no_test_split():
    data = make_data()
    data.X_test = data.y_test = None
    r = run_training(data, settings(epoch=1), log=quiet)
    assert r.test_accuracy is None and r.test_macro_f1 is None


def test_callback_stop_after_k_epochs():
    seen: list[EpochMetrics] = []

    def stop_after_two(m: EpochMetrics) -> bool:
        seen.append(m)
        return m.epoch == 2

    r = run_training(make_data(), settings(epoch=6), on_epoch=stop_after_two, log=quiet)
    assert [m.epoch for m in r.history] == [1, 2] == [m.epoch for m in seen]
    assert r.stopped
    m = r.history[0]
    assert all(
        v is not None for v in (m.val_accuracy, m.val_macro_f1, m.val_loss, m.learning_rate, m.train_loss, m.seconds)
    )


def test_best_epoch_follows_metric():
    r = run_training(make_data(), settings(epoch=3), metric="val_macro_f1", log=quiet)
    best_f1 = max(m.val_macro_f1 for m in r.history)
    assert r.best().val_macro_f1 == best_f1
    with pytest.raises(ConfigError):
        run_training(make_data(), settings(epoch=1), metric="val_loss", log=quiet)


def test_nan_loss_is_a_finetune_error():
    data = make_data()
    data.X_train = data.X_train.copy()
    data.X_train[5, 3] = np.nan
    with pytest.raises(FinetuneError) as err:
        run_training(data, settings(learning_rate="1e-3"), log=quiet)
    assert str(err.value) == "training diverged: loss is NaN at epoch 1 (learning_rate=0.001)"


def test_transformer_trains_on_tiny_data():
    s = settings(model="transformer", seq_len=8, num_bin=5, d_model=8, n_heads=2, n_layers=1, epoch=1, batch_size=64)
    r = run_training(make_data(n_train=128), s, log=quiet)
    assert len(r.history) == 1 and 0 <= r.history[0].val_accuracy <= 1


def test_head_only_trains_the_head_only():
    r = run_training(make_data(), settings(finetune_mode="head_only", hidden=[16]), log=quiet)
    assert r.extra["n_trainable"] == 16 * 3 + 3  # head: Linear(16, 3)
    assert r.extra["n_parameters"] == 30 * 16 + 16 + 16 * 3 + 3


def test_init_checkpoint_is_loaded_and_reported(tmp_path):
    torch.manual_seed(0)
    pretrained = MLPClassifier(30, 5, hidden=(16,))  # another class count: head skipped
    path = tmp_path / "encoder.pt"
    torch.save(pretrained.state_dict(), path)
    lines: list[str] = []
    r = run_training(make_data(), settings(init_checkpoint=str(path), epoch=1), log=lines.append)
    assert r.extra["init_checkpoint"]["loaded"] == 2
    assert r.extra["init_checkpoint"]["shape_mismatch"] == ["head.bias", "head.weight"]
    assert any(ln.startswith(f"init_checkpoint {path}: loaded 2 tensors") for ln in lines)
    with pytest.raises(FinetuneError, match="file not found"):
        run_training(make_data(), settings(init_checkpoint=str(tmp_path / "x.pt")), log=quiet)


def test_unavailable_cuda_is_a_finetune_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(FinetuneError, match="CUDA is not available"):
        run_training(make_data(), settings(device="cuda"), log=quiet)


def test_num_threads_is_applied_and_restored():
    torch.set_num_threads(1)
    seen = []
    run_training(
        make_data(),
        settings(num_threads=2, epoch=1),
        on_epoch=lambda m: seen.append(torch.get_num_threads()),
        log=quiet,
    )
    assert seen == [2] and torch.get_num_threads() == 1


# ---------------------------------------------------------------- metrics and loss


def test_balanced_weights_match_sklearn():
    y = np.array([0, 0, 0, 0, 1, 1, 2, 0, 1, 0])
    expected = compute_class_weight("balanced", classes=np.arange(3), y=y)
    np.testing.assert_allclose(balanced_class_weights(y, 3), expected)
    # A class without training cells gets weight 0, not infinity.
    np.testing.assert_allclose(balanced_class_weights(np.array([0, 0, 1]), 3), [0.75, 1.5, 0.0])


def test_balanced_loss_runs_and_records_weights():
    data = make_data()
    r = run_training(data, settings(loss="balanced", epoch=1), log=quiet)
    np.testing.assert_allclose(r.extra["class_weights"], balanced_class_weights(data.y_train, 3))


# ---------------------------------------------------------------- real data


def test_real_data_pbmc68k_reduced(tmp_path):
    ds = DataSettings.from_dict({"train": "builtin:pbmc68k_reduced", "label_key": "bulk_labels"})
    data = prepare_data(ds, cache_dir=None)
    r = run_training(data, settings(hidden=[64], epoch=5, learning_rate=1e-3, batch_size=32), log=quiet)
    # 10 PBMC types from 700 cells; logistic regression gets ~0.8 on such splits.
    assert r.best().val_accuracy > 0.6
    assert r.test_accuracy is None or 0 <= r.test_accuracy <= 1


@pytest.mark.gpu
def test_cuda_mixed_precision_run():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    for model in ("mlp", "transformer"):
        s = settings(device="cuda", model=model, seq_len=8, num_bin=5, d_model=8, n_heads=2, n_layers=1, epoch=2)
        r = run_training(make_data(), s, log=quiet)
        assert r.device.startswith("cuda") and r.extra["precision"] in ("bf16-mixed", "fp16-mixed")
        assert all(math.isfinite(m.val_loss) for m in r.history)


def test_read_only_arrays_are_used_without_copy_or_warning(recwarn):
    data = make_data()
    for name in ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test"):
        getattr(data, name).flags.writeable = False  # as from a memory-mapped cache
    run_training(data, settings(epoch=1), log=quiet)
    assert not [w for w in recwarn if "not writable" in str(w.message)]


def test_tiny_optimizer_moments_are_flushed_before_turning_subnormal():
    from deepsc_tune.backends.builtin._optimizer import TINY_STATE, flush_tiny_optimizer_state

    p = torch.nn.Parameter(torch.zeros(4))
    opt = torch.optim.AdamW([p], lr=1e-3)
    p.grad = torch.ones(4)
    opt.step()
    opt.state[p]["exp_avg"].copy_(torch.tensor([1e-3, -1e-31, 5e-39, 0.0]))
    flush_tiny_optimizer_state(opt)
    assert opt.state[p]["exp_avg"].tolist() == pytest.approx([1e-3, 0.0, 0.0, 0.0])
    assert float(opt.state[p]["step"]) == 1.0  # scalar state untouched
    assert TINY_STATE > torch.finfo(torch.float32).tiny
