"""One schema for configuration: the shared pydantic pieces and the one error format.

Every block of a search-space file (``data``, each backend's ``finetune``, ``search``, ``study``)
is a pydantic model or pydantic dataclass built from the pieces here:

- :data:`STRICT`: the shared configuration (unknown keys are errors);
- :func:`number` and the validators made by :func:`number_field`, :func:`integer_field` and
  :func:`one_of`: YAML numbers (PyYAML reads ``1e-5`` as text, so clean numbers written as
  text are accepted; ``true`` is not a number), each failure saying what was expected;
- :func:`expected` / :func:`problem` / :func:`raise_errors`: the errors validators raise;
- :func:`problems_from`: pydantic's :class:`~pydantic.ValidationError` as :class:`Problem` lines
  (key path, value, what was expected, a did-you-mean for unknown keys);
- :func:`format_problems` and :func:`validate`: the one message format of
  :class:`~deepsc_tune.errors.ConfigError`.

This module never imports Optuna or torch, so ``deepsc-tune validate`` stays fast.
"""

from __future__ import annotations

import difflib
import math
import numbers
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ConfigDict, PlainValidator, TypeAdapter, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from deepsc_tune.errors import ConfigError

#: The configuration every block shares: an unknown key is a problem, never silently ignored.
STRICT = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

#: A key path inside a block, as pydantic gives it: ``("study", "enqueue", 0, "learning_rate")``.
Loc = tuple[str | int, ...]


# ----------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration, named by its key path.

    ``str(problem)`` is the line ``validate`` prints: ``key: message`` followed by ``hint``
    (for an unknown key: the did-you-mean and the keys expected there).
    """

    key: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        return f"{self.key}: {self.message}{self.hint}"

    def blamed_on(self, item: str) -> Problem:
        """The same problem, saying that the command-line override ``item`` caused it."""
        if self.message == UNKNOWN_KEY:
            return Problem(self.key, f"{UNKNOWN_KEY} from the command line ({item})", self.hint)
        return Problem(self.key, f"{self.message}{self.hint} (from the command line: {item})")


UNKNOWN_KEY = "unknown key"


def did_you_mean(key: Any, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'"`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(str(key), list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}" if close else ""


def unknown_key_hint(key: Any, known: Sequence[str]) -> str:
    """What follows ``unknown key``: the closest known key and every known key."""
    return f"{did_you_mean(key, known)}; expected one of {', '.join(known) or '(none)'}"


def key_path(loc: Iterable[str | int], prefix: str = "") -> str:
    """``study.enqueue[0].learning_rate`` for a loc; ``prefix`` (``data``) goes first."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else str(part)
    return out


# ----------------------------------------------------------------------------- raising


def expected(what: str) -> PydanticCustomError:
    """The error for a value that is not ``what``; the message ends ``, got <value>``."""
    return PydanticCustomError("expected", "expected {what}", {"what": what})


def problem(text: str) -> PydanticCustomError:
    """An error whose message is ``text`` as is (it names the value itself where useful)."""
    return PydanticCustomError("problem", "{text}", {"text": text})


def unknown_key(known: Sequence[str] = ()) -> PydanticCustomError:
    """The error for a key the block does not have; the message lists ``known`` (else the
    keys of the model at that place)."""
    return PydanticCustomError("extra_forbidden", UNKNOWN_KEY, {"known": tuple(known)})


def raise_errors(errors: Sequence[tuple[Loc, PydanticCustomError, Any]], *, title: str = "settings") -> None:
    """Raise every ``(loc, error, value)`` at once (nothing when ``errors`` is empty).

    A validator raises several problems this way; pydantic prefixes their locs with the
    validator's place in the file.
    """
    if errors:
        details = [InitErrorDetails(type=err, loc=tuple(loc), input=value) for loc, err, value in errors]
        raise ValidationError.from_exception_data(title, details)


def line_errors(error: ValidationError, *, model: Any = None) -> list[tuple[Loc, PydanticCustomError, Any]]:
    """``error``'s problems as :func:`raise_errors` takes them, to raise again with others.

    For a validator that checks part of its input itself and lets pydantic check the rest;
    ``model`` (what ``error`` came from) names the keys an unknown key could have meant.
    """
    out = []
    for err in error.errors(include_url=False):
        ctx = err.get("ctx") or {}
        if err["type"] == "expected":
            again = expected(ctx["what"])
        elif err["type"] in _UNKNOWN_TYPES:
            again = unknown_key(ctx.get("known") or (known_keys(model, err["loc"][:-1]) if model else ()))
        else:
            again = problem(err["msg"] if err["type"] == "problem" else _message(err))
        out.append((err["loc"], again, err["input"]))
    return out


_UNKNOWN_TYPES = ("extra_forbidden", "unexpected_keyword_argument")


# ----------------------------------------------------------------------------- YAML numbers


def number(raw: Any) -> int | float | None:
    """``raw`` as a finite number, or ``None``.

    ``true`` is not a number (a typo, not 1); text that parses cleanly is one (PyYAML reads
    ``1e-5`` as text): ``"20"`` gives 20, ``"2e3"`` and ``"0.5"`` floats.
    """
    if isinstance(raw, bool):
        return None
    if isinstance(raw, numbers.Integral):
        return int(raw)
    if isinstance(raw, numbers.Real):
        value: int | float = float(raw)
    elif isinstance(raw, str):
        text = raw.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                return None
    else:
        return None
    return value if math.isfinite(value) else None


def as_integer(raw: Any) -> int | None:
    """``raw`` as an integer (``5.0`` and ``"2e3"`` are clean integers; ``2.5`` is not)."""
    value = number(raw)
    if value is None or not float(value).is_integer():
        return None
    return int(value)


