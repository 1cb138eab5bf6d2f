"""Small deterministic synthetic acoustic-scene corpus recorded through several devices.

Each recording device is a domain: a fixed channel (impulse response, band limits,
resampling, dynamic-range compression or clipping, noise floor) applied to a clean scene
clip.  Scene classes are textures plus event mixtures with their own spectral shape,
modulation and event rate, so the scene is learnable from content.  As in TAU Urban
Acoustic Scenes 2020 Mobile, devices a, b, c and s1-s3 are seen in training while s4-s6
only appear in eval; those apply channels no seen device has (telephone band, heavy
compression with clipping and strong resonances, a muffled recording under loud hiss),
so a model that only learned the seen channels degrades on them.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import signal
from tqdm import tqdm

from metadg.tasks.audio.generated import cache_path, cached_split, child_rng

__all__ = ["SAMPLE_RATE", "CLASSES", "SEEN_DEVICES", "UNSEEN_DEVICES", "ALL_DEVICES", "SPLITS",
           "GENERATOR_VERSION", "ScenesSplit", "synthesize_scene", "apply_device", "generate_split", "load_split"]

SAMPLE_RATE: int = 16000
CLASSES: tuple[str, ...] = ("airport", "bus", "metro", "park", "shopping_mall", "street_traffic")
SEEN_DEVICES: tuple[str, ...] = ("a", "b", "c", "s1", "s2", "s3")
UNSEEN_DEVICES: tuple[str, ...] = ("s4", "s5", "s6")
ALL_DEVICES: tuple[str, ...] = SEEN_DEVICES + UNSEEN_DEVICES
SPLITS: tuple[str, ...] = ("train", "dev", "eval")
# Bump whenever the generated signals change, so stale caches are not reused.
GENERATOR_VERSION: int = 1
# Fixed pool size per class and split, so that a clip's location does not depend on the split size.
_N_LOCATIONS = 10
_FIR_TAPS = 255  # odd: a type-I linear-phase FIR may have any gain at Nyquist


@dataclass(frozen=True)
class ScenesSplit:
    """One generated split: waveforms plus TAU-style metadata columns."""

    ids: list[str]
    waves: np.ndarray
    labels: np.ndarray
    scenes: list[str]
    devices: list[str]
    locations: list[str]


# --------------------------------------------------------------------------- helpers
def _rms(x: np.ndarray) -> float:
    """Root mean square, never zero (silent inputs must not divide by zero)."""
    return float(np.sqrt(np.mean(x * x)) + 1e-12)


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit-variance white noise; uniform is spectrally identical and cheaper than normal."""
    return (rng.random(n) - 0.5) * np.sqrt(12.0)


