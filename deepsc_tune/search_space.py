"""Search-space files: one YAML per dataset, validated field by field before anything runs.

A file has the blocks ``data`` (the fine-tuner's data settings), ``finetune`` (fixed settings,
DeepSC's names), ``search`` (what the study explores) and ``study`` (metric, trial budget,
sampler, pruner, configs to run first). See ``search_spaces/hpancreas.yaml`` for an example.

Every problem in a file is collected and reported together, each with its key path, so a user
fixes a file in one pass (like pydantic's error lists).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import inspect
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

from deepsc_tune.backend import METRICS
from deepsc_tune.errors import ConfigError, DeepscTuneError
from deepsc_tune.tracking import check_tracking

#: Top-level keys of a search-space file.
TOP_KEYS = ("name", "description", "source", "data", "finetune", "search", "study")
#: Keys of one ``search`` entry.
PARAM_KEYS = ("choices", "low", "high", "log", "step", "type", "when", "grid")
#: Keys of the ``study`` block.
STUDY_KEYS = ("metric", "n_trials", "sampler", "pruner", "enqueue", "max_failures", "confirm", "timeout", "tracking")
#: Keys of ``study.confirm`` (re-run the ``top`` best configurations with ``seeds`` more seeds).
CONFIRM_KEYS = ("top", "seeds")

SAMPLERS = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "grid": "GridSampler",
    "gp": "GPSampler",
    "cmaes": "CmaEsSampler",
    "qmc": "QMCSampler",
    "bruteforce": "BruteForceSampler",
}
PRUNERS = {
    "hyperband": "HyperbandPruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "threshold": "ThresholdPruner",
    "wilcoxon": "WilcoxonPruner",
    "none": "NopPruner",
}

DEFAULT_STUDY = {
    "metric": "val_accuracy",
    "n_trials": 20,
    "sampler": {"type": "tpe", "seed": 0},
    # reduction_factor 4, not Optuna's 3: with 10 epochs, 3 puts the last rung at epoch 9, where
    # pruning saves one epoch and discards a nearly finished trial (docs/benchmark.md).
    "pruner": {"type": "hyperband", "min_resource": 1, "reduction_factor": 4},
    "enqueue": [],
    "max_failures": 3,
    # Off by default: see docs/benchmark.md ("Confirmation") for the evidence.
    "confirm": None,
    "timeout": None,  # seconds for one `deepsc-tune run`; it stops between trials
    "tracking": None,  # {mlflow: {...}} and/or {wandb: {...}}: one run per trial (tracking.py)
}

#: Where ``deepsc-tune run NAME`` looks for ``NAME.yaml``, after a path: this folder, relative
#: to the current directory, then the copies installed with the package.
LOCAL_DIR = Path("search_spaces")


# ----------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class ParamSpec:
    """One searched parameter.

    ``kind`` is ``categorical``, ``float`` or ``int``. ``when`` maps another parameter's name to
    the values for which this one is active (``warmup_ratio`` only for cosine schedules).
    """

    name: str
    kind: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    grid: tuple[Any, ...] | None = None

    def distribution(self) -> optuna.distributions.BaseDistribution:
        """The Optuna distribution this entry stands for."""
        if self.kind == "categorical":
            return optuna.distributions.CategoricalDistribution(list(self.choices or ()))
        if self.kind == "int":
            return optuna.distributions.IntDistribution(
                int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def is_active(self, values: Mapping[str, Any]) -> bool:
        """Whether the conditions in ``when`` hold for the values chosen so far."""
        return all(values.get(k) in allowed for k, allowed in self.when.items())

    def grid_values(self) -> list[Any]:
        """Values a grid search visits: ``grid``, ``choices`` or the stepped range."""
        if self.grid is not None:
            return list(self.grid)
        if self.kind == "categorical":
            return list(self.choices or ())
        if self.step is not None:
            n = int(round((self.high - self.low) / self.step))
            values = [self.low + i * self.step for i in range(n + 1)]
            return [int(v) for v in values] if self.kind == "int" else values
        if self.kind == "int" and not self.log:
            return list(range(int(self.low), int(self.high) + 1))
        raise ConfigError(
            f"search.{self.name}: the grid sampler needs 'grid: [...]', 'choices' or 'step' "
            "for every searched parameter"
        )

    def contains(self, value: Any) -> bool:
        """Whether ``value`` lies in this parameter's range or choices."""
        if self.kind == "categorical":
            return value in (self.choices or ())
        try:
            v = float(value)
        except (TypeError, ValueError):
            return False
        return self.low <= v <= self.high


