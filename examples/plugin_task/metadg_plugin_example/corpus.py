"""`tones`: harmonic tones in three pitch bands, recorded in rooms that colour them differently.

Everything is generated with numpy from the corpus seed and kept in memory (a
split is a few hundred kilobytes), so there is nothing to download or cache.
Each room is fixed and distinct: its own impulse response (reverberation), EQ
(band limits and a resonance) and background noise. The room's clips of a split
come from a generator seeded by (seed, split, room), so choosing other rooms
never changes the clips of a room.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from metadg.tasks import ArrayLoader, Corpus, CorpusConfig, Utterances

SAMPLE_RATE = 16000

#: class name → fundamental-frequency band in Hz; the label order of the task
PITCH_BANDS: dict[str, tuple[float, float]] = {"low": (110.0, 200.0), "mid": (260.0, 460.0), "high": (600.0, 1000.0)}
CLASSES: tuple[str, ...] = tuple(PITCH_BANDS)


@dataclass(frozen=True)
class Room:
    """How a room colours a tone: reverberation, pass band, one resonance, background noise."""

    key: int  # seeds the room's impulse response: the same room sounds the same in every split
    rt60_s: float  # reverberation time
    highpass_hz: float
    lowpass_hz: float
    mode_hz: float  # a resonance of the room (or of the microphone)
    mode_db: float
    snr_db: float  # tone-to-noise ratio
    noise_tilt: float  # spectral slope of the noise: 0 white, 1 pink, 2 brown


#: seen rooms (train/dev) first, then the rooms that only appear at evaluation
ROOMS: dict[str, Room] = {
    "studio": Room(1, rt60_s=0.08, highpass_hz=40, lowpass_hz=7500, mode_hz=2500, mode_db=2, snr_db=35, noise_tilt=0.0),
    "hall": Room(2, rt60_s=0.9, highpass_hz=60, lowpass_hz=5000, mode_hz=180, mode_db=6, snr_db=28, noise_tilt=1.0),
    "office": Room(3, rt60_s=0.3, highpass_hz=120, lowpass_hz=4000, mode_hz=1200, mode_db=5, snr_db=22, noise_tilt=0.5),
    "phone": Room(4, rt60_s=0.15, highpass_hz=320, lowpass_hz=3400, mode_hz=1800, mode_db=8, snr_db=18, noise_tilt=0.0),
    "cave": Room(5, rt60_s=1.6, highpass_hz=30, lowpass_hz=1800, mode_hz=90, mode_db=9, snr_db=20, noise_tilt=2.0),
}
SEEN_ROOMS: tuple[str, ...] = ("studio", "hall", "office")
UNSEEN_ROOMS: tuple[str, ...] = ("phone", "cave")

_SPLITS = {"train": 0, "dev": 1, "eval": 2}
#: clips per class and room of each split when n_per_class is not set
_SIZES = {"train": 8, "dev": 4, "eval": 4}


class TonesConfig(CorpusConfig):
    """Synthetic tones (low/mid/high pitch) in seen rooms (train/dev) or in seen + unseen rooms (eval)."""

    split: Literal["train", "dev", "eval"] = Field("train", description="train/dev: seen rooms; eval: all rooms")
    seed: int = Field(0, ge=0, description="corpus seed (independent of the experiment seed)")
    n_per_class: int | None = Field(None, ge=1, le=1000, description="clips per class and room; default 8/4/4 per split")
    duration_s: float = Field(0.5, ge=0.05, le=10, description="clip length in seconds")
    rooms: list[str] | None = Field(None, description="rooms to record in; default seen (train/dev) or all (eval)")

    @field_validator("rooms")
    @classmethod
    def _known_rooms(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        unknown = [r for r in value if r not in ROOMS]
        if unknown:
            raise ValueError(f"unknown room {unknown[0]!r} (valid: {', '.join(ROOMS)})")
        if not value or len(set(value)) != len(value):
            raise ValueError(f"needs one or more distinct rooms, got {value}")
        return value


class TonesCorpus(Corpus):
    """Deterministic synthetic tones × rooms, generated in memory from the seed."""

    Config = TonesConfig

    def class_names(self) -> list[str]:
        """The pitch classes, in label order."""
        return list(CLASSES)

    def read(self) -> Utterances:
        """Generate the configured split; labels go through the reading task's label map."""
        cfg: TonesConfig = self.cfg  # type: ignore[assignment]
        rooms = cfg.rooms or (list(ROOMS) if cfg.split == "eval" else list(SEEN_ROOMS))
        n = cfg.n_per_class or _SIZES[cfg.split]
        length = int(round(cfg.duration_s * SAMPLE_RATE))
        ids, pitches, room_of, f0s, waves = [], [], [], [], []
        for room in rooms:
            rng = np.random.default_rng([cfg.seed, _SPLITS[cfg.split], ROOMS[room].key])
            response = impulse_response(ROOMS[room])
            for name, band in PITCH_BANDS.items():
                for i in range(n):
                    f0 = float(np.exp(rng.uniform(np.log(band[0]), np.log(band[1]))))
                    waves.append(record(tone(f0, length, rng), ROOMS[room], response, rng))
                    ids.append(f"tones/{cfg.split}/{room}/{name}/{i:03d}")
                    pitches.append(name)
                    room_of.append(room)
                    f0s.append(f"{f0:.1f}")
        labels = [self.map_label(p) for p in pitches]
        attrs = {"pitch": pitches, "room": room_of, "f0": f0s, "corpus": ["tones"] * len(ids)}
        array = np.stack(waves).astype(np.float32) if waves else np.zeros((0, length), np.float32)
        return Utterances(ids, labels, attrs, ArrayLoader(array), name=f"tones/{cfg.split}")


