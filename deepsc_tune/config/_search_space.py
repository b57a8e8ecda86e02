"""Search-space files: one YAML per dataset, validated field by field before anything runs.

A file has the blocks ``data`` (the fine-tuner's data settings), ``finetune`` (fixed settings,
DeepSC's names), ``search`` (what the study explores) and ``study`` (metric, trial budget,
sampler, pruner, configs to run first). See ``search_spaces/hpancreas.yaml`` for an example.

Every problem in a file is collected and reported together, each with its key path, so a user
fixes a file in one pass (like pydantic's error lists).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import optuna
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from deepsc_tune.backends import BACKENDS, DEFAULT_BACKEND, FinetuneBlock

# The overrides' names stay importable from here; TOP_KEYS: the top-level keys of a file.
from deepsc_tune.config._overrides import TOP_KEYS, apply_overrides, blame_overrides, override_paths  # noqa: F401
from deepsc_tune.config._search_params import GRID_NEEDS, ParamSpec, parse_search
from deepsc_tune.config._study_settings import PRUNERS, SAMPLERS, StudySettings
from deepsc_tune.data import DataSettings
from deepsc_tune.errors import ConfigError
from deepsc_tune.utils import (
    STRICT,
    Problem,
    expected,
    format_problems,
    line_errors,
    load_mapping,
    problem,
    problems_from,
    raise_errors,
    read_yaml_text,
    validate_python,
)

#: Where ``deepsc-tune run NAME`` looks for ``NAME.yaml``, after a path: this folder, relative
#: to the current directory, then the copies installed with the package.
LOCAL_DIR = Path("search_spaces")


# ----------------------------------------------------------------------------- the file


#: Keys that may change between runs of one study without refusal: they say how long, how
#: carefully or where to record, not what is searched on which data. The one list.
NEUTRAL_KEYS = (
    "study.n_trials",
    "study.max_failures",
    "study.confirm",
    "study.timeout",
    "study.tracking",
    "finetune.keep_checkpoints",
)


@dataclass
class SearchSpace:
    """A validated search-space file, with command-line overrides applied."""

    name: str
    description: str
    path: Path | None
    text: str
    #: The file as written, overrides applied: what the study's hash and record are of.
    config: dict[str, Any]
    params: dict[str, ParamSpec]
    #: The ``finetune:`` block, validated once by its backend: typed settings (``TrainSettings``,
    #: ``CommandSettings``) and the typed fixed settings every trial starts from.
    finetune: FinetuneBlock
    backend: str
    metric: str
    n_trials: int
    max_failures: int
    enqueue: list[dict[str, Any]]
    sampler_config: dict[str, Any]
    pruner_config: dict[str, Any]
    source: str | None = None
    #: Lines to show the user (DeepSC's output folder, a clipped range); see backends/command/deepsc/_space.py.
    notes: list[str] = field(default_factory=list)
    #: ``{"top": K, "seeds": N}`` from ``study.confirm``, or ``None`` (no confirmation).
    confirm: dict[str, int] | None = None
    timeout: float | None = None
    #: ``{tracker: {key: value}}`` from ``study.tracking`` (config/_tracking.py), or ``None``.
    tracking: dict[str, dict[str, Any]] | None = None
    #: The ``data:`` block, typed (``None`` for a file built without one, e.g. in a test).
    data_settings: DataSettings | None = None

    @property
    def settings(self) -> Any:
        """The ``finetune:`` block, typed by its backend (``TrainSettings``, ``CommandSettings``)."""
        return self.finetune.settings

    @property
    def fixed(self) -> dict[str, Any]:
        """The fixed settings (DeepSC's names, validated values) every trial starts from."""
        return self.finetune.fixed

    @property
    def data(self) -> dict[str, Any]:
        """The ``data`` block as written (after overrides)."""
        return self.config.get("data") or {}

    @property
    def sha256(self) -> str:
        """Hash of what decides the study's meaning: data, finetune, search, sampler, pruner.

        :data:`NEUTRAL_KEYS`, ``name``, ``description`` and the file's formatting may change
        between runs of the same study without refusal.
        """
        keep = {k: self.config.get(k) for k in ("data", "finetune", "search", "study")}
        for path in NEUTRAL_KEYS:
            block, key = path.split(".")
            if isinstance(keep.get(block), dict) and key in keep[block]:
                keep[block] = {k: v for k, v in keep[block].items() if k != key}
        keep["study"] = keep["study"] or {}
        canonical = json.dumps(keep, sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def suggest(self, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        """Ask ``trial`` for every active parameter, conditions first."""
        values: dict[str, Any] = {}
        for spec in self.params.values():
            if spec.is_active(values):
                values[spec.name] = _suggest(trial, spec)
        return values

    def settings_for(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Full fine-tuner settings: fixed settings overlaid with a trial's values."""
        return {**self.fixed, **params}

    def build_sampler(self) -> optuna.samplers.BaseSampler:
        """The Optuna sampler named by ``study.sampler``."""
        cfg = dict(self.sampler_config)
        kind = cfg.pop("type")
        cls = getattr(optuna.samplers, SAMPLERS[kind])
        if kind == "grid":
            cfg.setdefault("search_space", {n: p.grid_values() for n, p in self.params.items()})
        return cls(**cfg)

    def build_pruner(self) -> optuna.pruners.BasePruner:
        """The Optuna pruner named by ``study.pruner``."""
        cfg = dict(self.pruner_config)
        kind = cfg.pop("type")
        cls = getattr(optuna.pruners, PRUNERS[kind])
        if kind == "hyperband":
            # Resource is epochs; without max_resource Optuna guesses it from the first trial.
            cfg.setdefault("max_resource", int(self.fixed.get("epoch", 10)))
        return cls(**cfg)


def _suggest(trial: optuna.trial.BaseTrial, spec: ParamSpec) -> Any:
    if spec.kind == "categorical":
        return trial.suggest_categorical(spec.name, list(spec.choices or ()))
    if spec.kind == "int":
        return trial.suggest_int(spec.name, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
    return trial.suggest_float(spec.name, spec.low, spec.high, step=spec.step, log=spec.log)


# ----------------------------------------------------------------------------- loading


def resolve_search_space_path(name_or_path: str) -> Path:
    """Find the file for ``name_or_path``.

    A path to an existing file wins; otherwise ``NAME`` is looked up as
    ``./search_spaces/NAME.yaml`` and then among the files installed with the package.
    """
    candidate = Path(name_or_path).expanduser()
    if candidate.is_file():
        return candidate
    if candidate.suffix in (".yaml", ".yml") or "/" in name_or_path:
        raise ConfigError(f"search-space file not found: {name_or_path}")
    for folder in (LOCAL_DIR, packaged_dir()):
        path = folder / f"{name_or_path}.yaml"
        if path.is_file():
            return path
    known = sorted(list_search_spaces())
    raise ConfigError(
        f"unknown search space '{name_or_path}': no file {LOCAL_DIR / (name_or_path + '.yaml')} "
        f"and none installed; known: {', '.join(known) or '(none)'}; or give a path to a YAML file"
    )


def packaged_dir() -> Path:
    """Folder of the search spaces installed with the package."""
    installed = Path(__file__).parents[1] / "search_spaces"
    if installed.is_dir():
        return installed
    return Path(__file__).parents[2] / "search_spaces"  # a source checkout


def list_search_spaces() -> dict[str, Path]:
    """Names of the search spaces found locally and in the package (local ones first)."""
    found: dict[str, Path] = {}
    for folder in (LOCAL_DIR, packaged_dir()):
        if folder.is_dir():
            for path in sorted(folder.glob("*.yaml")):
                found.setdefault(path.stem, path)
    return found


def load_search_space(
    name_or_path: str,
    overrides: Sequence[str] = (),
    *,
    fixed_only: bool = False,
    check_deepsc: bool = False,
) -> SearchSpace:
    """Read, override and validate a search-space file.

    Parameters
    ----------
    name_or_path
        A YAML path, or a name looked up in ``./search_spaces/`` and the package.
    overrides
        Hydra-style ``key.path=value`` items; values are parsed as YAML. A bare key
        (``learning_rate=3e-4``) means the ``finetune`` block.
    fixed_only
        Drop the ``search`` block, as for one fine-tune (``deepsc-tune finetune``): searched
        settings then come from the overrides or the fine-tuner's defaults.
    check_deepsc
        For a command backend that runs DeepSC, also report what DeepSC would refuse (its
        entry module, unknown keys, schedules, devices, its output folder; see
        :func:`deepsc_tune.backends.command.deepsc._space.check_command_space`) with the file's other problems.
        ``validate`` and ``run`` check; a ``warmup_ratio`` range is clipped either way.

    Raises
    ------
    ConfigError
        With every problem found, each named by its key path.
    """
    path = resolve_search_space_path(name_or_path)
    text = read_yaml_text(path)
    raw = parse_yaml(text, source=str(path))
    if fixed_only:
        raw = {k: v for k, v in raw.items() if k != "search"}
        raw["study"] = {k: v for k, v in (raw.get("study") or {}).items() if k != "enqueue"}
    return build_search_space(raw, text=text, path=path, overrides=overrides, check_deepsc=check_deepsc)


def parse_yaml(text: str, *, source: str) -> dict[str, Any]:
    """A search-space file's text as a mapping (duplicate keys refused; one-line errors naming the line)."""
    return load_mapping(text, source=source, keys=TOP_KEYS)


# ----------------------------------------------------------------------------- the file model


def folder_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be one folder under ``--results-dir`` (``None``: it can).

    A study's name is its folder: ``..``, a path (``/``, ``\\``), an empty or hidden name
    (leading ``.``) would put its files elsewhere, or out of sight.
    """
    if not name or name.startswith(".") or any(c in name for c in "/\\\0") or name != name.strip():
        return "expected one plain folder name (no / or \\, not empty, not starting with .)"
    return None


def _name(raw: Any, info: ValidationInfo) -> str:
    if raw is not None and not (isinstance(raw, str) and raw.strip()):
        # name: "" (or blanks) is a mistake, not "use the file's name": leave the key out for that
        raise expected("a short name that is one plain folder name, or no name key for the file's own name")
    name = raw or info.context["default_name"]
    plain = isinstance(name, str) and folder_name_problem(name) is None
    if not plain or not name.replace("-", "_").replace(".", "_").isidentifier():
        raise expected("a short name that is one plain folder name (letters, digits, -, _, ., not starting with .)")
    info.context["parsed"]["name"] = name
    return name


def _data_block(raw: Any) -> Any:
    if raw is None:
        raise problem("missing; expected a mapping")
    return raw


class SpaceFile(BaseModel):
    """A search-space file: the blocks, each validated by its own schema, composed.

    Blocks are validated in the order below, each recording its result in the validation
    context's ``parsed`` mapping, so that a later block is checked against the earlier ones
    (searched keys against the backend's settings, ``study.enqueue`` against ``search``) and
    every problem of the file is reported at once.
    """

    model_config = ConfigDict(**STRICT, validate_default=True)

    name: Annotated[str, PlainValidator(_name)] = None
    description: Any = None
    source: Any = None
    finetune: Any = None
    data: Annotated[DataSettings, BeforeValidator(_data_block)] = None
    search: Any = None
    study: Any = None

    @field_validator("finetune", mode="plain")
    @classmethod
    def _finetune(cls, raw: Any, info: ValidationInfo) -> FinetuneBlock:
        name = info.context["backend"]
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise expected("a mapping")
        backend = BACKENDS.get(name)
        if backend is None:
            what = f"unknown backend {name!r}; expected {' or '.join(repr(b) for b in BACKENDS)}"
            raise_errors([(("backend",), problem(what), name)])
        block = backend.parse(raw, info.context["parsed"].setdefault("fixed", {}))
        info.context["parsed"]["finetune"] = block
        return block

    @field_validator("data", mode="after")
    @classmethod
    def _data(cls, data: DataSettings, info: ValidationInfo) -> DataSettings:
        info.context["parsed"]["data"] = data
        return data

    @field_validator("search", mode="plain")
    @classmethod
    def _search(cls, raw: Any, info: ValidationInfo) -> dict[str, ParamSpec]:
        parsed = info.context["parsed"]
        backend = BACKENDS.get(info.context["backend"])
        finetune = parsed.get("finetune")
        parsed["params"] = {}
        return parse_search(
            raw,
            backend=info.context["backend"],
            known=backend.searchable if backend else None,
            types=backend.param_types() if backend else None,
            fixed=finetune.fixed if finetune else parsed.get("fixed"),
            check=backend.check if finetune and backend.checks_values else None,
            valid=parsed["params"],
        )

    @field_validator("study", mode="plain")
    @classmethod
    def _study(cls, raw: Any, info: ValidationInfo) -> StudySettings:
        parsed = info.context["parsed"]
        try:
            study = validate_python(StudySettings, {} if raw is None else raw, context={"params": parsed.get("params")})
        except ValidationError as e:
            raise_errors(line_errors(e, model=StudySettings))
            raise
        parsed["study"] = study
        return study

    @model_validator(mode="after")
    def _grid_values(self) -> SpaceFile:
        if self.study.sampler.get("type") == "grid" and "search_space" not in self.study.sampler:
            errors = []
            for spec in self.search.values():
                try:
                    spec.grid_values()
                except ConfigError:
                    errors.append((("search", spec.name), problem(GRID_NEEDS), None))
            raise_errors(errors)
        return self


def _backend_name(config: Mapping[str, Any]) -> str:
    finetune = config.get("finetune")
    return finetune.get("backend", DEFAULT_BACKEND) if isinstance(finetune, Mapping) else DEFAULT_BACKEND


def build_search_space(
    raw: Mapping[str, Any],
    *,
    text: str = "",
    path: Path | None = None,
    overrides: Sequence[str] = (),
    check_deepsc: bool = False,
) -> SearchSpace:
    """Validate a parsed file (after ``overrides``) and build a :class:`SearchSpace`.

    ``check_deepsc``: see :func:`load_search_space`.
    """
    source = str(path) if path else "<search space>"
    config = apply_overrides(dict(raw), overrides)
    backend = _backend_name(config)
    context: dict[str, Any] = {"backend": backend, "default_name": path.stem if path else "study", "parsed": {}}
    problems: list[Problem] = []
    try:
        SpaceFile.model_validate(config, context=context)
    except ValidationError as e:
        problems = problems_from(e, model=SpaceFile)
    parsed = context["parsed"]
    params: dict[str, ParamSpec] = parsed.get("params", {})
    notes: list[str] = []
    finetune = parsed.get("finetune")
    check_space = BACKENDS[backend].check_space if backend in BACKENDS else None
    if check_space is not None and finetune is not None:
        # What the backend's program would refuse (DeepSC's checks, backends/command/deepsc/_space.py). A range whose
        # low end it would refuse is clipped (the study samples from ``params``; the hash is of
        # the file, so resuming a study is unaffected); the problems are reported on request.
        study = parsed.get("study")
        findings = check_space(finetune, params, study.enqueue if study else [])
        params = {**params, **{n: dataclasses.replace(params[n], low=low) for n, low in findings.lows.items()}}
        params = {**params, **{n: dataclasses.replace(params[n], high=hi) for n, hi in findings.highs.items()}}
        if check_deepsc:
            problems.extend(findings.problems)
            notes.extend(findings.notes)
        else:
            notes.extend(n for n in findings.notes if n.startswith("search."))

    if problems:
        problems, from_cli = blame_overrides(problems, overrides, raw)
        if from_cli == len(problems):
            source = f"command-line override(s) for {source}"
        elif from_cli:
            source = f"{source} with command-line overrides"
        raise ConfigError(format_problems(problems, where=source))

    study = parsed["study"]
    return SearchSpace(
        name=parsed["name"],
        description=str(config.get("description") or ""),
        path=path,
        text=text,
        config=config,
        params=params,
        finetune=finetune,
        backend=backend,
        metric=study.metric,
        n_trials=study.n_trials,
        max_failures=study.max_failures,
        enqueue=study.enqueue,
        sampler_config=study.sampler,
        pruner_config=study.pruner,
        source=config.get("source"),
        notes=notes,
        confirm=study.confirm_dict(),
        timeout=study.timeout,
        tracking=study.tracking,
        data_settings=parsed.get("data"),
    )


def dump_settings(settings: Mapping[str, Any]) -> str:
    """YAML text of settings, numbers written so that YAML reads them back as numbers."""
    return yaml.safe_dump({k: _plain(v) for k, v in settings.items()}, sort_keys=False, default_flow_style=False)


def _plain(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.6g}")
    return value
