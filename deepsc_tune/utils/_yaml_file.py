"""YAML files as users write them: UTF-8 text, no key given twice, one-line errors naming the line.

PyYAML's safe loader, except that a key repeated in one mapping is an error (PyYAML silently
keeps the last), a document that aliases expand beyond :data:`MAX_NODES` values (an anchor
bomb, "billion laughs") or into a cycle is refused before it is built, and every failure is a
:class:`~deepsc_tune.errors.ConfigError` naming the file, line and column.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from deepsc_tune.errors import ConfigError


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


#: The most values (scalars, lists, mappings) a document may hold once every alias is expanded.
#: A search space has a few hundred; nine levels of nine aliases would make 387 million.
MAX_NODES = 100_000


class _TooBig(Exception):
    """The document's aliases expand beyond :data:`MAX_NODES` values, or into a cycle."""


def _expanded_size(node: yaml.Node, memo: dict[int, int], open_nodes: set[int]) -> int:
    """Values in ``node`` with every alias expanded (stops counting above :data:`MAX_NODES`)."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in open_nodes:
        raise _TooBig(f"an alias refers to a value that holds it (line {node.start_mark.line + 1})")
    open_nodes.add(key)
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    total = 1
    for child in children:
        total += _expanded_size(child, memo, open_nodes)
        if total > MAX_NODES:
            break
    open_nodes.discard(key)
    memo[key] = total
    return total


class _LimitedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing documents whose aliases expand too far (:class:`_TooBig`).

    Aliases share one node while composing, so the check is cheap; it runs before any Python
    object is built, where a bomb would take all memory.
    """

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {}, set())
        if size > MAX_NODES:
            raise _TooBig(f"its aliases (*name) expand to more than {MAX_NODES} values; write the values out")
        return self.construct_document(node)


def load_value(text: str, *, source: str) -> Any:
    """One YAML value (a command-line override's), with the same limits as a file.

    Raises
    ------
    yaml.YAMLError
        When ``text`` is not YAML (callers may take it as a plain string).
    ConfigError
        When its aliases expand too far.
    """
    try:
        return yaml.load(text, Loader=_LimitedLoader)  # a SafeLoader subclass
    except _TooBig as e:
        raise ConfigError(f"{source}: {e}") from None


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(key)
        self.key, self.first, self.second = key, first, second


class _UniqueKeyLoader(_LimitedLoader):
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


def load_mapping(text: str, *, source: str, keys: Sequence[str]) -> dict[str, Any]:
    """Parse YAML text into a mapping, with a one-line error naming the line.

    A key repeated in one mapping is refused, naming both lines (PyYAML keeps the last), and so
    is a document that aliases expand beyond :data:`MAX_NODES` values or into a cycle. ``keys``
    are the top-level keys the file should have, named when it is empty or not a mapping.
    """
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except _DuplicateKey as e:
        raise ConfigError(
            f"{source}: duplicate key {e.key!r} on line {e.first} and line {e.second}; "
            "keep one (YAML would silently use the last)"
        ) from None
    except _TooBig as e:
        raise ConfigError(f"{source}: refused: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{source}:{where}: malformed YAML: {problem}") from None
    if raw is None:
        raise ConfigError(f"{source}: the file is empty; expected a mapping with {', '.join(keys)}")
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with keys {', '.join(keys)}, got {type(raw).__name__}")
    return raw