# ----------------------------------------------------------------------------- the file


@dataclass
class SearchSpace:
    """A validated search-space file, with command-line overrides applied."""

    name: str
    description: str
    path: Path | None
    text: str
    config: dict[str, Any]
    params: dict[str, ParamSpec]
    fixed: dict[str, Any]
    backend: str
    metric: str
    n_trials: int
    max_failures: int
    enqueue: list[dict[str, Any]]
    sampler_config: dict[str, Any]
    pruner_config: dict[str, Any]
    source: str | None = None
    #: Lines to show the user (DeepSC's output folder, a clipped range); see deepsc.py.
    notes: list[str] = field(default_factory=list)
    #: ``{"top": K, "seeds": N}`` from ``study.confirm``, or ``None`` (no confirmation).
    confirm: dict[str, int] | None = None
    timeout: float | None = None
    #: ``{tracker: {key: value}}`` from ``study.tracking`` (tracking.py), or ``None``.
    tracking: dict[str, dict[str, Any]] | None = None

    @property
    def data(self) -> dict[str, Any]:
        """The ``data`` block as written (after overrides)."""
        return self.config.get("data") or {}

    @property
    def sha256(self) -> str:
        """Hash of what decides the study's meaning: data, finetune, search, sampler, pruner.

        ``n_trials``, ``max_failures``, ``confirm``, ``timeout``, ``tracking``, ``name``,
        ``description`` and the file's formatting may change between runs of the same study without refusal.
        """
        keep = {k: self.config.get(k) for k in ("data", "finetune", "search")}
        study = dict(self.config.get("study") or {})
        for k in ("n_trials", "max_failures", "confirm", "timeout", "tracking"):
            study.pop(k, None)
        keep["study"] = study
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
    installed = Path(__file__).parent / "search_spaces"
    if installed.is_dir():
        return installed
    return Path(__file__).parent.parent / "search_spaces"  # a source checkout


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
        :func:`deepsc_tune.deepsc.check_command_space`) with the file's other problems.
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


def read_yaml_text(path: Path) -> str:
    """The text of a search-space file, which must be UTF-8 (YAML's own rule).

    Raises
    ------
    ConfigError
        When the file cannot be read or is not UTF-8 (naming the line of the first bad byte).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: line {line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the file as UTF-8"
        ) from None


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(key)
        self.key, self.first, self.second = key, first, second


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key given twice in one mapping is an error, not "last wins"."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: PyYAML reports it itself
            continue
        if first is not None:
            raise _DuplicateKey(key, first, key_node.start_mark.line + 1)
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def parse_yaml(text: str, *, source: str) -> dict[str, Any]:
    """Parse YAML text into a mapping, with a one-line error naming the line.

    A key repeated in one mapping is refused, naming both lines (PyYAML keeps the last).
    """
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except _DuplicateKey as e:
        raise ConfigError(
            f"{source}: duplicate key {e.key!r} on line {e.first} and line {e.second}; "
            "keep one (YAML would silently use the last)"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{source}:{where}: malformed YAML: {problem}") from None
    if raw is None:
        raise ConfigError(f"{source}: the file is empty; expected a mapping with {TOP_KEYS}")
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with keys {', '.join(TOP_KEYS)}, got {type(raw).__name__}")
    return raw


def apply_overrides(config: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``config`` with ``a.b.c=value`` items applied (values parsed as YAML)."""
    out = copy.deepcopy(config)
    for item in overrides:
        key, sep, value_text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override '{item}': expected key=value, e.g. finetune.epoch=5 or learning_rate=3e-4")
        try:
            value = yaml.safe_load(value_text) if value_text.strip() else None
        except yaml.YAMLError:
            value = value_text
        parts = key.split(".")
        if parts[0] not in TOP_KEYS:
            parts = ["finetune", *parts]
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override '{item}': {'.'.join(parts[: i + 1])} is {child!r}, not a mapping")
            node = child
        node[parts[-1]] = value
    return out


