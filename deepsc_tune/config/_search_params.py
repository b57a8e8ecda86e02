"""The ``search`` block: one entry per searched setting, as an Optuna distribution.

An entry is ``{choices: [...]}`` (or a bare list) or ``{low, high, log, step, type}``, with an
optional ``when`` (active only for some values of another entry) and ``grid`` (the values a grid
search visits). :func:`parse_search` validates the block, reporting every problem at once in the
schema's format (:mod:`deepsc_tune.utils._schema`), and orders entries after those their ``when``
refers to.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from pydantic import ValidationError

from deepsc_tune.errors import ConfigError
from deepsc_tune.utils import (
    expected,
    line_errors,
    number,
    problem,
    raise_errors,
    unknown_key,
    unknown_key_hint,
)

#: Keys of one ``search`` entry.
PARAM_KEYS = ("choices", "low", "high", "log", "step", "type", "when", "grid")
GRID_NEEDS = "the grid sampler needs 'grid: [...]', 'choices' or 'step' for every searched parameter"


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
        raise ConfigError(f"search.{self.name}: {GRID_NEEDS}")

    def contains(self, value: Any) -> bool:
        """Whether ``value`` lies in this parameter's range or choices."""
        if self.kind == "categorical":
            return value in (self.choices or ())
        try:
            v = float(value)
        except (TypeError, ValueError):
            return False
        return self.low <= v <= self.high


def coerce_choice(value: Any) -> Any:
    """A choice as written, or the number a text choice spells (``'1e-4'``)."""
    n = number(value) if isinstance(value, str) else None
    return n if n is not None else value


def parse_search(
    search: Any,
    *,
    backend: str,
    known: set[str] | None = None,
    types: Mapping[str, type] | None = None,
    fixed: Mapping[str, Any] | None = None,
    check: Callable[[dict[str, Any]], Any] | None = None,
    valid: dict[str, ParamSpec] | None = None,
) -> dict[str, ParamSpec]:
    """Validate the ``search`` block into entries ordered by their conditions.

    Parameters
    ----------
    search
        The block as read from YAML (``None``: nothing searched).
    backend
        The fine-tuner's name, for messages.
    known
        The settings the fine-tuner has (``None``: any key, as for a command).
    types
        Declared ``int``/``float`` types of numeric settings (a range of ints for a float
        setting is a float range).
    fixed
        The ``finetune`` block's settings, which a searched key must not repeat.
    check
        Validates a full settings mapping (the fine-tuner's schema); every end of every range is
        checked with it (given only when the ``finetune`` block is valid).
    valid
        Filled with the entries that are valid, also when others are not (so that the study
        block's ``enqueue`` is checked against them).

    Raises
    ------
    pydantic.ValidationError
        Every problem, located relative to the block.
    """
    if search is None:
        return {}
    if not isinstance(search, Mapping):
        raise_errors([((), expected("a mapping"), search)])
    errors: list = []
    params: dict[str, ParamSpec] = {}
    for pname, entry in search.items():
        name = str(pname)
        if known is not None and name not in known:
            what = f"unknown setting for the {backend} fine-tuner{unknown_key_hint(name, sorted(known))}"
            errors.append(((name,), problem(what), entry))
            continue  # one message for one unknown key, not a second from the settings check
        spec = _parse_param(name, entry, errors, (types or {}).get(name))
        if spec is None:
            continue
        if fixed is not None and name in fixed:
            what = f"also fixed as finetune.{name}={fixed[name]!r}; keep it in one block"
            errors.append(((name,), problem(what), entry))
        params[name] = spec
    params = _order_by_conditions(params, errors)
    if check is not None and params and not errors:
        _check_extremes(dict(fixed or {}), params, errors, check)
    if valid is not None:
        valid.update(params)
    raise_errors(errors)
    return params


