"""Helpers of the bad-input suite (tests/test_bad_input*.py): a tone, a sandbox that sees every write, the CLI in-process."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from metadg.cli import main

SR = 16000


def tone(seconds: float = 0.25, sr: int = SR, hz: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


class Sandbox:
    """cwd and TMPDIR moved into fresh folders; `written()` lists what appeared or changed under the watched roots."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch, watch: tuple[Path, ...]) -> None:
        self.cwd, self.tmp = root / "sandbox-cwd", root / "sandbox-tmp"
        self.cwd.mkdir(exist_ok=True)
        self.tmp.mkdir(exist_ok=True)
        monkeypatch.chdir(self.cwd)
        monkeypatch.setenv("TMPDIR", str(self.tmp))
        monkeypatch.setattr(tempfile, "tempdir", str(self.tmp))
        self.roots = (root, *watch)
        self.before = self._state()

    def _state(self) -> dict[Path, tuple[int, int] | None]:
        # Folders count when they appear; files when they appear or change. torch makes an empty
        # `torchinductor_<user>` cache folder in TMPDIR on first use: torch's, not metadg's.
        return {p: (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
                for r in self.roots for p in r.rglob("*") if not p.relative_to(r).parts[-1].startswith("torchinductor_")}

    def written(self) -> set[Path]:
        """Paths created or modified since the sandbox was set up."""
        return {p for p, s in self._state().items() if p not in self.before or self.before[p] != s}


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run `metadg argv...` in-process; (exit status, stdout, stderr)."""
    status = main(list(argv))
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return status, out.out, out.err


def audio_cases(d: Path) -> dict[str, tuple[Path, str, str]]:
    """name → (file, reason, message pattern): every kind of unusable audio, written into `d`."""
    d.mkdir(exist_ok=True)
    good_wav, good_flac = d / "good.wav", d / "good-flac.flac"
    sf.write(good_wav, tone(1.0), SR)
    sf.write(good_flac, tone(1.0), SR)
    wav, flac = good_wav.read_bytes(), good_flac.read_bytes()
    raw = {
        "truncated WAV header": ("wav-header.wav", wav[:20], "unreadable audio", "unreadable audio"),
        "truncated WAV data": ("wav-data.wav", wav[: 44 + 1000], "truncated audio",
                               "truncated: the header announces 32000 bytes"),
        "truncated FLAC header": ("flac-header.flac", flac[:30], "unreadable audio", "unreadable audio"),
        "truncated FLAC stream": ("flac-stream.flac", flac[: len(flac) // 2], "unreadable audio", "unreadable audio"),
        "random bytes named .wav": ("random.wav", np.random.default_rng(0).bytes(5000), "unreadable audio", "unreadable audio"),
        "zero-byte WAV": ("zero-wav.wav", b"", "empty audio", r"empty file \(0 bytes\)"),
        "zero-byte FLAC": ("zero-flac.flac", b"", "empty audio", r"empty file \(0 bytes\)"),
    }
    cases = {}
    for name, (file, data, reason, pattern) in raw.items():
        (d / file).write_bytes(data)
        cases[name] = (d / file, reason, pattern)
    spikes = np.arange(SR) % 100 == 0
    sf.write(d / "nan.wav", np.where(spikes, np.nan, tone(1.0)).astype(np.float32), SR, subtype="FLOAT")
    sf.write(d / "inf.wav", np.where(spikes, np.inf, tone(1.0)).astype(np.float32), 44100, subtype="FLOAT")
    sf.write(d / "no-samples.wav", np.zeros(0, dtype=np.float32), SR)
    sf.write(d / "1hz.wav", tone(1.0), 1)  # 16,000 samples at 1 Hz would become 256 M samples at 16 kHz
    (d / "folder.wav").mkdir(exist_ok=True)
    cases |= {
        "NaN samples": (d / "nan.wav", "non-finite samples", "NaN or infinite samples"),
        "Inf samples at 44.1 kHz": (d / "inf.wav", "non-finite samples", "NaN or infinite samples"),
        "no samples": (d / "no-samples.wav", "empty audio", r"empty audio \(no samples\)"),
        "sample rate 1 Hz": (d / "1hz.wav", "unsupported sample rate", "sample rate 1 Hz is below 4000 Hz"),
        "a folder named .wav": (d / "folder.wav", "unreadable audio", "not a regular file"),
    }
    return cases