_UNKNOWN_KEY = re.compile(r"^(?P<path>[\w.-]+): unknown key; expected one of (?P<choices>.+)$")
_UNKNOWN_KEYS = re.compile(r"^(?P<path>[\w.-]+): unknown key\(s\) (?P<keys>.+?); expected some of: (?P<choices>.+)$")


def _override_paths(overrides: Sequence[str]) -> dict[str, str]:
    """``{full key path: override item}``, bare keys meaning ``finetune.``, as applied."""
    paths = {}
    for item in overrides:
        parts = item.partition("=")[0].strip().split(".")
        if parts[0] not in TOP_KEYS:
            parts = ["finetune", *parts]
        paths[".".join(parts)] = item
    return paths


def _did_you_mean(key: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}" if close else ""


def _explain_problems(problems: Sequence[str], overrides: Sequence[str]) -> tuple[list[str], int]:
    """Add a did-you-mean to unknown keys and say which problems came from the command line.

    Returns the problems and how many of them an override caused.
    """
    cli = _override_paths(overrides)
    out, from_cli = [], 0
    for problem in problems:
        path = problem.split(":", 1)[0]
        where = ""
        if item := cli.get(path):
            where = f" (from the command line: {item})"
        if m := _UNKNOWN_KEY.match(problem):
            hint = _did_you_mean(path.rsplit(".", 1)[-1], [c.strip() for c in m["choices"].split(",")])
            where = where and f" from the command line ({item})"
            problem = f"{path}: unknown key{where}{hint}; expected one of {m['choices']}"
        elif m := _UNKNOWN_KEYS.match(problem):
            keys = [k.strip().strip("'") for k in m["keys"].split(",")]
            if item := cli.get(f"{m['path']}.{keys[0]}"):
                where = f" from the command line ({item})"
            hint = _did_you_mean(keys[0], [c.strip() for c in m["choices"].split(",")])
            problem = f"{m['path']}: unknown key(s) {m['keys']}{where}{hint}; expected some of: {m['choices']}"
        else:
            problem += where
        from_cli += bool(where)
        out.append(problem)
    return out, from_cli


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
    problems: list[str] = []

    for key in config:
        if key not in TOP_KEYS:
            problems.append(f"{key}: unknown key; expected one of {', '.join(TOP_KEYS)}")
    name = config.get("name") or (path.stem if path else "study")
    if not isinstance(name, str) or not name.replace("-", "_").replace(".", "_").isidentifier():
        problems.append(f"name: expected a short name (letters, digits, -, _), got {name!r}")

    data = _mapping(config, "data", problems, required=True)
    finetune = _mapping(config, "finetune", problems, required=False)
    search = _mapping(config, "search", problems, required=False)
    study = _mapping(config, "study", problems, required=False)

    backend = finetune.get("backend", "builtin")
    fixed, known_keys, param_types = _check_finetune(finetune, backend=backend, problems=problems)
    _check_data(data, backend=backend, problems=problems, hint=config.get("source"))

    params: dict[str, ParamSpec] = {}
    for pname, entry in search.items():
        if known_keys is not None and pname not in known_keys:
            problems.append(
                f"search.{pname}: unknown setting for the {backend} fine-tuner; "
                f"expected one of {', '.join(sorted(known_keys))}"
            )
            continue  # one message for one unknown key, not a second from the settings check
        spec = _parse_param(str(pname), entry, problems, param_types.get(str(pname)))
        if spec is None:
            continue
        if pname in fixed:
            problems.append(f"search.{pname}: also fixed as finetune.{pname}={fixed[pname]!r}; keep it in one block")
        params[spec.name] = spec
    params = _order_by_conditions(params, problems)
    if backend == "builtin" and params and not any(p.startswith("finetune") for p in problems):
        _check_extremes(fixed, params, problems)

    study_cfg = _check_study(study, params, problems)
    notes: list[str] = []
    if backend == "command" and not any(p.startswith("finetune") for p in problems):
        params = _check_deepsc(finetune, params, study_cfg["enqueue"], problems, notes, report=check_deepsc)

    if problems:
        problems, from_cli = _explain_problems(problems, overrides)
        if from_cli == len(problems):
            source = f"command-line override(s) for {source}"
        elif from_cli:
            source = f"{source} with command-line overrides"
        if len(problems) == 1:  # one problem, one line
            raise ConfigError(f"{source}: {problems[0]}")
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"{source}: {len(problems)} problems:\n{lines}")

    return SearchSpace(
        name=name,
        description=str(config.get("description") or ""),
        path=path,
        text=text,
        config=config,
        params=params,
        fixed=fixed,
        backend=backend,
        metric=study_cfg["metric"],
        n_trials=study_cfg["n_trials"],
        max_failures=study_cfg["max_failures"],
        enqueue=study_cfg["enqueue"],
        sampler_config=study_cfg["sampler"],
        pruner_config=study_cfg["pruner"],
        source=config.get("source"),
        notes=notes,
        confirm=study_cfg["confirm"],
        timeout=study_cfg["timeout"],
        tracking=study_cfg["tracking"],
    )


