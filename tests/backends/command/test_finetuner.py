"""The ``command`` backend against a fake DeepSC CLI (``tests/fake_deepsc.py``).

Process behaviour (streaming, pruning, timeouts, Ctrl-C) is tested on real subprocesses; every
test that starts one checks afterwards that none of its processes is left running.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from paths import FAKE_DEEPSC, GOLDEN, REPO

from deepsc_tune.backends._interface import EpochMetrics
from deepsc_tune.backends.command._finetuner import (
    COMMAND_KEYS,
    METRICS_ENV,
    CommandFinetuner,
    CommandSettings,
    format_override,
    format_value,
)
from deepsc_tune.backends.command._metrics_parsing import JsonLinesTail, StdoutParser
from deepsc_tune.errors import ConfigError, FinetuneError

ROOT = REPO
FAKE = FAKE_DEEPSC
# Loaded by path: the tests need its accuracy formula and its Hydra-like value parser.
_spec = importlib.util.spec_from_file_location("fake_deepsc", FAKE)
fake = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake)

FAKE_EXTRAS = ["sleep", "mode", "spawn_child", "ignore_term", "num_workers"]


def make(**block):
    """A finetuner over the fake CLI and the fixed settings of its ``finetune:`` block."""
    d = {"backend": "command", "command": [sys.executable, str(FAKE)], "new_keys": FAKE_EXTRAS}
    d.update(block)
    settings, fixed = CommandSettings.from_dict(d)
    return CommandFinetuner(settings), fixed


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for init to reap it does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def pids_in(run_dir: Path) -> list[int]:
    """The fake's pid, its grandchild's and its DataLoader-like workers' (of the last epoch)."""
    return [
        int(p)
        for n in ("pid", "grandchild.pid", "workers.pid")
        if (run_dir / n).exists()
        for p in (run_dir / n).read_text().split()
    ]