def _shaped(rng: np.random.Generator, n: int, sr: int, gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Unit-RMS noise with magnitude spectrum gain(f), f in Hz (clamped to >= 1 Hz)."""
    f = np.maximum(np.fft.rfftfreq(n, 1 / sr), 1.0)
    y = np.fft.irfft(np.fft.rfft(_noise(rng, n)) * gain(f), n)
    return y / _rms(y)


def _colour(rng: np.random.Generator, n: int, sr: int, alpha: float) -> np.ndarray:
    """1/f^alpha noise: 0 white, 1 pink, 2 brown."""
    return _shaped(rng, n, sr, lambda f: f ** (-alpha / 2))


def _band(rng: np.random.Generator, n: int, sr: int, fc: float, octaves: float) -> np.ndarray:
    """Noise with a log-Gaussian band around fc, `octaves` standard deviation wide."""
    return _shaped(rng, n, sr, lambda f: np.exp(-0.5 * (np.log2(f / fc) / octaves) ** 2))


def _slow(rng: np.random.Generator, n: int, sr: int, rate: float) -> np.ndarray:
    """Smooth random envelope in [0, 1] with control points every 1/rate seconds."""
    k = int(n / sr * rate) + 2
    return np.interp(np.linspace(0, k - 1, n), np.arange(k), rng.random(k))


def _tone(freq: np.ndarray, sr: int, harmonics: Sequence[float], phase: float = 0.0) -> np.ndarray:
    """Harmonic tone along an instantaneous-frequency track; partials near Nyquist are dropped."""
    ph = 2 * np.pi * np.cumsum(freq) / sr + phase
    top = float(np.max(freq))
    return sum((a * np.sin(k * ph) for k, a in enumerate(harmonics, 1) if k * top < 0.45 * sr), np.zeros(len(ph)))


def _onsets(rng: np.random.Generator, n: int, sr: int, rate: float, at_least: int = 1) -> np.ndarray:
    """Poisson event onsets (samples); at_least keeps short clips from missing the class's events."""
    return np.sort(rng.integers(0, n, size=max(at_least, int(rng.poisson(rate * n / sr)))))


def _add(buf: np.ndarray, event: np.ndarray, at: int) -> None:
    """Adds an event into buf at sample `at`, truncated at the end."""
    m = min(len(event), len(buf) - int(at))
    if m > 0:
        buf[at:at + m] += event[:m]


def _decay(rng: np.random.Generator, sr: int, fc: float, octaves: float, tau: float, length: float) -> np.ndarray:
    """Exponentially decaying band-noise burst: clacks, clicks, footsteps."""
    m = max(2, int(length * sr))
    return _band(rng, m, sr, fc, octaves) * np.exp(-np.arange(m) / (tau * sr))


def _reverb(rng: np.random.Generator, x: np.ndarray, sr: int, rt60: float, wet: float) -> np.ndarray:
    """Dry plus exponentially decaying noise-tail reverberation (wet re dry RMS)."""
    m = max(2, int(min(rt60, 1.0) * sr))
    tail = signal.fftconvolve(x, _noise(rng, m) * np.exp(-6.9 * np.arange(m) / (rt60 * sr)))[:len(x)]
    return x / _rms(x) + wet * tail / _rms(tail)


def _mix(*parts: tuple[np.ndarray, float]) -> np.ndarray:
    """Sum of (signal, dB) parts, each normalised to unit RMS first (silent parts stay silent)."""
    return sum(s / _rms(s) * 10 ** (db / 20) for s, db in parts)


def _babble(rng: np.random.Generator, n: int, sr: int, talkers: int) -> np.ndarray:
    """Overlapping pseudo-speech: buzzy sources through random formants, one set per syllable."""
    out, t = np.zeros(n), np.arange(n) / sr
    for _ in range(talkers):
        f0 = rng.uniform(90, 240) * (1 + 0.06 * np.sin(2 * np.pi * rng.uniform(1, 4) * t + rng.uniform(0, 6.3)))
        src = signal.sawtooth(2 * np.pi * np.cumsum(f0) / sr + rng.uniform(0, 6.3)) + 0.3 * _noise(rng, n)
        start = -int(rng.integers(0, int(0.25 * sr) + 1))
        while start < n:  # one iteration per syllable (~0.2 s), not per sample
            m = max(2, int(rng.uniform(0.12, 0.3) * sr))
            a, b = max(start, 0), min(start + m, n)
            if b > a and rng.random() < 0.8:  # the rest are pauses: speech is modulated at 3-6 Hz
                seg = np.zeros(b - a)
                formants = (rng.uniform(300, 850), 120), (rng.uniform(900, 2400), 200), (rng.uniform(2400, 3300), 300)
                for fc, bw in formants:
                    r = np.exp(-np.pi * bw / sr)
                    seg += signal.lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * fc / sr), r * r], src[a:b])
                out[a:b] += np.sin(np.pi * (np.arange(a, b) - start) / m) ** 2 * seg
            start += m
    return out