def tone(f0: float, length: int, rng: np.random.Generator) -> np.ndarray:
    """A harmonic tone at `f0` with random timbre, slight vibrato and a random amplitude envelope."""
    t = np.arange(length) / SAMPLE_RATE
    vibrato = rng.uniform(0.0, 0.01) * np.sin(2 * np.pi * rng.uniform(4, 7) * t + rng.uniform(0, 2 * np.pi))
    phase = 2 * np.pi * f0 * np.cumsum(1.0 + vibrato) / SAMPLE_RATE
    rolloff = rng.uniform(0.5, 1.6)
    wave = np.zeros(length)
    for k in range(1, int(rng.integers(3, 9)) + 1):
        if k * f0 >= 0.45 * SAMPLE_RATE:
            break
        wave += k ** -rolloff * rng.uniform(0.5, 1.0) * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    attack = max(1, int(rng.uniform(0.005, 0.06) * SAMPLE_RATE))
    envelope = np.minimum(1.0, np.arange(length) / attack) * np.exp(-rng.uniform(0.0, 4.0) * t)
    envelope *= 1.0 + rng.uniform(0.0, 0.4) * np.sin(2 * np.pi * rng.uniform(2, 9) * t)  # tremolo
    wave *= envelope
    return rng.uniform(0.2, 0.9) * wave / (np.abs(wave).max() + 1e-9)


def impulse_response(room: Room) -> np.ndarray:
    """The room's fixed impulse response: direct sound, a few early reflections, an exponential tail."""
    rng = np.random.default_rng([99, room.key])
    n = max(16, int(min(room.rt60_s, 1.0) * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    response = rng.standard_normal(n) * np.exp(-6.9 * t / room.rt60_s) * 0.3
    response[0] = 1.0
    for _ in range(4):
        response[int(rng.integers(40, min(n, 1600)))] += rng.uniform(0.2, 0.6) * rng.choice([-1.0, 1.0])
    return response / np.sqrt(np.sum(response**2))


def _gain(room: Room, freqs: np.ndarray) -> np.ndarray:
    """The room's EQ as a magnitude response: 2nd-order band limits and a resonance (log-frequency bump)."""
    f = np.maximum(freqs, 1.0)
    highpass = (f / room.highpass_hz) ** 2 / np.sqrt(1 + (f / room.highpass_hz) ** 4)
    lowpass = 1 / np.sqrt(1 + (f / room.lowpass_hz) ** 4)
    mode = 10 ** (room.mode_db / 20 * np.exp(-0.5 * (np.log2(f / room.mode_hz) / 0.3) ** 2))
    return highpass * lowpass * mode


def record(wave: np.ndarray, room: Room, response: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`wave` as heard in `room`: reverberated, equalised, with the room's noise at its SNR."""
    length = wave.shape[0]
    size = 1 << int(np.ceil(np.log2(length + response.shape[0])))
    freqs = np.fft.rfftfreq(size, 1 / SAMPLE_RATE)
    spectrum = np.fft.rfft(wave, size) * np.fft.rfft(response, size) * _gain(room, freqs)
    wet = np.fft.irfft(spectrum, size)[:length]
    noise_spec = np.fft.rfft(rng.standard_normal(size)) / np.maximum(freqs, 20.0) ** (room.noise_tilt / 2)
    noise = np.fft.irfft(noise_spec * _gain(room, freqs), size)[:length]
    power = np.mean(wet**2) + 1e-12
    noise *= np.sqrt(power / (np.mean(noise**2) + 1e-12) / 10 ** (room.snr_db / 10))
    out = wet + noise
    peak = float(np.abs(out).max())
    return out * (0.99 / peak) if peak > 0.99 else out  # no clipping
