"""Prepared data kept between trials: its fingerprint, the disk cache and the in-process memo.

:func:`data_fingerprint` identifies the input file(s) and every setting that shapes the
prepared arrays; it is the cache key and the study's ``data_fingerprint`` attribute, so its
value for given files and settings must not change (bump :data:`CACHE_FORMAT` instead when the
preprocessing changes). Entries are ``data-<fingerprint[:20]>.npz`` (the arrays) and ``.json``
(the rest), written so that parallel workers never see half a file.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deepsc_tune.data._loading import InputFile, resolve_inputs, with_hint
from deepsc_tune.utils import atomic_path, write_text

if TYPE_CHECKING:  # pragma: no cover
    from deepsc_tune.data._prepare import PreparedData
    from deepsc_tune.data._settings import DataSettings

#: Bump when the preprocessing changes, so old cache entries are not reused.
CACHE_FORMAT = 1
#: Files up to this size are identified by content (copies share a cache entry, ``touch`` does
#: not invalidate it); larger ones by path, size and modification time, to avoid reading GBs.
CONTENT_HASH_MAX_BYTES = 64 * 2**20

#: The array fields of :class:`~deepsc_tune.data._prepare.PreparedData` stored in the ``.npz``.
_ARRAYS = ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test")

_MEMO: dict[str, PreparedData] = {}
_CONTENT_HASHES: dict[tuple[str, int, int], str] = {}


def clear_memo() -> None:
    """Forget the in-process copies of prepared data (the disk cache is kept)."""
    _MEMO.clear()


def recall(fingerprint: str) -> PreparedData | None:
    """The prepared data of ``fingerprint`` already made in this process, or ``None``."""
    return _MEMO.get(fingerprint)


def remember(prepared: PreparedData) -> None:
    """Keep ``prepared`` for later calls in this process."""
    _MEMO[prepared.fingerprint] = prepared


def data_fingerprint(settings: DataSettings, *, hint: str | None = None) -> str:
    """sha256 identifying the input file(s) and every setting that shapes the prepared data.

    Files up to :data:`CONTENT_HASH_MAX_BYTES` are identified by content, larger ones by
    absolute path, size and modification time. ``origin`` is not part of it.

    Raises
    ------
    DataError
        When an input file is missing (``hint`` as in :func:`~deepsc_tune.data._prepare.prepare_data`).
    """
    train_inp, test_inp = resolve_inputs(with_hint(settings, hint))
    payload = {
        "format": CACHE_FORMAT,
        "train": _identity(train_inp),
        "test": _identity(test_inp) if test_inp else None,
        "settings": {k: v for k, v in settings.to_dict().items() if k not in ("train", "test", "origin")},
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _identity(inp: InputFile) -> dict[str, Any]:
    if inp.builtin:
        import scanpy

        # The bundled file can change between scanpy releases; hash it when it is there.
        bundled = Path(scanpy.__file__).parent / "datasets" / "10x_pbmc68k_reduced.h5ad"
        ident: dict[str, Any] = {"builtin": inp.builtin}
        if bundled.is_file():
            ident["sha256"] = _content_hash(bundled)
        return ident
    stat = inp.path.stat()
    if stat.st_size <= CONTENT_HASH_MAX_BYTES:
        return {"sha256": _content_hash(inp.path)}
    return {"path": str(inp.path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _content_hash(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    # Trials call prepare_data again and again; hash each file version once per process.
    if key not in _CONTENT_HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        _CONTENT_HASHES[key] = digest.hexdigest()
    return _CONTENT_HASHES[key]


def _cache_paths(cache_dir: Path, fingerprint: str) -> tuple[Path, Path]:
    stem = f"data-{fingerprint[:20]}"
    return cache_dir / f"{stem}.npz", cache_dir / f"{stem}.json"


def save_cached(cache_dir: Path, prepared: PreparedData) -> None:
    """Write ``prepared`` under ``cache_dir`` (created if needed), keyed by its fingerprint."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    npz, meta = _cache_paths(cache_dir, prepared.fingerprint)
    arrays = {k: getattr(prepared, k) for k in _ARRAYS if getattr(prepared, k) is not None}
    arrays.update({f"idx_{k}": v for k, v in prepared.indices.items() if v is not None})
    info = {
        "fingerprint": prepared.fingerprint,
        "format": CACHE_FORMAT,
        "classes": prepared.classes,
        "genes": prepared.genes,
        "dropped_classes": prepared.dropped_classes,
        "notes": prepared.notes,
        "source": prepared.source,
    }
    # Several worker processes may prepare at once: write to a private name, then rename, so a
    # reader sees a whole file or none. The .json goes last and marks the entry complete.
    with atomic_path(npz) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    write_text(meta, json.dumps(info, indent=1))


def load_cached(cache_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The fields of the cached :class:`~deepsc_tune.data._prepare.PreparedData` of ``fingerprint``
    (``from_cache=True``), or ``None`` when there is no whole, current entry."""
    npz, meta = _cache_paths(cache_dir, fingerprint)
    try:
        info = json.loads(meta.read_text())
        if info.get("fingerprint") != fingerprint or info.get("format") != CACHE_FORMAT:
            return None
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        # Missing or damaged entry: recompute and overwrite it.
        return None
    return dict(
        **{k: arrays.get(k) for k in _ARRAYS},
        classes=info["classes"],
        genes=info["genes"],
        dropped_classes=info["dropped_classes"],
        fingerprint=fingerprint,
        notes=info["notes"],
        source=info["source"],
        indices={k: arrays.get(f"idx_{k}") for k in ("train", "val", "test")},
        from_cache=True,
    )