def _check_deepsc(
    finetune: dict,
    params: dict[str, ParamSpec],
    enqueue: list[dict],
    problems: list[str],
    notes: list[str],
    *,
    report: bool,
) -> dict[str, ParamSpec]:
    """DeepSC's own checks (deepsc.py); returns ``params`` with clipped ranges applied.

    The clipped range is what the study samples from (``suggest`` and the grid use
    ``params``); the search-space hash is of the file, so resuming a study is unaffected.
    """
    from deepsc_tune.command import CommandSettings
    from deepsc_tune.deepsc import check_command_space

    settings, fixed = CommandSettings.from_dict(finetune, source="finetune")
    findings = check_command_space(
        cwd=settings.cwd or Path("."),
        command=settings.command,
        overrides=settings.overrides,
        fixed=fixed,
        new_keys=settings.new_keys,
        search=params,
        enqueue=enqueue,
        run_dir_override=settings.run_dir_override,
    )
    params = dict(params)
    for name, low in findings.lows.items():
        params[name] = dataclasses.replace(params[name], low=low)
    if report:
        problems.extend(str(p) for p in findings.problems)
        notes.extend(findings.notes)
    else:
        notes.extend(n for n in findings.notes if n.startswith("search."))
    return params


def _mapping(config: Mapping[str, Any], key: str, problems: list[str], *, required: bool) -> dict:
    value = config.get(key)
    if value is None:
        if required:
            problems.append(f"{key}: missing; expected a mapping")
        return {}
    if not isinstance(value, dict):
        problems.append(f"{key}: expected a mapping, got {value!r}")
        return {}
    return value


def _check_data(data: dict, *, backend: str, problems: list[str], hint: Any) -> None:
    if not data:
        return
    from deepsc_tune.data_settings import DataSettings

    try:
        DataSettings.from_dict(data, source="data")
    except ConfigError as e:
        problems.extend(_split_problems(str(e)))


def _check_finetune(
    finetune: dict, *, backend: str, problems: list[str]
) -> tuple[dict[str, Any], set[str] | None, dict[str, type]]:
    """Validate fixed settings; return them, the keys a backend knows and their types."""
    if backend == "builtin":
        from deepsc_tune.train_settings import TRAIN_KEYS, TrainSettings

        fixed = {k: v for k, v in finetune.items() if k != "backend"}
        try:
            TrainSettings.from_dict(fixed, source="finetune")
        except ConfigError as e:
            problems.extend(_split_problems(str(e)))
        types = {
            f.name: type(f.default)
            for f in TrainSettings.__dataclass_fields__.values()
            if isinstance(f.default, (int, float)) and not isinstance(f.default, bool)
        }
        return fixed, set(TRAIN_KEYS), types
    if backend == "command":
        from deepsc_tune.command import CommandSettings

        try:
            _, fixed = CommandSettings.from_dict(finetune, source="finetune")
        except ConfigError as e:
            problems.extend(_split_problems(str(e)))
            fixed = {}
        return dict(fixed), None, {}
    problems.append(f"finetune.backend: unknown backend {backend!r}; expected 'builtin' or 'command'")
    return {}, None, {}


