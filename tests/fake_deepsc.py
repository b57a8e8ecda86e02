"""A stand-in for DeepSC's fine-tuning CLI, for testing the ``command`` backend.

Behaves like ``python -m src.deepsc.finetune.finetune key=value ...`` as far as deepsc-tune can
tell: Hydra-style overrides (``key=value``, ``+key=value`` for keys new to the config, with
Hydra's errors for an unknown key or a ``+`` on a known one), DeepSC's start banner, its
per-epoch ``Epoch N [Finetune Cell Type Annotation]`` / ``Evaluation Loss: ...`` lines, its
``Unknown lr_scheduler_type`` error, and files written into ``hydra.run.dir``.

The validation accuracy is a deterministic function of ``learning_rate``, ``lr_scheduler_type``
and the epoch (:func:`accuracy`): peaked at 1e-4 in log space, rising with epochs.

Extra keys (pass them with ``+``, as Hydra would require):

``+sleep=SECONDS``
    Pause per epoch (default 0.05).
``+mode=normal|crash|hang|silent|json|both``
    crash: exit 3 after epoch 1; hang: sleep forever after epoch 1; silent: no metric lines,
    exit 0; json: metrics only as JSON lines in ``$DEEPSC_TUNE_METRICS``; both: stdout and JSON.
``+spawn_child=true``
    Start a grandchild that sleeps for an hour (its pid in ``grandchild.pid``).
``+ignore_term=true``
    Ignore SIGTERM (inherited by the grandchild), so that only SIGKILL stops the run.

``+num_workers=N``
    DataLoader-like worker processes forked for each epoch (default 8, DeepSC's hard-coded
    number; their pids in ``workers.pid``).

Files in the run folder: ``pid``, ``argv.json``, ``config.json`` (the parsed config),
``env.json`` (variables deepsc-tune sets), ``checkpoints/epoch_N.ckpt``, ``done``. Like DeepSC,
it also writes ``finetune_<timestamp>.log`` into its working directory and prints
``Output directory created: ...`` (DeepSC's hard-coded checkpoint folder; here ``./outputs/...``,
or, copied into a fake checkout, the ``base_dir`` of the ``cell_type_annotation.py`` beside it).

What it mirrors of DeepSC 2416d85 (tests/backends/command/deepsc/test_real_deepsc.py runs the real one): the defaults
of ``configs/finetune/finetune.yaml`` for the keys below, tqdm's progress lines on stderr with
``\r`` and cursor-up codes, the doubled epoch header, 8 worker processes, and the errors for an
unknown ``lr_scheduler_type`` or ``finetune_mode`` and for ``cosine`` with 0 warmup steps.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

#: The config keys this fake knows (a small part of DeepSC's configs/finetune/finetune.yaml).
DEFAULTS = {
    "lr_scheduler_type": "constant",
    "learning_rate": 4e-4,
    "warmup_ratio": 0.03,
    "epoch": 10,
    "batch_size": 32,
    "grad_acc": 20,
    "seed": 42,
    "finetune_mode": "full",
    "num_device": 1,
    "num_nodes": 1,
    "obs_celltype_col": "celltype",
    "csv_path": "/home/angli/baseline/DeepSC-117-t86/scripts/data/preprocessing/gene_map_tp10k.csv",
    "load_pretrained_model": True,
    "pretrained_model_path": "/home/angli/DeepSC/results/pretraining_1201/DeepSC_11_0.ckpt",
    "data_path": "/home/angli/DeepSC/data/processed/baseline/scgpt/myeloid_train.h5ad",
    "data_path_eval": "/home/angli/DeepSC/data/processed/baseline/scgpt/myeloid_test.h5ad",
    "seperated_train_eval_dataset": False,
    "ckpt_dir": "/home/angli/baseline/DeepSC/ckpts",
    "hydra.run.dir": "outputs/fake",
}
SCHEDULERS = ("constant", "cosine")
HYDRA_HINT = "\nSet the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace."


def accuracy(learning_rate: float, epoch: int, lr_scheduler_type: str = "cosine") -> float:
    """Validation accuracy after ``epoch`` epochs: best at 1e-4, approaching its plateau."""
    closeness = math.exp(-((math.log10(learning_rate) + 4.0) ** 2) / 0.5)
    plateau = 0.5 + 0.45 * closeness + (0.01 if lr_scheduler_type == "cosine" else 0.0)
    return plateau - (plateau - 0.2) * 0.5**epoch


def macro_f1(acc: float) -> float:
    return max(0.0, acc - 0.06)


def parse_value(text: str):
    """A Hydra override value: null, bools, ints, floats, [lists], quoted or plain strings."""
    t = text.strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
        return re.sub(r"\\(.)", r"\1", t[1:-1])
    if t.startswith("[") and t.endswith("]"):
        inner = t[1:-1].strip()
        return [parse_value(p) for p in split_top(inner)] if inner else []
    low = t.lower()
    if low == "null":
        return None
    if low in ("true", "false"):
        return low == "true"
    if re.fullmatch(r"[+-]?(0|[1-9](_?\d)*)", t):
        return int(t.replace("_", ""))
    if re.fullmatch(r"[+-]?((\d+\.\d*|\.\d+)([eE][+-]?\d+)?|\d+[eE][+-]?\d+|inf|nan)", t, re.I):
        return float(t)
    return t


def split_top(text: str) -> list[str]:
    parts, depth, quote, cur = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        cur += ch
    return parts + [cur]


def hydra_error(message: str) -> None:
    print(message + "\n" + HYDRA_HINT, file=sys.stderr)
    sys.exit(1)


def parse_overrides(args: list[str]) -> dict:
    cfg = dict(DEFAULTS)
    for arg in args:
        if "=" not in arg:
            hydra_error(f"Error parsing override '{arg}'\nmissing EQUAL at '<EOF>'")
        key, value = arg.split("=", 1)
        if key.startswith("+"):
            key = key[1:]
            if key in DEFAULTS:
                hydra_error(f"Could not append to config. An item is already at '{key}'.")
        elif key not in DEFAULTS:
            hydra_error(
                f"Could not override '{key}'.\nTo append to your config use +{arg}\n"
                f"Key '{key}' is not in struct\n    full_key: {key}\n    object_type=dict"
            )
        cfg[key] = parse_value(value)
    return cfg


def planned_total_steps(cfg: dict) -> int:
    """DeepSC's own flaw, kept (cell_type_annotation.py:220): total steps assume 100,000 cells,
    whatever the data, over ``batch_size x world_size x grad_acc`` cells a step."""
    world_size = cfg["num_device"] * cfg["num_nodes"]
    return cfg["epoch"] * math.ceil(100000 / (cfg["batch_size"] * world_size * cfg["grad_acc"]))


def print_banner(cfg: dict) -> None:
    """DeepSC's start banner (cell_type_annotation.py:211-246), rank 0's stdout."""
    lr = cfg["learning_rate"]
    print("=" * 80)
    if cfg["lr_scheduler_type"] == "constant":
        print(f"Using CONSTANT learning rate: {lr}")
        print("No learning rate scheduling will be applied.")
        print("=" * 80)
        return
    total = planned_total_steps(cfg)
    print("Using COSINE ANNEALING with warmup:")
    print(f"  - Warmup steps: {math.ceil(total * cfg['warmup_ratio'])}")
    print(f"  - Total steps: {total}")
    print(f"  - Initial LR: {lr}")
    print("=" * 80)


def crash_and_exit(args: list[str], exc: str, code: int) -> None:
    # Hydra's way of reporting an exception from the task function.
    print(f"Error executing job with overrides: {args}", file=sys.stderr)
    print("Traceback (most recent call last):", file=sys.stderr)
    print('  File "src/deepsc/finetune/cell_type_annotation.py", line 97, in train', file=sys.stderr)
    print(exc, file=sys.stderr)
    print(HYDRA_HINT, file=sys.stderr)
    sys.exit(code)


def start_workers(n: int) -> list[int]:
    """Fork ``n`` idle processes, as a DataLoader with ``num_workers=n`` does for an epoch."""
    pids = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:  # a worker: wait to be stopped (by the epoch's end, or its group's signal)
            try:
                time.sleep(3600)
            finally:
                os._exit(0)
        pids.append(pid)
    return pids


def stop_workers(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def progress(epoch: int, sleep: float) -> None:
    """tqdm's bar as DeepSC's run shows it: stderr, redrawn with \r, moved with cursor-up."""
    desc = f"Epoch {epoch} [Finetune Cell Type Annotation]"
    for step in (0, 1, 2):
        sys.stderr.write(
            f"\r{desc}: {50 * step:3d}%|{'#' * 20 * step:<40}| {step}/2 "
            f"[00:00<00:00, 5.22it/s, error_rate=0.5, loss_cls=1.41]\x1b[A\n"
        )
        sys.stderr.flush()
        time.sleep(sleep / 3)


def output_dir() -> Path:
    """DeepSC 2416d85's folder: a hard-coded base + the second it gets here. In a fake checkout
    (this file as src/deepsc/finetune/finetune.py) the base is read from the
    cell_type_annotation.py beside it, as DeepSC's own line; else ./outputs."""
    trainer = Path(__file__).with_name("cell_type_annotation.py")
    found = re.search(r'base_dir = "([^"]+)"', trainer.read_text()) if trainer.is_file() else None
    folder = Path(found.group(1) if found else Path.cwd() / "outputs") / time.strftime("%Y%m%d_%H%M%S")
    if found:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def main(args: list[str]) -> None:
    cfg = parse_overrides(args)
    run_dir = Path(str(cfg["hydra.run.dir"]))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "pid").write_text(str(os.getpid()))
    (run_dir / "argv.json").write_text(json.dumps(args))
    (run_dir / "config.json").write_text(json.dumps(cfg))
    names = ("CUDA_VISIBLE_DEVICES", "PYTHONUNBUFFERED", "DEEPSC_TUNE_METRICS", "DEEPSC_TUNE_RUN_DIR")
    (run_dir / "env.json").write_text(json.dumps({k: os.environ.get(k) for k in names}))
    mode = cfg.get("mode", "normal")
    if cfg.get("ignore_term"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if cfg.get("spawn_child"):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        (run_dir / "grandchild.pid").write_text(str(child.pid))

    stamp = time.strftime("%Y%m%d_%H%M%S")
    Path(f"finetune_{stamp}.log").write_text("fake DeepSC log\n")  # DeepSC: setup_logging(log_path=".")
    print("Getting common cell type count from separated datasets...")
    print(f"Output directory created: {output_dir()}")
    if cfg["finetune_mode"] not in ("full", "head_only"):
        crash_and_exit(
            args,
            f"ValueError: Unknown finetune_mode: {cfg['finetune_mode']}. Must be one of: 'full', 'head_only'",
            1,
        )
    if cfg["lr_scheduler_type"] not in SCHEDULERS:
        crash_and_exit(
            args,
            f"ValueError: Unknown lr_scheduler_type: '{cfg['lr_scheduler_type']}'. "
            "Must be one of: 'constant', 'cosine'",
            1,
        )
    if cfg["lr_scheduler_type"] == "cosine":
        total = planned_total_steps(cfg)
        if math.ceil(total * cfg["warmup_ratio"]) * 3 <= 0:
            crash_and_exit(
                args,
                f"ValueError: Expected positive integer T_0, but got {math.ceil(total * cfg['warmup_ratio']) * 3}",
                1,
            )
    print_banner(cfg)
    if mode == "silent":
        print("train_loader:  1000")
        print("Training finished.")
        return
    print("train_loader:  1000")
    print("eval_loader:  200")
    metrics_file = os.environ.get("DEEPSC_TUNE_METRICS")
    sleep = float(cfg.get("sleep", 0.05))
    n_workers = int(cfg.get("num_workers", 8))
    for epoch in range(1, int(cfg["epoch"]) + 1):
        workers = start_workers(n_workers)
        # Replaced whole, so that a test reading it never sees it half-written.
        (run_dir / "workers.pid.tmp").write_text(" ".join(map(str, workers)))
        os.replace(run_dir / "workers.pid.tmp", run_dir / "workers.pid")
        progress(epoch, sleep)
        acc = accuracy(float(cfg["learning_rate"]), epoch, cfg["lr_scheduler_type"])
        f1 = macro_f1(acc)
        loss = -math.log(acc)
        ckpts = (run_dir / "checkpoints").resolve()
        if not ckpts.exists():
            ckpts.mkdir()
            print(f"  - Checkpoints: {ckpts}")  # as DeepSC's setup_output_directory says it
        if mode in ("normal", "both", "crash", "hang"):
            # DeepSC prints the header twice (two fabric.print calls), then evaluates.
            print(f"Epoch {epoch} [Finetune Cell Type Annotation]")
            print(f"Epoch {epoch} [Finetune Cell Type Annotation]")
            print("unique true cell_type_ids: [0 1 2]")
            print(
                f"Evaluation Loss: {loss:.4f}, Error Rate: {1 - acc:.4f}, Accuracy: {acc:.4f}, "
                f"Precision: {f1 + 0.01:.4f}, Recall: {f1 - 0.01:.4f}, Macro F1: {f1:.4f}"
            )
        # DeepSC's save_checkpoint: after evaluating, two full checkpoints, each announced.
        (ckpts / f"epoch_{epoch}.ckpt").write_text(f"fake checkpoint, epoch {epoch}\n" + "x" * 1000)
        print(f"Saved checkpoint: {ckpts / f'epoch_{epoch}.ckpt'}")
        (ckpts / "latest_checkpoint.ckpt").write_text(f"fake checkpoint, epoch {epoch}\n" + "x" * 1000)
        print(f"Saved latest checkpoint: {ckpts / 'latest_checkpoint.ckpt'}")
        if mode in ("json", "both") and metrics_file:
            with open(metrics_file, "a") as f:
                f.write(json.dumps({"epoch": epoch, "val_accuracy": acc, "val_macro_f1": f1, "val_loss": loss}) + "\n")
            print(f"epoch {epoch} done")
        # Plots and checkpoints after the evaluation; the workers are still up when a tuner that
        # read the line stops the run (DeepSC's loaders start new ones for the next epoch).
        time.sleep(sleep / 3)
        stop_workers(workers)
        if epoch == 1 and mode == "crash":
            crash_and_exit(args, "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB", 3)
        if epoch == 1 and mode == "hang":
            while True:
                time.sleep(3600)
    (run_dir / "done").write_text("ok\n")
    print("Training finished.")


if __name__ == "__main__":
    main(sys.argv[1:])
