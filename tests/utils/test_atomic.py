"""deepsc_tune.utils._atomic: a reader sees the old file or the new one; a failed write leaves no temporary."""

from __future__ import annotations

import pytest

from deepsc_tune.utils._atomic import atomic_path, write_text


def test_write_replaces_the_whole_file(tmp_path):
    target = tmp_path / "record.json"
    write_text(target, "old")
    write_text(target, "new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "trials.csv"
    target.write_text("old")
    with pytest.raises(OSError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_text("half of the ne")
        raise OSError(28, "disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trials.csv"]
