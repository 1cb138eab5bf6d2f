"""Audio I/O and length handling: soundfile + soxr, 16 kHz mono float32 inside the library."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from metadg.engine.utterances import LoadError

SAMPLE_RATE = 16000
#: lowest sample rate resampled; below it, a tiny file could claim gigabytes once upsampled
MIN_SAMPLE_RATE = 4000
# libsndfile's header log for a WAV whose data chunk is cut short: "data : 32000 (should be 1000)"
_SHORT_DATA = re.compile(r"^data : (\d+) \(should be (\d+)\)", re.MULTILINE)
_STREAMING_SIZES = {0, 0xFFFFFFFF}  # placeholders of writers that never went back to fill the header in


class AudioError(LoadError):
    """An audio file that cannot be used; the message names the file."""


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read any soundfile-supported file as mono float32 at `sample_rate` (channels averaged, resampled).

    Refused with an AudioError naming the file: missing, not a regular file, zero bytes, unreadable,
    truncated, recorded below MIN_SAMPLE_RATE, no samples, NaN/Inf samples, or every sample zero.
    """
    import soundfile as sf

    if not Path(path).exists():  # libsndfile reports a missing file as a vague "System error"
        raise AudioError(f"{path}: file not found", "missing file")
    if not Path(path).is_file():
        raise AudioError(f"{path}: not a regular file", "unreadable audio")
    if Path(path).stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)", "empty audio")
    try:
        with sf.SoundFile(str(path)) as fh:
            sr, header = fh.samplerate, fh.extra_info
            data = fh.read(dtype="float32", always_2d=True) if sr >= MIN_SAMPLE_RATE else None
    except Exception as exc:  # libsndfile raises its own types for corrupt files
        raise AudioError(f"{path}: unreadable audio: {exc}", "unreadable audio") from None
    if data is None:
        raise AudioError(f"{path}: sample rate {sr} Hz is below {MIN_SAMPLE_RATE} Hz", "unsupported sample rate")
    short = _SHORT_DATA.search(header)
    if short and int(short[1]) > int(short[2]) and int(short[1]) not in _STREAMING_SIZES:
        raise AudioError(f"{path}: truncated: the header announces {short[1]} bytes of audio, the file holds {short[2]}",
                         "truncated audio")
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
