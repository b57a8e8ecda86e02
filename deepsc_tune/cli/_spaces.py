"""Commands on search-space files: ``validate`` and ``list``."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from deepsc_tune.cli._common import (
    EXIT_USAGE,
    _echo,
)
from deepsc_tune.errors import ConfigError, DeepscTuneError


def validate(
    files: Annotated[list[str], typer.Argument(help="Search-space names or YAML files.", show_default=False)],
    overrides: Annotated[
        Optional[list[str]], typer.Option("--set", help="An override to apply before checking (repeatable).")
    ] = None,
) -> None:
    """Check search-space files without loading data or running anything.

    Lists every problem with its key path (unknown keys, low >= high, log with low <= 0,
    numbers read as text, conditions on unknown parameters, keys both fixed and searched).
    For a command backend that runs DeepSC it also reads the checkout (finetune.cwd): the
    entry module, every key Hydra would refuse (with a did-you-mean), cosine with
    warmup_ratio <= 0 (a searched range is clipped, with a note), num_device other than 1,
    and where DeepSC writes its checkpoints (notes after "ok").
    """
    from deepsc_tune.config import load_search_space

    bad = 0
    for item in files:
        try:
            space = load_search_space(item, overrides or [], check_deepsc=True)
            from deepsc_tune.backends import get_backend

            # The files a run needs (data files; a command's checkout and program) must exist;
            # they are not read here.
            try:
                get_backend(space.backend).check_files(space.settings, space.data_settings, hint=space.source)
            except DeepscTuneError as e:
                raise ConfigError(f"{space.path}: {e}") from None
        except DeepscTuneError as e:
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            bad += 1
            continue
        params = ", ".join(space.params) or "nothing"
        _echo(f"ok: {space.path}: searches {params}; {space.n_trials} trials on {space.metric}")
        for note in space.notes:
            _echo(f"  note: {note}")
    if bad:
        raise typer.Exit(EXIT_USAGE)


def list_spaces() -> None:
    """List the search spaces found in ./search_spaces/ and installed with the package."""
    from deepsc_tune.config import list_search_spaces, parse_yaml
    from deepsc_tune.utils import read_yaml_text

    for name, path in list_search_spaces().items():
        try:
            description = parse_yaml(read_yaml_text(path), source=str(path)).get("description", "")
        except DeepscTuneError:
            description = "(invalid file: run `deepsc-tune validate`)"
        _echo(f"{name:<14} {description}  [{path}]")
