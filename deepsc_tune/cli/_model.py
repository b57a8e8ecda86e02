"""One model outside a study: ``finetune`` (fixed settings), ``lr-find`` (LR range test) and
``predict`` (annotate cells with the tuned model)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from deepsc_tune.cli._common import (
    NameArg,
    OverridesArg,
    ResultsDirOpt,
    StudyFolderOpt,
    _check_device,
    _echo,
    _make_finetuner,
    _prepare,
    _quiet_libraries,
    _space_name,
    _study_folder,
    user_errors,
)
from deepsc_tune.errors import ConfigError


def finetune(
    name: NameArg,
    overrides: OverridesArg = None,
    results_dir: ResultsDirOpt = Path("results"),
    study_name: StudyFolderOpt = None,
) -> None:
    """Run one fine-tune with fixed settings, the way DeepSC users run theirs (its run folder:
    RESULTS_DIR/STUDY/finetune).

    Settings come from the file's finetune block and the overrides, e.g.
    `deepsc-tune finetune pbmc68k learning_rate=3e-4 lr_scheduler_type=cosine warmup_ratio=0.1`.
    Searched settings not given fall back to DeepSC's defaults. Prints DeepSC's start banner and
    one evaluation line per epoch, then the best epoch and the test metrics.
    """
    from deepsc_tune.config import load_search_space

    _quiet_libraries()
    with user_errors():
        space = load_search_space(name, overrides or [], fixed_only=True)
        _check_device(space, None, overrides)
        folder = _study_folder(results_dir, space_name=space.name, study_name=study_name)
        finetuner, _ = _make_finetuner(space, results_dir, log=_echo)
        result = finetuner.run(dict(space.fixed), metric=space.metric, run_dir=folder.finetune)
        best = result.best()
        if best is not None:
            _echo(
                f"best epoch {best.epoch}: val accuracy {best.val_accuracy:.4f}"
                + (f", val macro-F1 {best.val_macro_f1:.4f}" if best.val_macro_f1 is not None else "")
            )
        if result.test_accuracy is not None:
            _echo(
                f"test (model of the best epoch): accuracy {result.test_accuracy:.4f}, "
                f"macro-F1 {result.test_macro_f1:.4f}"
            )


def predict(
    name: NameArg,
    query: Annotated[Path, typer.Argument(help="The .h5ad file of cells to annotate (read only).", show_default=False)],
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out", "-o", help="The new .h5ad file. Default: QUERY.predicted.h5ad beside QUERY.", show_default=False
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out file.")] = False,
    results_dir: ResultsDirOpt = Path("results"),
    study_name: Annotated[
        Optional[str],
        typer.Option(
            "--study-name",
            help="The study whose model to use (RESULTS_DIR/STUDY/model). Default: the search space's name.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Annotate QUERY's cells with the tuned model of NAME's study (RESULTS_DIR/STUDY/model).

    The model is the best trial's best epoch, kept by `deepsc-tune run` (built-in fine-tuner).
    QUERY is normalised as the training cells were and its genes matched by name (missing ones
    are 0, and counted). Writes a new file with obs deepsc_tune_label and
    deepsc_tune_probability, obsm deepsc_tune_probabilities (cells x classes, in the order of
    uns['deepsc_tune']['classes']); QUERY itself is
    never changed. When QUERY has the training label column, prints the accuracy on it.
    """
    from deepsc_tune.backends.builtin import predict_file
    from deepsc_tune.study import command_args, study_model

    _quiet_libraries()
    with user_errors():
        from deepsc_tune.backends.builtin import device_problem

        why = None if device == "auto" else device_problem(device)
        if why:
            raise ConfigError(f"--device {device}: {why}")
        space_name = _space_name(name)
        folder = _study_folder(results_dir, space_name=space_name, study_name=study_name)
        model = study_model(folder, space_name=space_name)
        run_args = command_args(name, study_name, space_name)
        result = predict_file(model, query, out=out, device=device, overwrite=overwrite, name=run_args)
        card = result.card
        _echo(
            f"model: trial {card['trial']} of study '{card['study']}', epoch {card['best_epoch']}, "
            f"{card['metric']} {card['value']:.4f}"
            + (f", test accuracy {card['test_accuracy']:.4f}" if card.get("test_accuracy") is not None else "")
        )
        for note in result.notes:
            _echo(f"query: {note}")
        if result.n_missing:
            typer.secho(
                f"warning: {result.n_missing} of the model's {result.n_genes} genes are missing "
                "from the query (set to 0)",
                fg=typer.colors.YELLOW,
                err=True,
            )
        if result.accuracy is not None:
            unknown = (
                f"; {result.n_unknown} cells of classes the model does not know left out" if result.n_unknown else ""
            )
            _echo(
                f"accuracy against obs[{card['data'].get('label_key')!r}]: {result.accuracy:.4f} "
                f"on {result.n_scored} cells{unknown}"
            )
        _echo(f"wrote {result.out} ({result.n_cells} cells): obs deepsc_tune_label, deepsc_tune_probability")