def number_field(what: str, ok: Callable[[float], bool] = lambda _: True, *, optional: bool = False) -> PlainValidator:
    """A float setting: :func:`number` for which ``ok`` holds, else "expected ``what``"."""

    def check(raw: Any) -> float | None:
        if optional and raw is None:
            return None
        value = number(raw)
        if value is None or not ok(value):
            raise expected(what)
        return float(value)

    return PlainValidator(check)


def integer_field(what: str, minimum: int | None = None, *, optional: bool = False) -> PlainValidator:
    """An integer setting of at least ``minimum``, else "expected ``what``"."""

    def check(raw: Any) -> int | None:
        if optional and raw is None:
            return None
        value = as_integer(raw)
        if value is None or (minimum is not None and value < minimum):
            raise expected(what)
        return value

    return PlainValidator(check)


def one_of(options: Sequence[Any], what: str | None = None) -> PlainValidator:
    """A setting that must be one of ``options`` (compared as written)."""
    text = what or "one of " + ", ".join(repr(o) for o in options)

    def check(raw: Any) -> Any:
        if isinstance(raw, bool) or raw not in options:
            raise expected(text)
        return raw

    return PlainValidator(check)


# ----------------------------------------------------------------------------- the one format


def problems_from(error: ValidationError, *, model: Any, prefix: str = "") -> list[Problem]:
    """Every problem in ``error`` as a :class:`Problem`, named ``prefix`` + its key path.

    ``model`` is the type that was validated; it tells which keys an unknown key could have
    meant.
    """
    out = []
    for err in error.errors(include_url=False):
        loc = err["loc"]
        where = key_path(loc, prefix) or prefix or "(file)"
        kind = err["type"]
        if kind in _UNKNOWN_TYPES:
            known = (err.get("ctx") or {}).get("known") or known_keys(model, loc[:-1])
            out.append(Problem(where, UNKNOWN_KEY, unknown_key_hint(loc[-1], known) if known else ""))
        elif kind == "expected":
            out.append(Problem(where, f"{err['msg']}, got {err['input']!r}"))
        elif kind == "problem":
            out.append(Problem(where, err["msg"]))
        else:
            out.append(Problem(where, _message(err)))
    return out


def _message(err: Mapping[str, Any]) -> str:
    """Pydantic's own errors, in this package's words."""
    kind, value = err["type"], err["input"]
    if kind == "missing":
        return "missing"
    if kind in ("model_type", "dataclass_type", "dict_type", "model_attributes_type"):
        return f"expected a mapping, got {value!r}"
    if kind == "list_type":
        return f"expected a list, got {value!r}"
    return f"{err['msg'][:1].lower()}{err['msg'][1:]}, got {value!r}"


def known_keys(model: Any, loc: Loc) -> list[str]:
    """The keys a mapping at ``loc`` inside ``model`` accepts (``[]`` where it is free-form)."""
    tp = model
    for part in loc:
        tp = _unwrap(tp)
        fields = _fields(tp)
        if fields is not None and isinstance(part, str) and part in fields:
            tp = fields[part]
        elif isinstance(part, int) and typing.get_args(tp):
            tp = typing.get_args(tp)[0]
        elif isinstance(part, str) and typing.get_origin(tp) in (dict, Mapping) and typing.get_args(tp):
            tp = typing.get_args(tp)[1]
        else:
            return []
    return list(_fields(_unwrap(tp)) or ())


def _fields(tp: Any) -> dict[str, Any] | None:
    found = getattr(tp, "model_fields", None) or getattr(tp, "__pydantic_fields__", None)
    if not isinstance(found, Mapping):
        return None
    keys = getattr(tp, "YAML_KEYS", None) or tuple(found)
    return {k: found[k].annotation if k in found else Any for k in keys}


def _unwrap(tp: Any) -> Any:
    """``X`` for ``X | None`` and ``Annotated[X, ...]``."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = args[0] if len(args) == 1 else tp
            if len(args) != 1:
                return tp
        else:
            return tp


def format_problems(problems: Sequence[Problem | str], *, where: str, name_one: bool = True) -> str:
    """The one message of a :class:`ConfigError`: one line for one problem, else a list.

    ``where`` names what was checked (a file, or a block such as ``finetune``); a single problem
    is prefixed with it only when ``name_one`` (a block's key paths already name the block).
    """
    lines = [str(p) for p in problems]
    if len(lines) == 1:
        return f"{where}: {lines[0]}" if name_one else lines[0]
    return f"{where}: {len(lines)} problems:\n" + "\n".join(f"  - {line}" for line in lines)


def validate_python(model: Any, data: Any, *, context: Mapping[str, Any] | None = None) -> Any:
    """``data`` validated as ``model`` (a pydantic model or dataclass); raises
    ``pydantic.ValidationError`` (for a validator that validates a part of its input)."""
    return _adapter(model).validate_python(data, context=dict(context or {}))


def validate(model: Any, data: Any, *, source: str, context: Mapping[str, Any] | None = None) -> Any:
    """``data`` validated as ``model``; a :class:`ConfigError` with every problem otherwise.

    ``source`` is the key path of the block (``data``, ``finetune``) that prefixes every problem.
    """
    try:
        return validate_python(model, data, context=context)
    except ValidationError as e:
        problems = problems_from(e, model=model, prefix=source)
        raise ConfigError(format_problems(problems, where=source, name_one=False)) from None


_ADAPTERS: dict[Any, TypeAdapter] = {}


def _adapter(model: Any) -> TypeAdapter:
    if model not in _ADAPTERS:
        _ADAPTERS[model] = TypeAdapter(model)
    return _ADAPTERS[model]
