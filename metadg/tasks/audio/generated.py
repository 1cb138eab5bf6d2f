"""Generated corpora: per-utterance random streams and the on-disk cache of generated splits."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def child_rng(root: np.random.SeedSequence, *key: int) -> np.random.Generator:
    """Generator of the root's descendant at `key`, independent of sibling counts."""
    return np.random.default_rng(np.random.SeedSequence(root.entropy, spawn_key=root.spawn_key + key))


def cache_path(cache_dir: str | Path, prefix: str, key: Mapping[str, Any]) -> Path:
    """`<cache_dir>/<prefix>_<hash of key>.npz`: one file per set of generation arguments."""
    digest = hashlib.sha256(json.dumps(dict(key), sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{prefix}_{digest}.npz"


def cached_split(path: Path, make: Callable[[], dict[str, np.ndarray]], n_rows: int, n_samples: int,
                 what: str) -> dict[str, np.ndarray]:
    """The arrays cached at `path` (float32 `waves` of (n_rows, n_samples), other columns of n_rows), else made and cached.

    A corrupt or foreign file is regenerated with a warning (a cache is disposable); the
    new file is written beside it and renamed over, so readers never see half a file.
    """
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            waves = arrays["waves"]
            if waves.shape != (n_rows, n_samples) or waves.dtype != np.float32 or any(
                    len(v) != n_rows for v in arrays.values()):
                raise ValueError(f"cache file {path} does not match its arguments")
            return arrays
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            log.warning("%s cache %s unreadable (%s); regenerating", what, path, exc)
    arrays = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would make a shared cache unreadable to others
        with os.fdopen(fd, "wb") as fh:  # a file object stops numpy appending ".npz"
            np.savez(fh, **arrays)  # uncompressed: audio barely compresses
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return arrays