def _split_problems(message: str) -> list[str]:
    """Flatten another module's ConfigError (one line or a list) into problem lines."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    items = [ln[2:] if ln.startswith("- ") else ln for ln in lines]
    if len(items) > 1 and items[0].endswith(":") and "problem" in items[0]:
        items = items[1:]
    return items


def _number(value: Any) -> float | None:
    """A YAML number, or a string PyYAML left as text (``1e-5``) that parses as one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number
    return None


def _parse_param(name: str, entry: Any, problems: list[str], declared: type | None) -> ParamSpec | None:
    where = f"search.{name}"
    if isinstance(entry, list):
        entry = {"choices": entry}
    if not isinstance(entry, dict):
        problems.append(
            f"{where}: expected a mapping such as {{choices: [...]}} or "
            f"{{low: ..., high: ..., log: true}}, got {entry!r}"
        )
        return None
    n_before = len(problems)
    for key in entry:
        if key not in PARAM_KEYS:
            problems.append(f"{where}.{key}: unknown key; expected one of {', '.join(PARAM_KEYS)}")

    when = _parse_when(where, entry.get("when"), problems)
    grid = entry.get("grid")
    if grid is not None and not isinstance(grid, list):
        problems.append(f"{where}.grid: expected a list of values, got {grid!r}")
        grid = None

    if "choices" in entry:
        choices = entry["choices"]
        if not isinstance(choices, list) or not choices:
            problems.append(f"{where}.choices: expected a non-empty list, got {choices!r}")
            return None
        if any(k in entry for k in ("low", "high", "log", "step")):
            problems.append(f"{where}: give either choices or low/high, not both")
        choices = [_coerce_choice(c) for c in choices]
        if len(set(map(repr, choices))) != len(choices):
            problems.append(f"{where}.choices: duplicate values in {choices!r}")
        if len(problems) > n_before:
            return None
        return ParamSpec(name, "categorical", choices=tuple(choices), when=when, grid=tuple(grid) if grid else None)

    missing = [k for k in ("low", "high") if k not in entry]
    if missing:
        problems.append(f"{where}: missing {' and '.join(missing)}; expected choices: [...] or low/high")
        return None
    low, high = _number(entry["low"]), _number(entry["high"])
    for key, raw, num in (("low", entry["low"], low), ("high", entry["high"], high)):
        if num is None:
            problems.append(f"{where}.{key}: expected a number, got {raw!r}")
    log = entry.get("log", False)
    if not isinstance(log, bool):
        problems.append(f"{where}.log: expected true or false, got {log!r}")
        log = False
    step = entry.get("step")
    if step is not None:
        step_num = _number(step)
        if step_num is None or step_num <= 0:
            problems.append(f"{where}.step: expected a positive number, got {step!r}")
            step = None
        else:
            step = step_num
    kind = entry.get("type")
    if kind is not None and kind not in ("int", "float"):
        problems.append(f"{where}.type: expected 'int' or 'float', got {kind!r}")
        kind = None
    if low is None or high is None:
        return None
    if kind is None:
        if declared is not None:
            kind = "int" if declared is int else "float"
        else:
            ints = all(isinstance(v, int) for v in (low, high)) and (step is None or isinstance(step, int))
            kind = "int" if ints else "float"
    if low >= high:
        problems.append(f"{where}: low ({low!r}) must be below high ({high!r})")
    if log and low <= 0:
        problems.append(f"{where}.low: log: true needs low > 0, got {low!r}")
    if log and step is not None and kind == "float":
        problems.append(f"{where}: log: true cannot be combined with step for floats")
    if kind == "int":
        for key, num in (("low", low), ("high", high)):
            if not float(num).is_integer():
                problems.append(f"{where}.{key}: expected an integer for an int parameter, got {num!r}")
    if len(problems) > n_before:
        return None
    return ParamSpec(
        name,
        kind,
        low=low if kind == "int" else float(low),
        high=high if kind == "int" else float(high),
        log=log,
        step=step,
        when=when,
        grid=tuple(grid) if grid else None,
    )