def lr_find(
    name: NameArg,
    overrides: OverridesArg = None,
    min_lr: Annotated[float, typer.Option("--min-lr", help="First learning rate.")] = 1e-6,
    max_lr: Annotated[
        float, typer.Option("--max-lr", help="Last learning rate (if the loss has not diverged before).")
    ] = 1.0,
    steps: Annotated[
        int, typer.Option("--steps", help="Optimizer steps (grad_acc batches each, as in a trial).")
    ] = 100,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu or cuda.", show_default=False)] = None,
    results_dir: ResultsDirOpt = Path("results"),
    study_name: StudyFolderOpt = None,
) -> None:
    """The usage guide's LR range test in one short pass, on the built-in fine-tuner.

    Runs the trials' own training step (every finetune setting applies: model, loss, grad_acc,
    precision, init_checkpoint, finetune_mode) while the learning rate rises exponentially from
    --min-lr to --max-lr over --steps optimizer steps on the training cells, plots the training loss against it (RESULTS_DIR/STUDY/lr_find.html) and
    suggests a learning_rate range for the search space, as overrides for `deepsc-tune run`.
    """
    from deepsc_tune.config import load_search_space
    from deepsc_tune.results import check_bounds, override_line, run_lr_find, write_lr_find

    _quiet_libraries()
    with user_errors():
        check_bounds(min_lr, max_lr, steps)
        space = load_search_space(name, overrides or [], fixed_only=True)
        from deepsc_tune.backends import get_backend

        if not get_backend(space.backend).in_process:
            raise ConfigError(
                f"{space.path}: finetune.backend: lr-find runs the built-in fine-tuner, got {space.backend!r}"
            )
        _check_device(space, device, overrides)
        data = _prepare(space, results_dir)
        from deepsc_tune.backends.builtin import TrainSettings

        settings = TrainSettings.from_dict({**dict(space.fixed), **({"device": device} if device else {})})
        result = run_lr_find(data, settings, min_lr=min_lr, max_lr=max_lr, steps=steps)
        folder = _study_folder(results_dir, space_name=space.name, study_name=study_name)
        html, _ = write_lr_find(result, folder.path, name=space.name, settings=settings.to_dict())
        _echo(
            f"lr-find: {len(result.learning_rates)} steps from {min_lr:g} to {result.learning_rates[-1]:.3g}"
            + (" (stopped: the loss diverged)" if result.stopped_early else "")
        )
        if result.note:
            _echo(f"note: {result.note}")
        if result.low is not None:
            _echo(f"steepest descent at {result.steepest_lr:.3g}, lowest loss at {result.min_loss_lr:.3g}")
            _echo(f"suggested learning_rate: {{low: {result.low:.3g}, high: {result.high:.3g}, log: true}}")
            _echo(f"use it (a new study): deepsc-tune run {name} --study-name {space.name}-lr {override_line(result)}")
        _echo(f"plot: {html}")
