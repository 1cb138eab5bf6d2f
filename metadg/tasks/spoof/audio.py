"""Audio I/O and length handling: soundfile + soxr, 16 kHz mono float32 inside the library."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from metadg.tasks.base import LoadError

SAMPLE_RATE = 16000


class AudioError(LoadError):
    """An audio file that cannot be used; the message names the file."""


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read any soundfile-supported file as mono float32 at `sample_rate`."""
    import soundfile as sf

    if not Path(path).is_file():  # libsndfile reports a missing file as a vague "System error"
        raise AudioError(f"{path}: file not found", "missing file")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile raises its own types for corrupt files
        raise AudioError(f"{path}: unreadable audio: {exc}", "unreadable audio") from None
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if sr != sample_rate and wave.size:
        import soxr

        wave = soxr.resample(wave, sr, sample_rate).astype(np.float32, copy=False)
    if wave.size == 0:
        raise AudioError(f"{path}: empty audio (no samples)", "empty audio")
    if not np.isfinite(wave).all():
        raise AudioError(f"{path}: NaN or infinite samples", "non-finite samples")
    if not wave.any():
        raise AudioError(f"{path}: silent (every sample is zero)", "silent audio")
    return np.ascontiguousarray(wave, dtype=np.float32)