def _parse_param(name: str, entry: Any, errors: list, declared: type | None) -> ParamSpec | None:
    if isinstance(entry, list):
        entry = {"choices": entry}
    if not isinstance(entry, dict):
        what = "a mapping such as {choices: [...]} or {low: ..., high: ..., log: true}"
        errors.append(((name,), expected(what), entry))
        return None
    n_before = len(errors)

    def bad(key: str | None, err: Any, value: Any) -> None:
        errors.append(((name, key) if key else (name,), err, value))

    for key in entry:
        if key not in PARAM_KEYS:
            bad(str(key), unknown_key(PARAM_KEYS), entry[key])

    when = _parse_when(entry.get("when"), lambda err, v: bad("when", err, v))
    grid = entry.get("grid")
    if grid is not None and not isinstance(grid, list):
        bad("grid", expected("a list of values"), grid)
        grid = None

    if "choices" in entry:
        choices = entry["choices"]
        if not isinstance(choices, list) or not choices:
            bad("choices", expected("a non-empty list"), choices)
            return None
        if any(k in entry for k in ("low", "high", "log", "step")):
            bad(None, problem("give either choices or low/high, not both"), entry)
        choices = [coerce_choice(c) for c in choices]
        if len(set(map(repr, choices))) != len(choices):
            bad("choices", problem(f"duplicate values in {choices!r}"), choices)
        if len(errors) > n_before:
            return None
        return ParamSpec(name, "categorical", choices=tuple(choices), when=when, grid=tuple(grid) if grid else None)

    missing = [k for k in ("low", "high") if k not in entry]
    if missing:
        bad(None, problem(f"missing {' and '.join(missing)}; expected choices: [...] or low/high"), entry)
        return None
    low, high = number(entry["low"]), number(entry["high"])
    for key, num in (("low", low), ("high", high)):
        if num is None:
            bad(key, expected("a number"), entry[key])
    log = entry.get("log", False)
    if not isinstance(log, bool):
        bad("log", expected("true or false"), log)
        log = False
    step = entry.get("step")
    if step is not None:
        step_num = number(step)
        if step_num is None or step_num <= 0:
            bad("step", expected("a positive number"), step)
            step = None
        else:
            step = step_num
    kind = entry.get("type")
    if kind is not None and kind not in ("int", "float"):
        bad("type", expected("'int' or 'float'"), kind)
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
        bad(None, problem(f"low ({low!r}) must be below high ({high!r})"), entry)
    if log and low <= 0:
        bad("low", problem(f"log: true needs low > 0, got {low!r}"), entry["low"])
    if log and step is not None and kind == "float":
        bad(None, problem("log: true cannot be combined with step for floats"), entry)
    if kind == "int":
        for key, num in (("low", low), ("high", high)):
            if not float(num).is_integer():
                bad(key, expected("an integer for an int parameter"), num)
    if len(errors) > n_before:
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


def _parse_when(when: Any, bad: Callable[[Any, Any], None]) -> dict[str, tuple[Any, ...]]:
    if when is None:
        return {}
    if not isinstance(when, dict) or not when:
        bad(expected("a mapping such as {lr_scheduler_type: cosine}"), when)
        return {}
    return {str(key): tuple(allowed if isinstance(allowed, list) else [allowed]) for key, allowed in when.items()}


def _order_by_conditions(params: dict[str, ParamSpec], errors: list) -> dict[str, ParamSpec]:
    """Put every parameter after the ones its ``when`` refers to; reject unknown or cyclic refs."""
    for spec in params.values():
        where = (spec.name, "when")
        for ref, allowed in spec.when.items():
            if ref not in params:
                others = ", ".join(p for p in params if p != spec.name) or "(none)"
                what = f"refers to '{ref}', which is not a searched parameter; expected one of {others}"
                errors.append((where, problem(what), dict(spec.when)))
            elif ref == spec.name:
                errors.append((where, problem("a parameter cannot depend on itself"), dict(spec.when)))
            else:
                bad = [v for v in allowed if not params[ref].contains(v)]
                if bad:
                    errors.append((where, problem(f"{ref} can never be {bad[0]!r}"), dict(spec.when)))
    ordered: dict[str, ParamSpec] = {}
    pending = dict(params)
    while pending:
        ready = [n for n, s in pending.items() if all(r in ordered or r not in params for r in s.when)]
        if not ready:
            errors.append(((), problem(f"conditions form a cycle among {', '.join(sorted(pending))}"), None))
            ordered.update(pending)
            break
        for n in ready:
            ordered[n] = pending.pop(n)
    return ordered


def _check_extremes(fixed: dict, params: dict[str, ParamSpec], errors: list, check: Callable) -> None:
    """Check that the ends of every range are settings the fine-tuner accepts."""
    seen: set[tuple] = set()
    for spec in params.values():
        values = list(spec.choices) if spec.kind == "categorical" else [spec.low, spec.high]
        for value in values:
            try:
                check({**fixed, spec.name: value})
            except ValidationError as e:
                for loc, err, raw in line_errors(e):
                    if (loc, str(err), repr(raw)) not in seen:
                        seen.add((loc, str(err), repr(raw)))
                        errors.append((loc, err, raw))
