"""The ``data:`` block of a search-space file: which cells, which labels, how to split them.

:class:`DataSettings` is a pydantic dataclass of the one schema (:mod:`deepsc_tune.utils._schema`):
``DataSettings.from_dict(block, source="data")`` validates a block read from YAML and raises a
:class:`~deepsc_tune.errors.ConfigError` listing every problem at once; the search-space file
model (:mod:`deepsc_tune.config._search_space`) validates the same type as its ``data`` field.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass
from pydantic_core import ArgsKwargs

from deepsc_tune.utils import (
    STRICT,
    expected,
    integer_field,
    number_field,
    one_of,
    problem,
    raise_errors,
    unknown_key,
    validate,
)

#: Prefix of datasets that ship with a library instead of living in a file.
BUILTIN_PREFIX = "builtin:"
#: Built-in datasets (``builtin:NAME``); scanpy ships the file, nothing is downloaded.
BUILTIN_DATASETS = ("pbmc68k_reduced",)
#: Accepted values of ``data.normalize``.
NORMALIZE_MODES = ("auto", "log1p", "none")

#: Keys of the ``data:`` block.
DATA_KEYS = (
    "train",
    "test",
    "test_split",
    "test_fraction",
    "label_key",
    "val_fraction",
    "normalize",
    "n_top_genes",
    "min_cells_per_class",
    "split_seed",
    "subsample",
    "origin",
)
TEST_SPLIT_KEYS = ("obs_key", "values")

_A_DATASET = f"a path to an .h5ad file or {BUILTIN_PREFIX}{BUILTIN_DATASETS[0]}"


def _dataset(*, required: bool) -> PlainValidator:
    def check(raw: Any) -> str | None:
        if raw is None:
            if required:
                raise problem(f"required; expected {_A_DATASET}")
            return None
        value = os.fspath(raw) if isinstance(raw, os.PathLike) else raw
        if not isinstance(value, str) or not value.strip():
            raise expected(_A_DATASET)
        value = value.strip()
        if value.startswith(BUILTIN_PREFIX) and value[len(BUILTIN_PREFIX) :] not in BUILTIN_DATASETS:
            raise problem(
                f"unknown built-in dataset {value!r}; available: "
                + ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_DATASETS)
            )
        return value

    return PlainValidator(check)


def _label_key(raw: Any) -> str:
    if not isinstance(raw, str) or not raw:
        raise problem(f"required; expected the obs column holding cell types, got {raw!r}")
    return raw


def _obs_key(raw: Any) -> str:
    if not isinstance(raw, str) or not raw:
        raise expected("the name of an obs column")
    return raw


def _obs_values(raw: Any) -> tuple[str, ...]:
    values = [raw] if isinstance(raw, (str, int)) and not isinstance(raw, bool) else raw
    if (
        not isinstance(values, (list, tuple))
        or not values
        or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in values)
    ):
        raise expected("a non-empty list of obs values (e.g. [human4])")
    return tuple(str(v) for v in values)


def _optional_text(raw: Any) -> str | None:
    if raw is not None and not isinstance(raw, str):
        raise expected("text saying where the dataset can be obtained")
    return raw


def _test_split_mapping(raw: Any) -> Any:
    if raw is not None and not isinstance(raw, (Mapping, ObsSplit)):
        raise expected("a mapping like {obs_key: donor, values: [human4]}")
    return raw


@dataclass(frozen=True, config=STRICT)
class ObsSplit:
    """Test cells chosen by an ``obs`` column: cells whose ``obs[obs_key]`` is in ``values``.

    Values are compared as strings, so ``values: [1]`` in YAML matches an integer column.
    """

    obs_key: Annotated[str, PlainValidator(_obs_key)] = Field(default=None, validate_default=True)
    values: Annotated[tuple[str, ...], PlainValidator(_obs_values)] = Field(default=None, validate_default=True)

    def to_dict(self) -> dict[str, Any]:
        return {"obs_key": self.obs_key, "values": list(self.values)}


@dataclass(frozen=True, config=ConfigDict(**STRICT, validate_default=True))
class DataSettings:
    """Validated ``data:`` block. Build it with :meth:`from_dict`.

    ``origin`` is a free-text hint on where the dataset can be obtained (a URL, a command); it is
    added to "file not found" errors and is not part of the fingerprint. ``source`` is the key
    path prefix used in error messages (``data`` gives ``data.train``); it is not a YAML key.
    """

    YAML_KEYS = DATA_KEYS  # for the did-you-mean of an unknown key (``source`` is not one)

    train: Annotated[str, _dataset(required=True)] = None
    label_key: Annotated[str, PlainValidator(_label_key)] = None
    test: Annotated[str | None, _dataset(required=False)] = None
    test_split: Annotated[ObsSplit | None, BeforeValidator(_test_split_mapping)] = None
    val_fraction: Annotated[float, number_field("a number in (0, 1)", lambda x: 0 < x < 1)] = 0.1
    test_fraction: Annotated[
        float | None, number_field("a number in (0, 1) (or unset)", lambda x: 0 < x < 1, optional=True)
    ] = None
    normalize: Annotated[str, one_of(NORMALIZE_MODES, "one of " + ", ".join(NORMALIZE_MODES))] = "auto"
    n_top_genes: Annotated[
        int | None, integer_field("a positive integer (or unset for all genes)", 1, optional=True)
    ] = None
    min_cells_per_class: Annotated[int, integer_field("an integer >= 0", 0)] = 5
    split_seed: Annotated[int, integer_field("an integer >= 0", 0)] = 0
    #: At most this many cells for training and validation, a stratified sample (quick searches).
    subsample: Annotated[
        int | None, integer_field("a positive number of cells (or unset for all)", 1, optional=True)
    ] = None
    origin: Annotated[str | None, PlainValidator(_optional_text)] = dataclasses.field(default=None, compare=False)
    source: str = dataclasses.field(default="", compare=False)

    @model_validator(mode="before")
    @classmethod
    def _a_mapping(cls, data: Any) -> Any:
        if not isinstance(data, (Mapping, ArgsKwargs)) and not dataclasses.is_dataclass(data):
            raise expected("a mapping with at least 'train' and 'label_key'")
        return data

    @field_validator("source", mode="plain")
    @classmethod
    def _source_from_context(cls, raw: Any, info: ValidationInfo) -> str:
        # A block read from YAML gets its key path from the validation context; ``source`` in the
        # YAML itself is an unknown key. Built directly (``dataclasses.replace``), it is kept.
        if info.context is None:
            return raw or "data"
        if raw:
            raise unknown_key()
        return info.context.get("source", "data")

    @model_validator(mode="after")
    def _one_test_source(self) -> DataSettings:
        errors = []
        if self.test is not None and self.test_split is not None:
            errors.append(((), problem("give either 'test' (a file) or 'test_split' (an obs column), not both"), None))
        if self.test_fraction is not None and (self.test is not None or self.test_split is not None):
            errors.append(
                (
                    (),
                    problem(
                        "give one of 'test' (a file), 'test_split' (an obs column) or"
                        " 'test_fraction' (a random stratified hold-out), not several"
                    ),
                    None,
                )
            )
        raise_errors(errors)
        return self

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, *, source: str = "data") -> DataSettings:
        """Validate a ``data:`` mapping, reporting every problem at once.

        Parameters
        ----------
        d
            The mapping read from YAML. Numbers written as strings (PyYAML reads ``1e-5`` as a
            string) are accepted when they parse cleanly.
        source
            Key path prefix for messages, e.g. ``data`` gives ``data.val_fraction: ...``.

        Raises
        ------
        ConfigError
            One line per problem, each naming the key path, the value and what was expected.
        """
        return validate(cls, d, source=source, context={"source": source})

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain mapping; ``from_dict(s.to_dict())`` gives ``s`` back."""
        out: dict[str, Any] = {
            "train": self.train,
            "test": self.test,
            "test_split": self.test_split.to_dict() if self.test_split else None,
            "label_key": self.label_key,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "normalize": self.normalize,
            "n_top_genes": self.n_top_genes,
            "min_cells_per_class": self.min_cells_per_class,
            "split_seed": self.split_seed,
        }
        if self.subsample is not None:  # absent when unset: older studies keep their fingerprint
            out["subsample"] = self.subsample
        if self.origin is not None:
            out["origin"] = self.origin
        return out