@pytest.fixture
def run_dir(tmp_path):
    """A run folder; any fake process still alive at teardown is a failure, and is killed."""
    d = tmp_path / "run"
    yield d
    left = [pid for pid in pids_in(d) if alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left running: {left}"


# ----------------------------------------------------------------------------- overrides


@pytest.mark.parametrize(
    "value, text",
    [
        (1e-4, "0.0001"),
        (3e-05, "3e-5"),
        (5e-5, "5e-5"),
        (0.03, "0.03"),
        (2.0, "2.0"),
        (1e16, "1e+16"),
        (float("inf"), "inf"),
        (10, "10"),
        (-3, "-3"),
        (True, "true"),
        (False, "false"),
        (None, "null"),
        ("cosine", "cosine"),
        ("/data/hPancreas_train.h5ad", "/data/hPancreas_train.h5ad"),
        ("1e-4", "'1e-4'"),
        ("10", "'10'"),
        ("true", "'true'"),
        ("null", "'null'"),
        ("a b", "'a b'"),
        ("", "''"),
        ("it's", "'it\\'s'"),
        ("${hydra:runtime.output_dir}/ckpts", "'${hydra:runtime.output_dir}/ckpts'"),
        ([1, 2], "[1,2]"),
        (("a", "b c"), "[a,'b c']"),
        ([], "[]"),
        ({"a": 1, "b": [0.5]}, "{a:1,b:[0.5]}"),
    ],
)
def test_format_value(value, text):
    assert format_value(value) == text


@pytest.mark.parametrize(
    "value", [1e-4, 3e-05, 1e-10, 0.1 + 0.2, 123456789.125, 7, True, None, "cosine", "10", [1, 2.5]]
)
def test_format_value_round_trips_through_hydra_grammar(value):
    assert fake.parse_value(format_value(value)) == value


def test_format_value_rejects_objects():
    with pytest.raises(ValueError, match="cannot write"):
        format_value(object())


def test_format_override_marks_new_keys():
    assert format_override("weight_decay", 0.01, new=True) == "+weight_decay=0.01"
    assert format_override("learning_rate", 1e-4) == "learning_rate=0.0001"


@pytest.mark.parametrize(
    "block, params, expected",
    [
        (  # the usage guide's cosine run, DeepSC's names end to end
            {},
            {
                "lr_scheduler_type": "cosine",
                "learning_rate": 1e-4,
                "warmup_ratio": 0.03,
                "epoch": 10,
                "batch_size": 32,
                "grad_acc": 20,
                "seed": 42,
            },
            [
                "lr_scheduler_type=cosine",
                "learning_rate=0.0001",
                "warmup_ratio=0.03",
                "epoch=10",
                "batch_size=32",
                "grad_acc=20",
                "seed=42",
                "hydra.run.dir=/runs/t1",
            ],
        ),
        (  # overrides first; a trial value wins over the same key in overrides
            {"overrides": {"data_path": "/d/train.h5ad", "seperated_train_eval_dataset": True, "seed": 1}},
            {"seed": 7, "learning_rate": 3e-05},
            [
                "data_path=/d/train.h5ad",
                "seperated_train_eval_dataset=true",
                "seed=7",
                "learning_rate=3e-5",
                "hydra.run.dir=/runs/t1",
            ],
        ),
        (  # keys new to DeepSC's config get Hydra's '+'; '+key' in overrides means the same
            {"new_keys": ["weight_decay"], "overrides": {"+wandb_off": True}},
            {"weight_decay": 0.01},
            ["+wandb_off=true", "+weight_decay=0.01", "hydra.run.dir=/runs/t1"],
        ),
        (  # {run_dir} is the trial's folder; no run-dir override for non-Hydra programs
            {"run_dir_override": None, "overrides": {"ckpt_dir": "{run_dir}/ckpts"}},
            {"tags": ["a", "b"], "pretrained_model_path": None},
            ["ckpt_dir=/runs/t1/ckpts", "tags=[a,b]", "pretrained_model_path=null"],
        ),
        (  # another Hydra key for the run folder
            {"run_dir_override": "output_dir"},
            {"epoch": 1},
            ["epoch=1", "output_dir=/runs/t1"],
        ),
    ],
)
def test_build_argv(block, params, expected):
    finetuner, fixed = make(
        **{"command": [sys.executable, "-m", "src.deepsc.finetune.finetune"], "new_keys": [], **block}
    )
    argv = finetuner.build_argv({**fixed, **params}, run_dir="/runs/t1")
    assert argv[:3] == [sys.executable, "-m", "src.deepsc.finetune.finetune"]
    assert argv[3:] == expected


def test_build_argv_rejects_bad_keys_and_values():
    finetuner, _ = make()
    with pytest.raises(ConfigError, match="not a Hydra config key"):
        finetuner.build_argv({"bad key": 1}, run_dir="/r")
    with pytest.raises(ConfigError, match="finetune.learning_rate: cannot write"):
        finetuner.build_argv({"learning_rate": object()}, run_dir="/r")


# ----------------------------------------------------------------------------- settings


def test_from_dict_separates_backend_keys_from_fixed_settings():
    settings, fixed = CommandSettings.from_dict(
        {
            "backend": "command",
            "command": "python -m src.deepsc.finetune.finetune",
            "cwd": "~/DeepSC",
            "env": {"WANDB_MODE": "disabled", "OMP_NUM_THREADS": 4},
            "overrides": {"data_path": "/d/train.h5ad", "+wandb_off": True},
            "timeout": "3e3",
            "metrics": "deepsc",
            "grace_period": 0,
            "epoch": 10,
            "learning_rate": "1e-5",  # PyYAML reads this as a string
            "lr_scheduler_type": "constant",
        }
    )
    assert fixed == {"epoch": 10, "learning_rate": 1e-5, "lr_scheduler_type": "constant"}
    assert settings.command == ("python", "-m", "src.deepsc.finetune.finetune")
    assert settings.cwd == Path("~/DeepSC").expanduser()
    assert settings.env == {"WANDB_MODE": "disabled", "OMP_NUM_THREADS": "4"}
    assert settings.overrides == {"data_path": "/d/train.h5ad", "wandb_off": True}
    assert settings.new_keys == {"wandb_off"}
    assert (settings.timeout, settings.metrics, settings.grace_period) == (3000.0, "deepsc", 0.0)
    assert settings.run_dir_override == "hydra.run.dir"
    assert set(COMMAND_KEYS) >= {"command", "cwd", "env", "overrides", "new_keys", "timeout", "metrics"}


def test_from_dict_defaults():
    settings, fixed = CommandSettings.from_dict({"backend": "command"})
    assert fixed == {}
    assert settings.command == ("python", "-m", "src.deepsc.finetune.finetune")
    assert (settings.metrics, settings.timeout, settings.grace_period) == ("both", None, 10.0)


@pytest.mark.parametrize(
    "block, expected",
    [
        ({"timeout": "soon"}, ["finetune.timeout", "'soon'", "positive number of seconds"]),
        ({"timeout": -1}, ["finetune.timeout", "-1"]),
        ({"metrics": "stdout"}, ["finetune.metrics", "'stdout'", "'deepsc', 'json', 'both'"]),
        ({"command": []}, ["finetune.command", "non-empty list"]),
        ({"command": {"a": 1}}, ["finetune.command"]),
        ({"env": ["A=1"]}, ["finetune.env", "mapping"]),
        ({"overrides": "data_path=x"}, ["finetune.overrides", "mapping"]),
        ({"overrides": {"epoch": 3}, "epoch": 5}, ["finetune.overrides.epoch", "also a fixed setting"]),
        ({"new_keys": [1]}, ["finetune.new_keys"]),
        ({"metric_regex": {"metrics": r"Acc: (\d+)"}}, ["finetune.metric_regex.metrics", "val_accuracy"]),
        ({"metric_regex": {"epoch": "("}}, ["finetune.metric_regex.epoch", "valid regular expression"]),
        ({"metric_regex": {"epoch": "Epoch"}}, ["finetune.metric_regex.epoch", "group"]),
        ({"metric_regex": {"loss": "x"}}, ["finetune.metric_regex.loss", "'epoch' or 'metrics'"]),
        ({"backend": "builtin"}, ["finetune.backend", "'command'"]),
        ({"grace_period": -1}, ["finetune.grace_period", ">= 0"]),
        ({"run_dir_override": "a b"}, ["finetune.run_dir_override", "'a b'"]),
        ({"bad key": 1}, ["finetune.bad key", "Hydra config key"]),
        ({"learning_rate": {1: 2}}, ["finetune.learning_rate"]),
        ({"timeout": "x", "metrics": "y"}, ["finetune: 2 problems:", "- finetune.timeout", "- finetune.metrics"]),
    ],
)
def test_from_dict_errors(block, expected):
    with pytest.raises(ConfigError) as info:
        CommandSettings.from_dict({"backend": "command", **block})
    for text in expected:
        assert text in str(info.value)


def test_from_dict_rejects_non_mapping():
    with pytest.raises(ConfigError, match="finetune: expected a mapping"):
        CommandSettings.from_dict(["epoch", 3])


def test_finetuner_checks_cwd_and_program(tmp_path):
    with pytest.raises(ConfigError, match="finetune.cwd: no such directory"):
        make(cwd=str(tmp_path / "DeepSC"))
    with pytest.raises(ConfigError, match="finetune.command: program 'no-such-python-xyz' not found"):
        make(command=["no-such-python-xyz", "-m", "x"])


# ----------------------------------------------------------------------------- parsing


def test_stdout_parser_pairs_headers_with_evaluation_lines():
    parser = StdoutParser(CommandSettings.epoch_regex, CommandSettings.metrics_regex)
    lines = [
        "Using COSINE ANNEALING with warmup:",
        "Epoch 1 [Finetune Cell Type Annotation]: 100%|####| 2/2",  # tqdm redraw
        "Evaluate[Finetune Cell Type Annotation]: 100%|####| 1/1",
        "Epoch 1 [Finetune Cell Type Annotation]",
        "unique true cell_type_ids: [0 1 2]",
        "Evaluation Loss: 0.4123, Error Rate: 0.0712, Accuracy: 0.9288, Precision: 0.8811, "
        "Recall: 0.8650, Macro F1: 0.8702",
        "Evaluation Loss: nan, Error Rate: 0.5000, Accuracy: 0.5000, Precision: 0.1, Recall: 0.2, Macro F1: 0.3",
        "Epoch 7 [Finetune Cell Type Annotation]",
        "Evaluation Loss: 1e-3, Error Rate: 0, Accuracy: 1, Precision: 1, Recall: 1, Macro F1: 1",
    ]
    out = [m for m in map(parser.feed, lines) if m is not None]
    assert [(m.epoch, m.val_accuracy, m.val_macro_f1) for m in out] == [
        (1, 0.9288, 0.8702),
        (2, 0.5, 0.3),
        (7, 1.0, 1.0),
    ]
    assert out[0].val_loss == 0.4123 and out[2].val_loss == 1e-3


def test_json_tail_reads_complete_lines_only(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = JsonLinesTail(path)
    assert tail.read() == ([], [])  # no file yet
    path.write_text('{"epoch": 1, "val_accuracy": 0.5}\n{"epoch": 2, "val_acc')
    found, warnings = tail.read()
    assert [m.epoch for m in found] == [1] and warnings == []
    with open(path, "a") as f:
        f.write('uracy": 0.6, "val_macro_f1": 0.4}\nnot json\n{"epoch": "3", "val_accuracy": 1}\n{"epoch": 4}')
    found, warnings = tail.read()
    assert [(m.epoch, m.val_accuracy, m.val_macro_f1) for m in found] == [(2, 0.6, 0.4)]
    assert len(warnings) == 2 and "line 3 ignored: not JSON" in warnings[0] and "'epoch'" in warnings[1]
    found, warnings = tail.read(final=True)  # the child is done: its last line counts
    assert found == [] and "'val_accuracy' is missing" in warnings[0]


# ----------------------------------------------------------------------------- runs


def test_run_reports_each_epoch_in_order(run_dir):
    finetuner, fixed = make(epoch=3, overrides={"sleep": 0.05})
    seen: list[EpochMetrics] = []
    params = {**fixed, "learning_rate": 1e-4, "lr_scheduler_type": "constant"}
    result = finetuner.run(
        params, on_epoch=lambda m: seen.append(m) or False, run_dir=run_dir, cuda_visible_devices="3"
    )

    expected = [round(fake.accuracy(1e-4, e, "constant"), 4) for e in (1, 2, 3)]
    assert [m.epoch for m in seen] == [1, 2, 3]
    assert [m.val_accuracy for m in seen] == expected
    assert [m.val_macro_f1 for m in seen] == [round(fake.macro_f1(a), 4) for a in expected]
    assert all(m.val_loss > 0 and m.seconds >= 0 for m in seen)
    assert result.history == seen and result.best_epoch == 3 and not result.stopped
    assert result.test_accuracy is None and result.test_macro_f1 is None
    assert result.device == "cuda:3"
    assert result.extra["metric_sources"] == {"stdout": 3, "json": 0}
    # The overrides reached the program as the types Hydra would give it.
    config = json.loads((run_dir / "config.json").read_text())
    assert (
        config["learning_rate"] == 1e-4 and config["epoch"] == 3 and config["hydra.run.dir"] == str(run_dir.resolve())
    )
    env = json.loads((run_dir / "env.json").read_text())
    assert env == {
        "CUDA_VISIBLE_DEVICES": "3",
        "PYTHONUNBUFFERED": "1",
        METRICS_ENV: str(run_dir.resolve() / "metrics.jsonl"),
        "DEEPSC_TUNE_RUN_DIR": str(run_dir.resolve()),
    }
    log = (run_dir / "log.txt").read_text()
    assert "Using CONSTANT learning rate: 0.0001" in log and "Training finished." in log
    assert (run_dir / "checkpoints" / "epoch_3.ckpt").exists()


def test_epochs_arrive_while_the_child_still_runs(run_dir):
    finetuner, fixed = make(epoch=3, overrides={"sleep": 0.4})
    at_first_epoch = {}

    def on_epoch(m: EpochMetrics) -> bool:
        if m.epoch == 1:
            pid = int((run_dir / "pid").read_text())
            at_first_epoch.update(
                alive=alive(pid),
                done=(run_dir / "done").exists(),
                log=(run_dir / "log.txt").read_text(),
                t=time.monotonic(),
            )
        return False

    t0 = time.monotonic()
    finetuner.run(fixed, on_epoch=on_epoch, run_dir=run_dir)
    t_end = time.monotonic()
    assert at_first_epoch["alive"] and not at_first_epoch["done"]
    assert "Accuracy: " in at_first_epoch["log"]  # the log is written as output arrives
    assert "Training finished." not in at_first_epoch["log"]
    assert t_end - at_first_epoch["t"] > 0.5  # two more epochs of 0.4 s were still to come
    assert at_first_epoch["t"] - t0 < t_end - t0 - 0.5


def test_pruning_stops_the_child_and_its_children(run_dir):
    finetuner, fixed = make(epoch=200, overrides={"sleep": 0.1, "spawn_child": True})
    t0 = time.monotonic()
    result = finetuner.run(fixed, on_epoch=lambda m: m.epoch >= 2, run_dir=run_dir)
    assert time.monotonic() - t0 < 8
    assert result.stopped and [m.epoch for m in result.history] == [1, 2] and result.best_epoch == 2
    pids = pids_in(run_dir)  # the fake, its grandchild and its 8 DataLoader-like workers
    assert len(pids) == 10 and not any(alive(p) for p in pids)
    assert "[deepsc-tune] stopped after epoch 2" in (run_dir / "log.txt").read_text()


def test_pruning_kills_a_child_that_ignores_sigterm(run_dir):
    finetuner, fixed = make(
        epoch=200, grace_period=0.5, overrides={"sleep": 0.1, "spawn_child": True, "ignore_term": True}
    )
    t0 = time.monotonic()
    result = finetuner.run(fixed, on_epoch=lambda m: True, run_dir=run_dir)
    stop_took = time.monotonic() - t0
    assert result.stopped and [m.epoch for m in result.history] == [1]
    assert not any(alive(p) for p in pids_in(run_dir))
    assert stop_took >= 0.5
    assert "sending SIGKILL" in (run_dir / "log.txt").read_text()


def test_crash_raises_with_exit_status_and_log_tail(run_dir):
    finetuner, fixed = make(epoch=5, overrides={"mode": "crash"})
    with pytest.raises(FinetuneError) as info:
        finetuner.run(fixed, run_dir=run_dir)
    message = str(info.value)
    assert "exit status 3" in message
    assert "RuntimeError: CUDA out of memory" in message.splitlines()[0]
    assert f"last lines of {run_dir.resolve() / 'log.txt'}" in message
    assert "HYDRA_FULL_ERROR" in message  # the tail itself
    assert len(message.splitlines()) <= 3 + 10


def test_hang_past_timeout_raises_and_kills(run_dir):
    finetuner, fixed = make(epoch=5, timeout=1.5, grace_period=1, overrides={"mode": "hang", "spawn_child": True})
    with pytest.raises(FinetuneError, match=r"timed out after 1.5s \(finetune.timeout\) with 1 epoch"):
        finetuner.run(fixed, run_dir=run_dir)
    assert not any(alive(p) for p in pids_in(run_dir))


def test_run_without_metric_lines_raises(run_dir):
    finetuner, fixed = make(epoch=2, overrides={"mode": "silent"})
    with pytest.raises(FinetuneError, match="no metric lines") as info:
        finetuner.run(fixed, run_dir=run_dir)
    assert "Training finished." in str(info.value)


def test_json_protocol(run_dir):
    finetuner, fixed = make(epoch=3, overrides={"mode": "json"})
    seen = []
    result = finetuner.run(
        {**fixed, "learning_rate": 5e-4},
        metric="val_macro_f1",
        on_epoch=lambda m: seen.append(m.epoch) or False,
        run_dir=run_dir,
    )
    assert seen == [1, 2, 3]
    assert [m.val_accuracy for m in result.history] == [fake.accuracy(5e-4, e, "constant") for e in (1, 2, 3)]
    assert result.extra["metric_sources"] == {"stdout": 0, "json": 3}
    assert result.best_epoch == 3


def test_an_epoch_in_both_sources_is_reported_once(run_dir):
    finetuner, fixed = make(epoch=3, overrides={"mode": "both"})
    seen = []
    result = finetuner.run(fixed, on_epoch=lambda m: seen.append(m.epoch) or False, run_dir=run_dir)
    assert seen == [1, 2, 3] and [m.epoch for m in result.history] == [1, 2, 3]
    assert sum(result.extra["metric_sources"].values()) == 3


def test_metrics_deepsc_ignores_the_json_file(run_dir):
    finetuner, fixed = make(epoch=2, metrics="deepsc", overrides={"mode": "json"})
    with pytest.raises(FinetuneError, match="no metric lines"):
        finetuner.run(fixed, run_dir=run_dir)


def test_unknown_scheduler_shows_deepsc_message(run_dir):
    finetuner, fixed = make(epoch=2)
    with pytest.raises(FinetuneError) as info:
        finetuner.run({**fixed, "lr_scheduler_type": "linear"}, run_dir=run_dir)
    first = str(info.value).splitlines()[0]
    assert "exit status 1" in first
    assert "Unknown lr_scheduler_type: 'linear'. Must be one of: 'constant', 'cosine'" in first


def test_key_new_to_the_config_needs_new_keys(run_dir, tmp_path):
    finetuner, fixed = make(epoch=1)
    with pytest.raises(FinetuneError, match=r"Could not override 'weight_decay'.*finetune.new_keys"):
        finetuner.run({**fixed, "weight_decay": 0.01}, run_dir=run_dir)
    finetuner, fixed = make(epoch=1, new_keys=FAKE_EXTRAS + ["weight_decay"])
    result = finetuner.run({**fixed, "weight_decay": 0.01}, run_dir=tmp_path / "run2")
    assert "+weight_decay=0.01" in result.extra["argv"]


def test_custom_regex_and_zero_based_epochs(tmp_path):
    # Any program: one line per epoch, counted from 0, no Hydra.
    program = "for e in range(3): print(f'epoch={e} acc={0.5 + e / 10} f1={0.9 - e / 10}', flush=True)"
    finetuner, fixed = make(
        command=[sys.executable, "-c", program],
        run_dir_override=None,
        metrics="deepsc",
        metric_regex={"metrics": r"epoch=(?P<epoch>\d+) acc=(?P<val_accuracy>[\d.]+) f1=(?P<val_macro_f1>[\d.]+)"},
    )
    result = finetuner.run(fixed, metric="val_macro_f1", run_dir=tmp_path)
    assert [m.epoch for m in result.history] == [1, 2, 3]
    assert result.best_epoch == 1 and result.history[2].val_accuracy == pytest.approx(0.7)
    assert result.extra["argv"] == [sys.executable, "-c", program]


def test_program_that_cannot_start(tmp_path):
    finetuner, _ = make(command=[sys.executable])
    finetuner.settings.command = (str(tmp_path / "gone"),)
    with pytest.raises(FinetuneError, match="cannot start"):
        finetuner.run({}, run_dir=tmp_path)


DRIVER = """
import signal, sys
from pathlib import Path
from deepsc_tune.backends.command._finetuner import CommandFinetuner, CommandSettings

signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
settings, fixed = CommandSettings.from_dict(
    {"command": [sys.executable, sys.argv[1]], "new_keys": ["sleep", "spawn_child"], "grace_period": 3}
)
CommandFinetuner(settings).run({"epoch": 1000, "sleep": 0.1, "spawn_child": True}, run_dir=Path(sys.argv[2]))
"""


def test_ctrl_c_stops_the_child_before_the_driver_exits(tmp_path, run_dir):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, str(driver), str(FAKE), str(run_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            log = run_dir / "log.txt"
            if (run_dir / "grandchild.pid").exists() and log.exists() and "Accuracy:" in log.read_text():
                break
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.05)
        else:
            pytest.fail("the fake never reported an epoch")
        pids = pids_in(run_dir)  # the fake, its grandchild, then its workers (which come and go)
        assert len(pids) == 10 and all(alive(p) for p in pids[:2])
        os.kill(proc.pid, signal.SIGINT)
        out = proc.communicate(timeout=20)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0 and "KeyboardInterrupt" in out
    assert not any(alive(p) for p in pids + pids_in(run_dir))
    assert "[deepsc-tune] interrupted" in (run_dir / "log.txt").read_text()


def test_module_does_not_import_optuna():
    code = "import sys, deepsc_tune.backends.command._finetuner; sys.exit('optuna' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


# ----------------------------------------------------------------------------- real DeepSC output

# What DeepSC 2416d85 printed (stdout and stderr as one stream) for a 2-epoch run of a tiny
# random-init model on 300 Baron cells (tests/backends/command/deepsc/test_real_deepsc.py's set-up): Lightning's banner,
# Chinese progress lines, tqdm redraws with \r and cursor-up codes, DeepSC's doubled epoch header,
# its evaluation lines and its hard-coded output folder. Only the venv path was shortened.
GOLDEN = GOLDEN / "deepsc_2416d85_stdout.txt"


def test_real_deepsc_output_golden(tmp_path):
    """The reader and parser, fed DeepSC's real bytes through a pipe, find exactly its epochs."""
    replay = f"import sys; sys.stdout.buffer.write(open({str(GOLDEN)!r}, 'rb').read())"
    finetuner, _ = make(command=[sys.executable, "-c", replay], run_dir_override=None, metrics="deepsc")
    result = finetuner.run({}, metric="val_macro_f1", run_dir=tmp_path / "run")
    got = [(m.epoch, m.val_loss, m.val_accuracy, m.val_macro_f1) for m in result.history]
    assert got == [(1, 1.4092, 0.42, 0.2836), (2, 1.39, 0.41, 0.2799)]
    assert result.best_epoch == 1
    assert result.extra["program_output_dir"] == "/home/angli/DeepSC/results/cell_type_annotation/20261201_024724"
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "Macro F1: 0.2799" in log and "[deepsc-tune] DeepSC writes this run's checkpoints" in log


def test_relative_paths_resolved_where_deepsc_tune_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings, fixed = CommandSettings.from_dict(
        {
            "backend": "command",
            "cwd": "DeepSC",
            "overrides": {
                "data_path": "split/train.h5ad",
                "csv_path": "~/maps/gene_map.csv",
                "pretrained_model_path": None,
                "ckpt_dir": "{run_dir}/c",
            },
            "data_path_eval": "split/val.h5ad",
            "model.num_bins": 5,
        }
    )
    assert settings.cwd == tmp_path / "DeepSC"
    assert settings.overrides["data_path"] == str(tmp_path / "split" / "train.h5ad")
    assert settings.overrides["csv_path"] == str(Path("~/maps/gene_map.csv").expanduser())
    assert settings.overrides["pretrained_model_path"] is None
    assert settings.overrides["ckpt_dir"] == "{run_dir}/c"  # not a path key: passed as written
    assert fixed == {"data_path_eval": str(tmp_path / "split" / "val.h5ad"), "model.num_bins": 5}


def test_child_runs_in_run_dir_with_checkout_importable(tmp_path):
    checkout = tmp_path / "DeepSC"
    (checkout / "src" / "deepsc").mkdir(parents=True)
    (checkout / "src" / "deepsc" / "__init__.py").write_text("")
    probe = (
        "import os, json, deepsc, src.deepsc; print(json.dumps({'cwd': os.getcwd()})); "
        "open('written_to_cwd.log', 'w').write('x'); "
        "print('Evaluation Loss: 1.0, Error Rate: 0.5, Accuracy: 0.5, Precision: 0.5, Recall: 0.5, Macro F1: 0.4')"
    )
    finetuner, _ = make(command=[sys.executable, "-c", probe], cwd=str(checkout), run_dir_override=None)
    result = finetuner.run({}, run_dir=tmp_path / "trial")
    assert result.history[0].val_macro_f1 == 0.4
    log = (tmp_path / "trial" / "log.txt").read_text()
    assert json.dumps({"cwd": str(tmp_path / "trial")}) in log
    assert (tmp_path / "trial" / "written_to_cwd.log").exists()
    assert sorted(p.name for p in checkout.iterdir()) == ["src"]


def test_cosine_without_warmup_fails_like_deepsc(run_dir):
    finetuner, fixed = make(epoch=1)
    with pytest.raises(FinetuneError, match=r"exit status 1: ValueError: Expected positive integer T_0, but got 0"):
        finetuner.run({**fixed, "lr_scheduler_type": "cosine", "warmup_ratio": 0.0}, run_dir=run_dir)


def test_a_note_never_splits_the_childs_line_in_the_log(tmp_path, run_dir):
    """deepsc-tune's own notes go on lines of their own, also when the child is half-way through
    a line (seen with DeepSC: its output-folder line and the start of the warmup line in one
    read, the note written after it, then the rest of the line)."""
    out = tmp_path / "outputs"
    child = tmp_path / "child.py"
    child.write_text(
        "import sys, time\n"
        f"sys.stdout.write('Output directory created: {out}\\n  - Warmup steps: 2')\n"
        "sys.stdout.flush(); time.sleep(0.5)\n"
        "print(); print('Epoch 1 [Finetune Cell Type Annotation]')\n"
        "print('Evaluation Loss: 0.5, Error Rate: 0.4, Accuracy: 0.6000, Precision: 0.5, Recall: 0.5, Macro F1: 0.5000')\n"
    )
    settings, fixed = CommandSettings.from_dict({"backend": "command", "command": [sys.executable, str(child)]})
    CommandFinetuner(settings).run({**fixed, "epoch": 1}, run_dir=run_dir)
    lines = (run_dir / "log.txt").read_text().splitlines()
    assert "  - Warmup steps: 2" in lines, lines
    assert any(line.startswith("[deepsc-tune] DeepSC writes this run's checkpoints") for line in lines), lines