def _coerce_choice(value: Any) -> Any:
    number = _number(value) if isinstance(value, str) else None
    return number if number is not None else value


def _parse_when(where: str, when: Any, problems: list[str]) -> dict[str, tuple[Any, ...]]:
    if when is None:
        return {}
    if not isinstance(when, dict) or not when:
        problems.append(f"{where}.when: expected a mapping such as {{lr_scheduler_type: cosine}}, got {when!r}")
        return {}
    out: dict[str, tuple[Any, ...]] = {}
    for key, allowed in when.items():
        values = allowed if isinstance(allowed, list) else [allowed]
        out[str(key)] = tuple(values)
    return out


def _order_by_conditions(params: dict[str, ParamSpec], problems: list[str]) -> dict[str, ParamSpec]:
    """Put every parameter after the ones its ``when`` refers to; reject unknown or cyclic refs."""
    for spec in params.values():
        for ref, allowed in spec.when.items():
            if ref not in params:
                problems.append(
                    f"search.{spec.name}.when: refers to '{ref}', which is not a searched "
                    f"parameter; expected one of {', '.join(p for p in params if p != spec.name) or '(none)'}"
                )
            elif ref == spec.name:
                problems.append(f"search.{spec.name}.when: a parameter cannot depend on itself")
            else:
                bad = [v for v in allowed if not params[ref].contains(v)]
                if bad:
                    problems.append(f"search.{spec.name}.when: {ref} can never be {bad[0]!r}")
    ordered: dict[str, ParamSpec] = {}
    pending = dict(params)
    while pending:
        ready = [n for n, s in pending.items() if all(r in ordered or r not in params for r in s.when)]
        if not ready:
            problems.append(f"search: conditions form a cycle among {', '.join(sorted(pending))}")
            ordered.update(pending)
            break
        for n in ready:
            ordered[n] = pending.pop(n)
    return ordered


def _check_extremes(fixed: dict, params: dict[str, ParamSpec], problems: list[str]) -> None:
    """Check that the ends of every range are settings the built-in fine-tuner accepts."""
    from deepsc_tune.train_settings import TrainSettings

    seen: set[str] = set()
    for spec in params.values():
        values = list(spec.choices) if spec.kind == "categorical" else [spec.low, spec.high]
        for value in values:
            try:
                TrainSettings.from_dict({**fixed, spec.name: value}, source="search")
            except DeepscTuneError as e:
                for line in _split_problems(str(e)):
                    if line not in seen:
                        seen.add(line)
                        problems.append(line)