# ---------------------------------------------------------------------------- scenes
# Each scene takes p, the generator of its recording location (static texture parameters:
# pitches, rates, room size), and rng, the clip's own generator (event times, levels).
def _airport(p: np.random.Generator, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Large hall: dense stationary babble, HVAC rumble, a three-note announcement chime."""
    hall = _reverb(rng, _babble(rng, n, sr, int(p.integers(6, 10))), sr, p.uniform(1.2, 2.0), 1.5)
    chime, notes = np.zeros(n), p.choice([523.25, 659.25, 783.99, 1046.5], size=3)
    at, gap = int(rng.integers(0, max(1, n // 2))), int(rng.uniform(0.2, 0.3) * sr)
    for k, f in enumerate(notes):
        m = max(1, n - at - k * gap)
        _add(chime, _tone(np.full(m, f), sr, (1, 0.4, 0.2)) * np.exp(-np.arange(m) / (0.5 * sr)), at + k * gap)
    chime = _reverb(rng, chime, sr, 1.5, 1.0) if chime.any() else chime
    return _mix((hall, 0), (_colour(rng, n, sr, 1.5), p.uniform(-10, -4)), (chime, rng.uniform(-6, 0)))


def _bus(p: np.random.Generator, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Diesel engine harmonics below 400 Hz, cabin boom, high rattles, sometimes a brake squeal."""
    f0 = p.uniform(22, 35) * (0.95 + 0.1 * _slow(rng, n, sr, 1.0))
    engine = _tone(f0, sr, [k ** -0.5 for k in range(1, 13)])
    rattle = np.zeros(n)
    for at in _onsets(rng, n, sr, p.uniform(6, 14)):
        _add(rattle, _decay(rng, sr, rng.uniform(3500, 6500), 0.4, 0.002, 0.01), at)
    squeal = np.zeros(n)
    if rng.random() < 0.4:
        m = int(rng.uniform(0.3, 0.6) * sr)
        f = rng.uniform(2500, 4500) * (1 + 0.01 * np.sin(2 * np.pi * 6 * np.arange(m) / sr))
        _add(squeal, _tone(f, sr, (1,)) * np.hanning(m), int(rng.integers(0, n)))
    return _mix((engine, 0), (_band(rng, n, sr, p.uniform(150, 350), 0.8), -4),
                (rattle, p.uniform(-16, -10)), (squeal, -10))


def _metro(p: np.random.Generator, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Motor hum harmonics gliding with speed, rail rumble, periodic double clacks of rail joints."""
    t = np.arange(n) / n
    hum = _tone(p.uniform(90, 180) * (1 + rng.uniform(-0.15, 0.15) * t), sr, (1, 0.7, 0.5, 0.6, 0.3, 0.4, 0.2, 0.2))
    clacks, period, gap = np.zeros(n), p.uniform(0.22, 0.45) * sr, p.uniform(0.05, 0.09) * sr
    for at in np.arange(rng.uniform(0, period), n, period):
        for off in (0.0, gap):  # front and rear bogie cross the joint
            _add(clacks, _decay(rng, sr, rng.uniform(1500, 3000), 0.7, 0.006, 0.03), int(at + off))
    return _mix((hum, 0), (_colour(rng, n, sr, 1.5), -3), (clacks, p.uniform(-4, 0)))


def _park(p: np.random.Generator, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Gusty low wind, birdsong chirps at 2-6 kHz, faint leaf rustle."""
    wind = _band(rng, n, sr, p.uniform(80, 300), 1.2) * (0.2 + _slow(rng, n, sr, 1.5)) ** 2
    birds, species = np.zeros(n), p.uniform(2500, 5000)
    for at in _onsets(rng, n, sr, p.uniform(4, 10)):
        m = int(rng.uniform(0.04, 0.15) * sr)
        sweep = np.linspace(1, rng.uniform(0.6, 1.4), m) * (1 + 0.05 * np.sin(2 * np.pi * 30 * np.arange(m) / sr))
        _add(birds, _tone(species * rng.uniform(0.8, 1.25) * sweep, sr, (1, 0.2)) * np.hanning(m)
             * rng.uniform(0.3, 1.0), at)
    return _mix((wind, p.uniform(-6, 0)), (birds, 0), (_band(rng, n, sr, 5000, 1.0), -18))


def _shopping_mall(p: np.random.Generator, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Reverberant hall of a few talkers, background music chords and footsteps."""
    music, hop = np.zeros(n), max(1, int(p.uniform(0.25, 0.5) * sr))
    root = p.uniform(196, 392)
    for at in range(-int(rng.integers(0, hop)), n, hop):
        m = hop if at >= 0 else hop + at
        chord = root * 2 ** (rng.choice([0, 2, 4, 5, 7, 9, 12], size=3) / 12)
        notes = sum(_tone(np.full(m, f), sr, [k ** -2.0 for k in range(1, 7)]) for f in chord)
        _add(music, notes * np.exp(-np.arange(m) / (0.3 * sr)), max(at, 0))
    steps = np.zeros(n)
    for _ in range(int(rng.integers(1, 4))):
        period = rng.uniform(0.45, 0.6) * sr
        for at in np.arange(rng.uniform(0, period), n, period):
            _add(steps, _decay(rng, sr, rng.uniform(150, 400), 1.0, 0.01, 0.05), int(at))
    dry = _mix((_babble(rng, n, sr, int(p.integers(3, 6))), 0), (music, p.uniform(-6, -2)), (steps, -6))
    return _reverb(rng, dry, sr, p.uniform(0.6, 1.0), 1.0)


def _street_traffic(p: np.random.Generator, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Low engine rumble, passing cars (tyre noise and Doppler-swept engines), horns."""
    t = np.arange(n) / sr
    idle = _tone(np.full(n, p.uniform(35, 60)), sr, (1, 0.6, 0.4, 0.3, 0.2, 0.1))
    cars = np.zeros(n)
    for at in _onsets(rng, n, sr, 1.5):
        tc, w = at / sr, rng.uniform(0.15, 0.4)
        env = np.exp(-0.5 * ((t - tc) / w) ** 2)
        doppler = rng.uniform(80, 160) * (1 - rng.uniform(0.05, 0.1) * np.tanh((t - tc) / (w / 3)))
        cars += env * (_band(rng, n, sr, rng.uniform(600, 1200), 1.2) + 0.7 * _tone(doppler, sr, (1, 0.5, 0.3)))
    horn = np.zeros(n)
    for at in _onsets(rng, n, sr, 0.6, at_least=0):
        m = int(rng.uniform(0.15, 0.5) * sr)
        _add(horn, _tone(np.full(m, rng.uniform(380, 480)), sr, (1, 0.8, 0.6, 0.4)) * np.hanning(m), at)
    return _mix((_colour(rng, n, sr, 2.0), 0), (idle, -6), (cars, p.uniform(-3, 3)), (horn, rng.uniform(-6, 0)))


_SCENES: dict[str, Callable[[np.random.Generator, np.random.Generator, int, int], np.ndarray]] = {
    "airport": _airport, "bus": _bus, "metro": _metro, "park": _park,
    "shopping_mall": _shopping_mall, "street_traffic": _street_traffic,
}


# --------------------------------------------------------------------------- devices
@dataclass(frozen=True)
class _Device:
    """Fixed channel of one recording device."""

    hp: float  # high-pass corner (Hz), 4th-order slope
    lp: float  # low-pass corner (Hz), 4th-order slope
    eq_db: float  # spread of the device's random smooth EQ (a fixed draw per device)
    peaks: tuple[tuple[float, float], ...] = ()  # resonances (Hz, dB)
    rate: int = 0  # intermediate sample rate of a resampling stage (0: none)
    ratio: float = 1.0  # compressor ratio above the threshold
    drive: float = 0.0  # tanh soft-clip drive (0: none)
    noise_db: float = -70.0  # noise floor re the recorded signal RMS
    alpha: float = 1.0  # noise floor colour: 0 white, 1 pink, 2 brown


_DEVICES: dict[str, _Device] = {
    "a": _Device(hp=20, lp=7800, eq_db=1.0),  # reference binaural mic
    "b": _Device(hp=60, lp=7500, eq_db=3.0, ratio=1.5, noise_db=-60),
    "c": _Device(hp=100, lp=7000, eq_db=3.0, ratio=2.0, noise_db=-55, alpha=0.0),
    "s1": _Device(hp=150, lp=7200, eq_db=4.0, ratio=2.5, noise_db=-50),
    "s2": _Device(hp=80, lp=6500, eq_db=4.0, peaks=((2500, 4.0),), noise_db=-50, alpha=2.0),
    "s3": _Device(hp=120, lp=7000, eq_db=3.0, rate=12000, ratio=2.0, noise_db=-48),
    # Unseen: channels outside the seen range (band, dynamics, noise), see the module docstring.
    "s4": _Device(hp=300, lp=3400, eq_db=3.0, rate=8000, ratio=3.0, noise_db=-40),  # telephone
    "s5": _Device(hp=500, lp=7500, eq_db=3.0, peaks=((1200, 12.0), (3500, 10.0)), ratio=8.0, drive=4.0,
                  noise_db=-45),  # cheap, overdriven
    "s6": _Device(hp=40, lp=2000, eq_db=3.0, peaks=((250, 9.0),), noise_db=-28, alpha=0.0),  # in a pocket, hissy
}


def _key(text: str) -> int:
    """Stable 64-bit integer of a name (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


@functools.lru_cache(maxsize=64)
def _fir(device: str, sr: int) -> np.ndarray:
    """The device's fixed linear-phase impulse response, its random EQ seeded by its name only."""
    d = _DEVICES[device]
    rng = np.random.default_rng(_key(f"device:{device}"))
    f = np.linspace(0, sr / 2, 513)
    fs = np.maximum(f, 1.0)
    ctrl = np.geomspace(50, sr / 2, 9)
    db = np.interp(np.log(fs), np.log(ctrl), rng.normal(0, d.eq_db, len(ctrl)))
    for fc, gain in d.peaks:
        db += gain * np.exp(-0.5 * (np.log2(fs / fc) / 0.15) ** 2)
    lp = min(d.lp, 0.49 * sr)
    mag = 10 ** (db / 20) / np.sqrt((1 + (d.hp / fs) ** 8) * (1 + (fs / lp) ** 8))
    mag[0] = 0.0  # no device passes DC
    return signal.firwin2(_FIR_TAPS, f, mag, fs=sr)


def _compress(y: np.ndarray, ratio: float, thr: float, sr: int) -> np.ndarray:
    """Feed-forward compressor: gain (env/thr)^(1/ratio - 1) above thr, ~5 ms envelope."""
    a = np.exp(-1 / (0.005 * sr))
    env = signal.lfilter([1 - a], [1, -a], np.abs(y)) + 1e-12
    return y * np.minimum(1.0, (env / thr) ** (1 / ratio - 1))


# ------------------------------------------------------------------------ public API
def _check(name: str, valid: Sequence[str], what: str) -> None:
    """Raises ValueError with a did-you-mean hint for a name not in valid."""
    if name not in valid:
        close = difflib.get_close_matches(str(name).lower(), list(valid), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown {what} {name!r}{hint} (valid {what}s: {', '.join(valid)})")


def _scene(scene: str, p: np.random.Generator, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Clean clip of a scene at location generator p, peak-normalised float64."""
    if int(n) < 1:
        raise ValueError(f"n_samples must be at least 1, got {n}")
    x = _SCENES[scene](p, rng, int(n), sr)
    return x * (0.9 / (float(np.max(np.abs(x))) + 1e-12))


def synthesize_scene(scene: str, rng: np.random.Generator, n_samples: int, sr: int = SAMPLE_RATE) -> np.ndarray:
    """One clean clip of the named scene at a random location, float32 peak-normalised to 0.9."""
    _check(scene, CLASSES, "scene")
    return _scene(scene, rng, rng, n_samples, sr).astype(np.float32)


def apply_device(device: str, wave: np.ndarray, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Records wave through the named device's fixed channel; rng draws the noise and level, float32 in [-1, 1]."""
    _check(device, ALL_DEVICES, "device")
    d, x = _DEVICES[device], np.asarray(wave, dtype=np.float64)
    n = len(x)
    if n < 1:
        raise ValueError("wave must have at least one sample")
    y = signal.fftconvolve(x, _fir(device, sr))[_FIR_TAPS // 2:_FIR_TAPS // 2 + n]  # delay-compensated
    if d.rate:
        g = np.gcd(d.rate, sr)
        y = signal.resample_poly(signal.resample_poly(y, d.rate // g, sr // g), sr // g, d.rate // g)[:n]
    if d.ratio > 1:  # threshold relative to the input RMS, varied because recording levels vary
        y = _compress(y, d.ratio, _rms(y) * 10 ** (rng.uniform(-9, -3) / 20), sr)
    if d.drive:
        y = np.tanh(d.drive * y / (float(np.max(np.abs(y))) + 1e-12))
    y = y + _colour(rng, n, sr, d.alpha) * _rms(y) * 10 ** (d.noise_db / 20)
    y *= 10 ** (rng.uniform(-26, -18) / 20) / _rms(y)  # loudness must not be a cue
    peak = float(np.max(np.abs(y)))
    if peak > 0.99:
        y *= 0.99 / peak
    return y.astype(np.float32)


def _resolve(split: str, seed: int, n_per_class: int, duration_s: float,
             devices: Sequence[str] | None) -> tuple[str, ...]:
    """Validates generate_split arguments; returns the device tuple to use."""
    _check(split, SPLITS, "split")
    if isinstance(devices, str):
        raise ValueError("devices must be a sequence of device names, not a string")
    resolved = tuple(devices) if devices is not None else (ALL_DEVICES if split == "eval" else SEEN_DEVICES)
    for device in resolved:
        _check(device, ALL_DEVICES, "device")
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"duplicate devices in {resolved}")
    if int(seed) < 0 or int(n_per_class) < 0:
        raise ValueError("seed and n_per_class must be non-negative")
    if not (duration_s > 0 and round(duration_s * SAMPLE_RATE) >= 1):
        raise ValueError(f"duration_s must give at least one sample, got {duration_s}")
    return resolved


def generate_split(split: str, *, seed: int = 0, n_per_class: int, duration_s: float,
                   devices: Sequence[str] | None = None) -> ScenesSplit:
    """Generates n_per_class clips per class and device, deterministically from (seed, split)."""
    devices = _resolve(split, seed, n_per_class, duration_s, devices)
    root = np.random.SeedSequence([int(seed), _key(f"split:{split}")])
    n = int(round(duration_s * SAMPLE_RATE))
    # Streams are keyed by (1, class, index in ALL_DEVICES, clip), locations by (0, class,
    # location), so a clip never depends on the split size or on the other devices chosen.
    jobs = [(c, dev, i) for dev in devices for c in range(len(CLASSES)) for i in range(int(n_per_class))]
    waves = np.empty((len(jobs), n), dtype=np.float32)
    locations = []
    for row, (c, dev, i) in enumerate(tqdm(jobs, desc=f"scenes {split}", disable=None, leave=False)):
        rng = child_rng(root, 1, c, ALL_DEVICES.index(dev), i)
        loc = int(rng.integers(_N_LOCATIONS))
        locations.append(f"loc-{split}-{c * _N_LOCATIONS + loc:03d}")
        waves[row] = apply_device(dev, _scene(CLASSES[c], child_rng(root, 0, c, loc), rng, n, SAMPLE_RATE),
                                  rng, SAMPLE_RATE)
    return ScenesSplit(
        ids=[f"{CLASSES[c]}-{split}-{i:04d}-{dev}" for c, dev, i in jobs],
        waves=waves,
        labels=np.array([c for c, _, _ in jobs], dtype=np.int64),
        scenes=[CLASSES[c] for c, _, _ in jobs],
        devices=[dev for _, dev, _ in jobs],
        locations=locations,
    )


_COLUMNS = ("ids", "scenes", "devices", "locations")


def load_split(split: str, *, cache_dir: str | Path, seed: int = 0, n_per_class: int, duration_s: float,
               devices: Sequence[str] | None = None) -> ScenesSplit:
    """generate_split cached as an .npz keyed by a hash of all arguments."""
    devices = _resolve(split, seed, n_per_class, duration_s, devices)
    key = {"split": split, "seed": int(seed), "n_per_class": int(n_per_class), "duration_s": float(duration_s),
           "devices": list(devices), "sr": SAMPLE_RATE, "version": GENERATOR_VERSION}

    def make() -> dict[str, np.ndarray]:
        data = generate_split(split, seed=seed, n_per_class=n_per_class, duration_s=duration_s, devices=devices)
        return {"waves": data.waves, "labels": data.labels, **{k: np.array(getattr(data, k), dtype=str) for k in _COLUMNS}}

    arrays = cached_split(cache_path(cache_dir, f"scenes_{split}", key), make,
                          int(n_per_class) * len(CLASSES) * len(devices), int(round(duration_s * SAMPLE_RATE)), "scenes")
    return ScenesSplit(waves=arrays["waves"], labels=arrays["labels"], **{k: arrays[k].tolist() for k in _COLUMNS})
