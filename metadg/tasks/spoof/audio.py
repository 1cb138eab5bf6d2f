"""Audio I/O and length handling: soundfile + soxr, 16 kHz mono float32 inside the library."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file."""


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read any soundfile-supported file as mono float32 at `sample_rate`."""
    import soundfile as sf

    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except FileNotFoundError:
        raise AudioError(f"{path}: file not found") from None
    except Exception as exc:  # libsndfile raises its own types for corrupt files
        raise AudioError(f"{path}: unreadable audio: {exc}") from None
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if sr != sample_rate and wave.size:
        import soxr

        wave = soxr.resample(wave, sr, sample_rate).astype(np.float32, copy=False)
    if wave.size == 0:
        raise AudioError(f"{path}: empty audio")
    if not np.isfinite(wave).all():
        raise AudioError(f"{path}: audio contains NaN or infinite samples")
    return np.ascontiguousarray(wave, dtype=np.float32)


def fit_length(wave: np.ndarray, n_samples: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Repeat-pad a short clip, then crop to `n_samples` (random offset if `rng`, else from the start)."""
    if wave.size == 0:
        raise AudioError("cannot fit an empty waveform")
    if wave.shape[0] < n_samples:
        wave = np.tile(wave, -(-n_samples // wave.shape[0]))
    start = 0
    if rng is not None and wave.shape[0] > n_samples:
        start = int(rng.integers(0, wave.shape[0] - n_samples + 1))
    return wave[start : start + n_samples]