def _check_study(study: dict, params: dict[str, ParamSpec], problems: list[str]) -> dict[str, Any]:
    cfg = {**DEFAULT_STUDY, **study}
    for key in study:
        if key not in STUDY_KEYS:
            problems.append(f"study.{key}: unknown key; expected one of {', '.join(STUDY_KEYS)}")
    if cfg["metric"] not in METRICS:
        problems.append(f"study.metric: unknown metric {cfg['metric']!r}; expected one of {', '.join(METRICS)}")
    for key in ("n_trials", "max_failures"):
        value = _number(cfg[key])
        if not isinstance(value, int) or value < 1:
            problems.append(f"study.{key}: expected a positive integer, got {cfg[key]!r}")
        else:
            cfg[key] = value
    if cfg["timeout"] is not None:
        value = _number(cfg["timeout"])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            problems.append(f"study.timeout: expected seconds > 0 or null, got {cfg['timeout']!r}")
        else:
            cfg["timeout"] = float(value)
    cfg["sampler"] = _check_component(
        "study.sampler",
        cfg["sampler"],
        SAMPLERS,
        optuna.samplers,
        problems,
        default=DEFAULT_STUDY["sampler"],
    )
    cfg["pruner"] = _check_component(
        "study.pruner",
        cfg["pruner"],
        PRUNERS,
        optuna.pruners,
        problems,
        default=DEFAULT_STUDY["pruner"],
    )
    if cfg["sampler"].get("type") == "grid" and "search_space" not in cfg["sampler"]:
        for spec in params.values():
            try:
                spec.grid_values()
            except ConfigError as e:
                problems.append(str(e))

    enqueue = cfg["enqueue"] or []
    if not isinstance(enqueue, list):
        problems.append(f"study.enqueue: expected a list of parameter mappings, got {enqueue!r}")
        enqueue = []
    clean: list[dict[str, Any]] = []
    for i, item in enumerate(enqueue):
        where = f"study.enqueue[{i}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: expected a mapping of searched parameters, got {item!r}")
            continue
        entry: dict[str, Any] = {}
        for key, value in item.items():
            spec = params.get(key)
            value = _coerce_choice(value)
            if spec is None:
                problems.append(
                    f"{where}.{key}: not a searched parameter; expected one of {', '.join(params) or '(none)'}"
                )
            elif not spec.contains(value):
                rng = spec.choices if spec.kind == "categorical" else f"[{spec.low}, {spec.high}]"
                problems.append(f"{where}.{key}: {value!r} is outside the search range {rng}")
            else:
                entry[key] = value
        clean.append(entry)
    cfg["enqueue"] = clean
    cfg["confirm"] = _check_confirm(cfg["confirm"], problems)
    cfg["tracking"] = check_tracking(cfg["tracking"], problems)
    return cfg


def _check_confirm(value: Any, problems: list[str]) -> dict[str, int] | None:
    """``study.confirm``: ``{top: K, seeds: N}`` (both positive integers), or null/false for off."""
    if value is None or value is False:
        return None
    if not isinstance(value, dict):
        problems.append(f"study.confirm: expected a mapping {{top: K, seeds: N}} or null, got {value!r}")
        return None
    out: dict[str, int] = {}
    for key in value:
        if key not in CONFIRM_KEYS:
            problems.append(f"study.confirm.{key}: unknown key; expected one of {', '.join(CONFIRM_KEYS)}")
    for key in CONFIRM_KEYS:
        if key not in value:
            problems.append(f"study.confirm.{key}: missing; expected a positive integer")
            continue
        number = _number(value[key])
        if isinstance(value[key], bool) or not isinstance(number, int) or number < 1:
            problems.append(f"study.confirm.{key}: expected a positive integer, got {value[key]!r}")
        else:
            out[key] = number
    return out if len(out) == len(CONFIRM_KEYS) and len(value) == len(CONFIRM_KEYS) else None


def _check_component(
    where: str, value: Any, names: dict[str, str], module: Any, problems: list[str], *, default: dict
) -> dict[str, Any]:
    """Validate ``{type: NAME, **kwargs}`` against the Optuna class's signature."""
    if isinstance(value, str):
        value = {"type": value}
    if not isinstance(value, dict) or "type" not in value:
        problems.append(f"{where}: expected a mapping with 'type', got {value!r}")
        return dict(default)
    kind = value["type"]
    if kind not in names:
        problems.append(f"{where}.type: unknown {kind!r}; expected one of {', '.join(names)}")
        return dict(default)
    cls = getattr(module, names[kind])
    accepted = [p for p in inspect.signature(cls).parameters if p != "self"]
    out = {"type": kind}
    for key, arg in value.items():
        if key == "type":
            continue
        if key not in accepted:
            problems.append(
                f"{where}.{key}: not an argument of optuna {names[kind]}; "
                f"expected one of {', '.join(accepted) or '(none)'}"
            )
            continue
        number = _number(arg) if isinstance(arg, str) else None
        out[key] = number if number is not None else arg
    return out


def dump_settings(settings: Mapping[str, Any]) -> str:
    """YAML text of settings, numbers written so that YAML reads them back as numbers."""
    return yaml.safe_dump({k: _plain(v) for k, v in settings.items()}, sort_keys=False, default_flow_style=False)


def _plain(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.6g}")
    return value
