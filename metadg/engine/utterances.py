"""Labelled utterances with string attributes and lazily loaded audio: what the engine moves."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


def fit_length(wave: np.ndarray, n_samples: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Repeat-pad a short clip, then crop to `n_samples` (random offset if `rng`, else from the start)."""
    if wave.size == 0:
        raise ValueError("cannot fit an empty waveform to a fixed length")
    if wave.shape[0] < n_samples:
        wave = np.tile(wave, -(-n_samples // wave.shape[0]))
    start = 0
    if rng is not None and wave.shape[0] > n_samples:
        start = int(rng.integers(0, wave.shape[0] - n_samples + 1))
    return wave[start : start + n_samples]


class LoadError(ValueError):
    """An utterance whose audio cannot be used (unreadable, empty, silent, NaN); names the file."""

    def __init__(self, message: str, reason: str = "unusable audio") -> None:
        super().__init__(message)
        self.reason = reason


class Utterances:
    """A labelled list of utterances with string attributes, audio loaded on demand."""

    def __init__(
        self,
        ids: Sequence[str],
        labels: Sequence[int] | np.ndarray,
        attrs: dict[str, Sequence[str]],
        loader: Callable[[int], np.ndarray],
        name: str = "",
        on_error: str = "raise",
    ) -> None:
        self.on_error = on_error
        #: utterances whose audio failed to load under on_error: skip, by reason
        self.skipped: Counter[str] = Counter()
        #: utterance id → why it was skipped (the message a raise would have given)
        self.errors: dict[str, str] = {}
        self.ids = list(ids)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.attrs = {k: list(v) for k, v in attrs.items()}
        self.loader = loader
        self.name = name
        n = len(self.ids)
        if self.labels.shape != (n,):
            raise ValueError(f"{name or 'utterances'}: {n} ids but {self.labels.shape[0]} labels")
        for key, values in self.attrs.items():
            if len(values) != n:
                raise ValueError(f"{name or 'utterances'}: attribute {key!r} has {len(values)} values for {n} ids")

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> np.ndarray:
        """Waveform of utterance `index` as float32 mono at the library's sample rate."""
        return self.loader(index)

    def try_load(self, index: int) -> np.ndarray | None:
        """Like `load`, but under on_error: skip a bad file is counted and gives None."""
        try:
            return self.loader(index)
        except LoadError as exc:
            if self.on_error != "skip":
                raise
            reason = exc.reason
            if not self.skipped:
                log.warning("%s: skipping unusable audio (on_error: skip): %s", self.name or "utterances", exc)
            self.skipped[reason] += 1
            self.errors[self.ids[index]] = str(exc)
            return None

    def describe(self, index: int) -> str:
        """The utterance's id, with its file when the loader knows it (for messages)."""
        source = getattr(self.loader, "source", None)
        path = source(index) if source else None
        return f"{self.ids[index]} ({path})" if path and path != self.ids[index] else self.ids[index]

    def attr(self, key: str) -> list[str]:
        """Column of attribute `key`; the error lists the attributes that exist."""
        if key not in self.attrs:
            raise KeyError(f"{self.name or 'utterances'}: no attribute {key!r} (have: {', '.join(sorted(self.attrs))})")
        return self.attrs[key]

    def subset(self, indices: Sequence[int] | np.ndarray, name: str | None = None) -> Utterances:
        """A view on some utterances; audio still comes from the parent's loader."""
        idx = [int(i) for i in indices]
        sub = Utterances(
            [self.ids[i] for i in idx],
            self.labels[idx],
            {k: [v[i] for i in idx] for k, v in self.attrs.items()},
            _SubsetLoader(self.loader, idx),
            name if name is not None else self.name,
            self.on_error,
        )
        sub.skipped = self.skipped  # one tally per corpus, whichever view hit the bad file
        sub.errors = self.errors
        return sub


@dataclass
class _SubsetLoader:
    # A class, not a lambda, so subsets stay picklable for data-loader workers.
    parent: Callable[[int], np.ndarray]
    indices: list[int]

    def __call__(self, index: int) -> np.ndarray:
        return self.parent(self.indices[index])

    def source(self, index: int) -> str | None:
        """The parent's file of this utterance, if the parent knows it."""
        source = getattr(self.parent, "source", None)
        return source(self.indices[index]) if source else None


class ArrayLoader:
    """Picklable row accessor over an in-memory (N, T) array (generated corpora)."""

    def __init__(self, waves: np.ndarray) -> None:
        self.waves = waves

    def __call__(self, index: int) -> np.ndarray:
        return self.waves[index]
