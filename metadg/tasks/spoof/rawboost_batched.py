"""Batched torch RawBoost (algorithms 1-8) on the training device, per-row seeded, same distributions as rawboost.py."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import fft as sfft

from metadg.tasks.spoof.rawboost import ALGOS, _SERIES, RawBoostConfig

# Working-set cap of one FFT chunk: rows are processed in slices so that a batch of
# 96 x 64,600 with five orders stays far below 1 GB whatever the batch size.
_CHUNK_BYTES = 1 << 28
# On a CPU, small chunks (a few rows) keep the working set in cache and under glibc's mmap
# threshold, so buffers are reused instead of page-faulted afresh: 4 MiB per padded buffer
# was ~1.3x faster per clip than 16 MiB and ~1.7x faster than 64 MiB on a 2-core EPYC.
_CPU_BUFFER_BYTES = 1 << 22
# Bytes per (row, order, FFT sample) alive at once in a chunk: the padded float32 buffer (4),
# a complex spectrum (4), the other spectrum or |H|^2 temporaries (4), with slack.
_BYTES_PER_BIN = 16
_MIN_NFFT = 4096  # the NumPy version's finest-grid floor for the peak-gain normalisation


def host_rng(seed: int) -> np.random.Generator:
    """The host generator of a row seed: it draws that row's small parameters, in the NumPy version's order."""
    # spawn_key (0,) vs (1,) keeps the host and device streams apart, and both apart
    # from a plain default_rng(seed) a caller might already use for the crop.
    return np.random.default_rng(np.random.SeedSequence(_check_seed(seed), spawn_key=(0,)))


def device_seed(seed: int) -> int:
    """The torch.Generator seed of a row seed (its noise, impulse positions and impulse factors)."""
    words = np.random.SeedSequence(_check_seed(seed), spawn_key=(1,)).generate_state(2, np.uint32)
    return (int(words[0]) << 32 | int(words[1])) & (2**63 - 1)


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or isinstance(seed, float):
        raise TypeError(f"RawBoost seeds must be integers, got {seed!r}")
    try:
        s = operator.index(seed)
    except TypeError:
        raise TypeError(f"RawBoost seeds must be integers, got {type(seed).__name__} {seed!r}") from None
    if not 0 <= s < 2**63:
        raise ValueError(f"RawBoost seeds must satisfy 0 <= seed < 2**63, got {s}")
    return s


@dataclass
class _Banks:
    """Notch-bank parameters of R rows x K banks x nb bands, as `_notch_banks` draws them."""

    f1: np.ndarray  # (R, K, nb) lower band edge, Hz
    f2: np.ndarray  # (R, K, nb) upper band edge, Hz
    taps: np.ndarray  # (R, K, nb) odd FIR lengths

    @property
    def lengths(self) -> np.ndarray:
        """(R, K) length of each cascade: sum of FIR lengths minus (nb - 1)."""
        return self.taps.sum(-1) - self.taps.shape[-1] + 1


def _draw_banks(rng: np.random.Generator, cfg: RawBoostConfig, sr: int, count: int) -> tuple[np.ndarray, ...]:
    # Same calls, shapes and order as `_notch_banks`, so the host stream stays in step with it.
    shape = (count, cfg.num_bands)
    fc = rng.uniform(cfg.min_freq_hz, cfg.max_freq_hz, shape)
    bw = rng.uniform(cfg.min_bandwidth_hz, cfg.max_bandwidth_hz, shape)
    taps = np.floor(rng.uniform(cfg.min_fir_order, cfg.max_fir_order, shape)).astype(np.int64) | 1
    nyq = sr / 2
    f1 = np.clip(fc - bw / 2, 1e-3, nyq - 2e-3)
    f2 = np.clip(fc + bw / 2, f1 + 1e-3, nyq - 1e-3)
    return f1, f2, taps


def _stack_banks(drawn: list[tuple[np.ndarray, ...]]) -> _Banks:
    return _Banks(*(np.stack([d[i] for d in drawn]) for i in range(3)))


class BatchedRawBoost:
    """RawBoost on a (B, T) batch on its own device; row i depends only on (waves[i], seeds[i], device type)."""

    def __init__(self, cfg: RawBoostConfig, sr: int = 16000) -> None:
        """Fix the recipe (algorithm from `cfg.algo`, 1-8) and the sample rate."""
        algo = cfg.algo
        if isinstance(algo, bool) or not isinstance(algo, int) or algo not in ALGOS or algo == 0:
            valid = ", ".join(f"{k} ({v})" for k, v in ALGOS.items() if k)
            raise ValueError(f"BatchedRawBoost needs rawboost.algo in 1-8, got algo={algo!r} "
                             f"(0 is off: leave the augmentation out instead); valid: {valid}")
        if sr <= 0:
            raise ValueError(f"BatchedRawBoost needs a positive sample rate, got sr={sr}")
        self.cfg, self.algo, self.sr = cfg, algo, int(sr)
        # Longest FIR any draw can give (floor(U(lo, hi)) | 1 <= int(hi) | 1) and the longest
        # cascade: fixed by the recipe, so the bank design never depends on the batch.
        self._tmax = int(cfg.max_fir_order) | 1
        self._lmax = cfg.num_bands * (self._tmax - 1) + 1
        self._nsmall = 1 << (self._lmax - 1).bit_length()

    def __repr__(self) -> str:
        return f"BatchedRawBoost(algo={self.algo}, sr={self.sr})"

    def __call__(self, waves: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """Augment every row of `waves` (B, T) with randomness drawn only from its own seed; float32, same device."""
        x = self._check(waves, seeds)
        if x.shape[0] == 0:
            return x.clone()
        seeds = [_check_seed(s) for s in seeds]
        rngs = [host_rng(s) for s in seeds]
        gens: list[torch.Generator] = []
        if self.algo != 1:  # LnL alone needs no device randomness
            gens = [torch.Generator(device=x.device).manual_seed(device_seed(s)) for s in seeds]
        with torch.no_grad():
            if self.algo == 8:
                return _norm_peak(self._lnl(x, rngs) + self._isd(x, rngs, gens))
            y = x
            for step in _SERIES[self.algo]:
                if step == 1:
                    y = self._lnl(y, rngs)
                elif step == 2:
                    y = self._isd(y, rngs, gens)
                else:
                    y = self._ssi(y, rngs, gens)
            return y

    # ------------------------------------------------------------------ checks

    @staticmethod
    def _check(waves: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        if not isinstance(waves, torch.Tensor):
            raise TypeError(f"BatchedRawBoost expects a torch.Tensor of shape (B, T), got {type(waves).__name__}")
        if waves.ndim != 2:
            raise ValueError(f"BatchedRawBoost expects a 2-D (batch, samples) tensor, got shape {tuple(waves.shape)}")
        if not waves.is_floating_point():
            raise TypeError(f"BatchedRawBoost expects a floating-point tensor, got dtype {waves.dtype}")
        if waves.shape[1] == 0:
            raise ValueError("BatchedRawBoost got rows with no samples (T = 0)")
        try:
            n_seeds = len(seeds)
        except TypeError:
            kind = type(seeds).__name__
            raise TypeError(f"BatchedRawBoost needs a sequence of one seed per row, got {kind}") from None
        if n_seeds != waves.shape[0]:
            raise ValueError(f"BatchedRawBoost got {n_seeds} seeds for a batch of {waves.shape[0]} rows")
        x = waves.detach().to(torch.float32).contiguous()  # ISD writes through a flat view
        if x.numel() and not bool(torch.isfinite(x).all()):
            bad = (~torch.isfinite(x)).any(1).nonzero().flatten().tolist()
            raise ValueError(f"BatchedRawBoost got NaN or infinite samples in rows {bad[:10]}")
        return x

    # ------------------------------------------------------------------ stages

    def _lnl(self, x: torch.Tensor, rngs: list[np.random.Generator]) -> torch.Tensor:
        """Algorithm 1 for every row: powers of x through fresh notch banks, summed, mean-removed, peak-limited."""
        cfg, k = self.cfg, self.cfg.num_orders
        orders = np.arange(1, k + 1)
        lo = np.where(orders == 1, cfg.min_gain_db, cfg.min_gain_db - cfg.min_nonlinear_bias_db)
        hi = np.where(orders == 1, cfg.max_gain_db, cfg.max_gain_db - cfg.max_nonlinear_bias_db)
        gains, drawn = [], []
        for rng in rngs:  # u first, then the banks: the order of lnl_convolutive
            u = rng.random(k)
            gains.append(lo + (hi - lo) * u)
            drawn.append(_draw_banks(rng, cfg, self.sr, k))
        y = self._bank_sum(x, _stack_banks(drawn), np.stack(gains), powers=k)
        return _norm_peak(y - y.mean(dim=1, keepdim=True))

    def _isd(self, x: torch.Tensor, rngs: list[np.random.Generator], gens: list[torch.Generator]) -> torch.Tensor:
        """Algorithm 2 for every row: n = int(T*beta/100) distinct samples get x + g*x*U*U; peak-limited."""
        t = x.shape[1]
        counts = [int(t * rng.uniform(0.0, self.cfg.max_impulse_percent) / 100.0) for rng in rngs]
        flat, factors = [], []
        for i, (g, n) in enumerate(zip(gens, counts)):
            # The head of a uniform random permutation is a uniform n-subset without replacement;
            # one O(T) draw, where sorting random keys cost ~5x more on a CPU.
            flat.append(torch.randperm(t, generator=g, device=x.device)[:n] + i * t)
            factors.append(torch.rand(2, n, generator=g, device=x.device))
        y = x.clone()
        if sum(counts) == 0:
            return _norm_peak(y)
        idx = torch.cat(flat)
        u = torch.cat(factors, dim=1)
        f_r = (2.0 * u[0] - 1.0) * (2.0 * u[1] - 1.0)
        xs = x.reshape(-1)[idx]
        y.view(-1)[idx] = xs + self.cfg.impulse_gain * xs * f_r  # positions are distinct: no write races
        return _norm_peak(y)

    def _ssi(self, x: torch.Tensor, rngs: list[np.random.Generator], gens: list[torch.Generator]) -> torch.Tensor:
        """Algorithm 3 for every row: notch-filtered white noise added at an SNR drawn in [SNRmin, SNRmax] dB."""
        t = x.shape[1]
        white = torch.stack([torch.randn(t, generator=g, device=x.device) for g in gens])
        drawn, snr = [], []
        for rng in rngs:  # bank, then SNR: the order of ssi_additive once the noise is drawn
            drawn.append(_draw_banks(rng, self.cfg, self.sr, 1))
            snr.append(rng.uniform(self.cfg.min_snr_db, self.cfg.max_snr_db))
        # The bank gain is irrelevant: the noise is rescaled to the drawn SNR below.
        noise = self._bank_sum(white[:, None, :], _stack_banks(drawn), np.zeros((len(rngs), 1)))
        nn = noise.double().square().sum(1).sqrt()
        target = x.double().square().sum(1).sqrt() / torch.tensor(10.0 ** (np.array(snr) / 20.0), device=x.device)
        scale = torch.where(nn > 0, target / torch.where(nn > 0, nn, 1.0), 0.0)
        return x + scale.to(x.dtype)[:, None] * noise

    # ------------------------------------------------------------------ filtering

    def _design(self, banks: _Banks, device: torch.device) -> torch.Tensor:
        """(R, K, Lmax) float64 cascades, each centred at index (Lmax - 1) / 2, zero outside its own length."""
        taps = torch.as_tensor(banks.taps, device=device, dtype=torch.float64)[..., None]
        n = torch.arange(self._tmax, device=device, dtype=torch.float64)
        m = n - (taps - 1) / 2
        lo = torch.as_tensor(banks.f1 / (self.sr / 2), device=device)[..., None]
        hi = torch.as_tensor(banks.f2 / (self.sr / 2), device=device)[..., None]
        # bandstop_firs' formula: Hamming-window band-stop, unscaled (the peak gain is set later).
        h = torch.sinc(m) - hi * torch.sinc(hi * m) + lo * torch.sinc(lo * m)
        h = h * (0.54 - 0.46 * torch.cos(2 * np.pi * n / (taps - 1)))
        h = torch.where(n < taps, h, 0.0)
        # Cascade = product of the bands' spectra on a grid longer than any cascade: an exact
        # linear convolution, one small batched FFT instead of R*K*nb np.convolve calls.
        spec = torch.fft.rfft(h, self._nsmall).prod(dim=2)
        cascade = torch.fft.irfft(spec, self._nsmall)[..., : self._lmax]
        length = torch.as_tensor(banks.lengths, device=device)[..., None]
        # Centre every cascade in the common odd length so all share one group delay.
        j = torch.arange(self._lmax, device=device)
        src = j - (self._lmax - length) // 2
        ok = (src >= 0) & (src < length)
        return torch.where(ok, cascade.gather(-1, src.clamp(0, self._lmax - 1)), 0.0)

    def _bank_sum(self, x: torch.Tensor, banks: _Banks, gains_db: np.ndarray, powers: int = 0) -> torch.Tensor:
        """(R, T): per row, sum over k of signal_k through bank k scaled to peak |H| = gains_db[k] dB.

        With `powers` = K the signals are x, x^2, ..., x^K of `x` (R, T); otherwise `x` is (R, K, T).
        """
        r, t = x.shape[0], x.shape[-1]
        k = gains_db.shape[1]
        centred = self._design(banks, x.device).to(torch.float32)
        gain = torch.as_tensor(10.0 ** (gains_db / 20.0), device=x.device)
        m_row = banks.lengths.max(axis=1)
        # NumPy's own grid per row: the peak |H| is sampled where rawboost.py samples it, so a
        # row matches it whatever else is in the batch; rows sharing a grid are filtered together.
        nffts = [sfft.next_fast_len(max(t + int(m) - 1, _MIN_NFFT), real=True) for m in m_row]
        out = torch.empty(r, t, device=x.device, dtype=torch.float32)
        c = (self._lmax - 1) // 2
        for nfft in sorted(set(nffts)):
            rows = [i for i, v in enumerate(nffts) if v == nfft]
            budget = _CHUNK_BYTES // _BYTES_PER_BIN if x.is_cuda else _CPU_BUFFER_BYTES // 4
            step = max(1, budget // (k * nfft))
            for start in range(0, len(rows), step):
                part = rows[start:start + step]
                sel = torch.tensor(part, device=x.device)
                # Trim to this chunk's longest cascade: every row here has nfft >= T + m - 1
                # for it, so the linear convolution never wraps around.
                h = (int(m_row[part].max()) - 1) // 2
                # Zero-padded buffers, not rfft(n=...): torch's implicit padding made each FFT ~2x slower.
                buf = x.new_zeros(len(part), k, nfft)
                buf[..., : 2 * h + 1] = centred.index_select(0, sel)[..., c - h: c + h + 1]
                spec = torch.fft.rfft(buf)
                ri = torch.view_as_real(spec)
                # max |H|^2 then one sqrt: same argmax as max |H|, ~4x cheaper than complex abs().
                peak = torch.addcmul(ri[..., 0] * ri[..., 0], ri[..., 1], ri[..., 1]).amax(dim=-1).double().sqrt()
                scale = gain.index_select(0, sel) / torch.where(peak > 0, peak, 1.0)
                spec.mul_(scale.to(torch.float32)[..., None])
                buf.zero_()
                _signals(x.index_select(0, sel), powers, buf[..., :t])
                spec.mul_(torch.fft.rfft(buf))
                del buf
                full = torch.fft.irfft(spec.sum(dim=1), nfft)
                out.index_copy_(0, sel, full[:, h: h + t])
        return out


def _signals(x: torch.Tensor, powers: int, out: torch.Tensor) -> None:
    """Write x (r, T) as powers x, x^2, ..., x^K into out (r, K, T); with powers = 0, x is already (r, K, T)."""
    if not powers:
        out.copy_(x)
        return
    out[:, 0] = x
    for i in range(1, powers):  # repeated products, as lnl_convolutive, not pow()
        torch.mul(out[:, i - 1], x, out=out[:, i])


def _norm_peak(y: torch.Tensor) -> torch.Tensor:
    """Per row, scale down to peak 1 only where the peak exceeds 1 (rawboost._norm_peak)."""
    peak = y.abs().amax(dim=1, keepdim=True)
    return y / torch.where(peak > 1.0, peak, 1.0)
