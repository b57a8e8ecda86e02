"""Tests of deepsc_tune.utils._yaml_file: strict YAML mappings with one-line errors naming the line."""

import pytest

from deepsc_tune.errors import ConfigError
from deepsc_tune.utils._yaml_file import load_mapping, read_yaml_text

KEYS = ("name", "data")


def test_a_mapping_is_returned_as_is():
    assert load_mapping("name: x\ndata: {a: 1}\n", source="f.yaml", keys=KEYS) == {"name": "x", "data": {"a": 1}}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\nname: y\n", "f.yaml: duplicate key 'name' on line 1 and line 2; keep one"),
        ("data: {a: 1, a: 2}\n", "f.yaml: duplicate key 'a' on line 1 and line 1"),
        ("data: [unclosed\n", "f.yaml: line 2, column 1: malformed YAML"),
        ("", "f.yaml: the file is empty; expected a mapping with name, data"),
        ("- a\n- b\n", "f.yaml: expected a mapping with keys name, data, got list"),
    ],
)
def test_bad_yaml_is_one_line_naming_the_place(text, message):
    with pytest.raises(ConfigError) as e:
        load_mapping(text, source="f.yaml", keys=KEYS)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_text_must_be_utf8_and_the_line_of_the_bad_byte_is_named(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: x\ndescription: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1.yaml: line 2: not UTF-8 text \(byte 0xe9\)"):
        read_yaml_text(path)
    with pytest.raises(ConfigError, match="cannot read"):
        read_yaml_text(tmp_path / "missing.yaml")


def test_aliases_within_the_limit_still_work():
    from deepsc_tune.utils._yaml_file import load_mapping

    text = "base: &b {low: 1, high: 2}\nsearch: {a: *b, c: *b}\n"
    assert load_mapping(text, source="x.yaml", keys=["search"])["search"] == {
        "a": {"low": 1, "high": 2},
        "c": {"low": 1, "high": 2},
    }
