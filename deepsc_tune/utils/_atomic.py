"""Files that readers see whole or not at all: write under a private name, then rename.

Several workers (processes on one machine, or machines sharing a folder) write the same files:
the prepared-data cache, the study's search-space record, reports, DeepSC's checkpoint lists.
``os.replace`` is atomic on one file system, so a reader sees the old file or the new one, never
half of one; a write that fails leaves the old file and no temporary behind.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """A private temporary name beside ``path`` to write to; renamed onto ``path`` when the block
    ends, removed when it raises (the exception goes on; an ``OSError`` that names no file, such
    as a full disk met at a flush, names ``path``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError) and not e.filename:  # a full disk met at a flush names no file
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise


def write_text(path: Path | str, text: str, *, encoding: str = "utf-8") -> None:
    """``path.write_text(text)``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
