"""``deepsc-tune split``: the data block's train / validation / test split as ``.h5ad`` files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from deepsc_tune.cli._common import (
    NameArg,
    OverridesArg,
    ResultsDirOpt,
    StudyFolderOpt,
    _echo,
    _quiet_libraries,
    _study_folder,
    user_errors,
)
from deepsc_tune.errors import ConfigError


def split(
    name: NameArg,
    overrides: OverridesArg = None,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            help="Folder for train.h5ad / val.h5ad / test.h5ad. Default: RESULTS_DIR/STUDY/split.",
            show_default=False,
        ),
    ] = None,
    results_dir: ResultsDirOpt = Path("results"),
    study_name: StudyFolderOpt = None,
    for_: Annotated[
        Optional[str],
        typer.Option(
            "--for",
            help="deepsc: files DeepSC's fine-tuner reads as they are "
            "(log1p CP10k, var gene_name, label column obs_celltype_col); original: the "
            "input's own values. Default: deepsc when finetune runs DeepSC, else original.",
            show_default=False,
        ),
    ] = None,
    gene_map: Annotated[
        Optional[Path],
        typer.Option(
            "--gene-map",
            help="DeepSC's gene map (CSV feature_name,id); default: "
            "finetune.overrides.csv_path. Reports how many genes DeepSC will see.",
            show_default=False,
        ),
    ] = None,
    write_gene_map: Annotated[
        bool,
        typer.Option(
            "--write-gene-map",
            help="With --for deepsc: also write OUT/gene_map.csv (every gene of the data, ids 0..n-1) and "
            "point csv_path at it. For a random-init model (load_pretrained_model: false) only: a "
            "pretrained DeepSC needs the gene map it was trained with.",
        ),
    ] = False,
) -> None:
    """Write the data block's train / validation / test split as .h5ad files.

    The cells are exactly those the built-in fine-tuner uses. With --for deepsc (the default
    when finetune.backend is command and runs DeepSC) the files are what DeepSC's fine-tuner
    reads as they are: X = log1p of counts per 10k from raw counts (log-normalised data kept as
    they are; DeepSC bins each cell's values itself), all genes with var gene_name, the label
    column named as obs_celltype_col (default celltype). With a gene map (csv_path or
    --gene-map) it says how many genes DeepSC will see and refuses a map that matches none.
    It prints the overrides to paste: data_path = train, data_path_eval = the VALIDATION file
    (DeepSC evaluates on it), seperated_train_eval_dataset = true. Keep test.h5ad out of the
    study. With --for original the files keep the input's values and columns.
    """
    from deepsc_tune.backends import get_backend
    from deepsc_tune.backends.command.deepsc import write_split
    from deepsc_tune.config import load_search_space
    from deepsc_tune.study import cache_dir

    _quiet_libraries()
    with user_errors():
        if for_ not in (None, "deepsc", "original"):
            raise ConfigError(f"--for: unknown {for_!r}; expected deepsc or original")
        space = load_search_space(name, overrides or [])
        settings = space.data_settings
        folder = out or _study_folder(results_dir, space_name=space.name, study_name=study_name).split
        if for_ is None:
            from deepsc_tune.backends.command.deepsc import is_deepsc_command

            runs_deepsc = get_backend(space.backend).runs_program and is_deepsc_command(space.settings.command)
            for_ = "deepsc" if runs_deepsc else "original"
        if for_ == "original":
            if write_gene_map:
                raise ConfigError("--write-gene-map: DeepSC's gene map is written with --for deepsc only")
            paths = write_split(settings, folder, cache_dir=cache_dir(results_dir), hint=space.source)
            for part, path in paths.items():
                _echo(f"{part}: {path}")
            return
        _split_for_deepsc(space, settings, folder, gene_map=gene_map, write_gene_map=write_gene_map)


def _split_for_deepsc(space, settings, folder: Path, *, gene_map: Path | None, write_gene_map: bool) -> None:
    from deepsc_tune.backends import get_backend
    from deepsc_tune.backends.command.deepsc import deepsc_options, write_deepsc_split
    from deepsc_tune.config import dump_settings

    runs_program = get_backend(space.backend).runs_program
    options = deepsc_options({"overrides": space.settings.overrides, **space.fixed} if runs_program else None)
    if gene_map is not None:
        options["gene_map"] = gene_map
    if write_gene_map:
        if gene_map is not None:
            raise ConfigError(f"--write-gene-map: --gene-map {gene_map} is given too; expected one or the other")
        options["gene_map"] = None  # the one being written replaces finetune.overrides.csv_path
    result = write_deepsc_split(settings, folder, hint=space.source, write_gene_map=write_gene_map, **options)
    _echo(f"train: {result.paths['train']}")
    _echo(f"val: {result.paths['val']}   (DeepSC's data_path_eval: the study selects on it)")
    if "test" in result.paths:
        _echo(
            f"test: {result.paths['test']}   (keep it out of the study: evaluate the chosen "
            "configuration on it once, at the end)"
        )
    _echo(f"{result.n_genes} genes (all; var[{result.gene_col!r}]), labels in obs[{result.label_col!r}]")
    for note in result.notes:
        _echo(f"note: {note}")
    _echo("paste into finetune.overrides:")
    for line in dump_settings(result.overrides).splitlines():
        _echo(f"  {line}")
