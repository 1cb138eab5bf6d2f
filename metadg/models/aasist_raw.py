"""AASIST on raw waveforms (Jung et al. 2022), trained from scratch: the backbone `aasist_raw`.

The architecture of clovaai/aasist `models/AASIST.py`: a fixed sinc band-pass front-end on
mel-spaced bands, |·| and a (3, 3) max-pool, six 2-D residual blocks each followed by a (1, 3)
max-pool, spectral and temporal graph attention over the encoder's max over time / frequency,
two heterogeneous inference paths with master nodes, graph pooling and the max/mean readout.
The graph layers are the ones of the SSL-AASIST head (`metadg.models.aasist`), shared.

The backbone returns the (B, 1, 5 · gat_dims[1]) readout as a single "frame"; the published
output layer (dropout 0.5, then Linear) is the `linear` head with `dropout: 0.5`, so
`{backbone: {name: aasist_raw}, head: {name: linear, dropout: 0.5}}` is the published model,
297,866 parameters for AASIST and 85,306 for AASIST-L.

Differences from the reference: the reference's heterogeneous layers and pools all use index 2
of `temperatures` and `pool_ratios` (index 3 is unused); here index 2 serves both as well. Inputs
shorter than the encoder's receptive field (first_conv + 3^7 samples) are zero-padded to it,
where the reference would fail. Batches of unequal lengths are zero-padded like the reference's
fixed crops: the model has no padding mask. The training-time frequency masking of the
reference's front-end (`Freq_aug`, off in its configs) is not implemented.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from metadg.config import StrictModel
from metadg.models.aasist import GraphAttention, GraphPool, HeteroBranch, ResidualBlock, graph_readout
from metadg.registry import MODELS

#: the published configurations (clovaai/aasist config/AASIST.conf and AASIST-L.conf)
PRESETS: dict[str, dict[str, object]] = {
    "AASIST": {"first_conv": 128, "filts": [70, [1, 32], [32, 32], [32, 64], [64, 64]], "gat_dims": [64, 32],
               "pool_ratios": [0.5, 0.7, 0.5, 0.5], "temperatures": [2.0, 2.0, 100.0, 100.0]},
    "AASIST-L": {"first_conv": 128, "filts": [70, [1, 32], [32, 32], [32, 24], [24, 24]], "gat_dims": [24, 32],
                 "pool_ratios": [0.4, 0.5, 0.7, 0.5], "temperatures": [2.0, 2.0, 100.0, 100.0]},
}


class AASISTRawConfig(StrictModel):
    """A published preset, with any of its shape settings overridden."""

    preset: Literal["AASIST", "AASIST-L"] = Field("AASIST", description="published configuration to start from")
    first_conv: int | None = Field(None, ge=3, le=4096, description="sinc filter length in samples (made odd)")
    filts: list | None = Field(None, description="[sinc bands, [1, c1], [c1, c2], [c2, c3], [c3, c4]]; last repeats 3x")
    gat_dims: list[int] | None = Field(None, description="[GAT dim, hetero dim]")
    pool_ratios: list[float] | None = Field(None, description="kept-node ratios: spectral, temporal, hetero (index 2)")
    temperatures: list[float] | None = Field(None, description="attention temperatures: GAT-S, GAT-T, hetero (index 2)")
    sample_rate: int = Field(16000, ge=8000, description="sample rate the sinc bands are laid out for")

    @model_validator(mode="after")
    def _shapes(self) -> AASISTRawConfig:
        f = self.resolved("filts")
        if (len(f) != 5 or not isinstance(f[0], int) or f[0] < 3
                or any(not isinstance(p, list) or len(p) != 2 or min(p) < 1 for p in f[1:]) or f[1][0] != 1
                or any(a[1] != b[0] for a, b in zip(f[1:], f[2:]))):
            raise ValueError(f"filts: [bands ≥ 3, [1, c1], [c1, c2], [c2, c3], [c3, c3]] with chained channels, got {f}")
        if len(self.resolved("gat_dims")) != 2 or len(self.resolved("pool_ratios")) != 4 \
                or len(self.resolved("temperatures")) != 4:
            raise ValueError("gat_dims: 2 values; pool_ratios and temperatures: 4 values each")
        return self

    def resolved(self, key: str) -> object:
        """The setting `key`: the override when given, else the preset's."""
        value = getattr(self, key)
        return PRESETS[self.preset][key] if value is None else value


class SincFilters(nn.Module):
    """Fixed band-pass filters between mel-spaced edges (Hamming-windowed ideal band-pass; not trained)."""

    def __init__(self, bands: int, kernel: int, sample_rate: int) -> None:
        super().__init__()
        kernel += 1 - kernel % 2  # odd: a symmetric filter
        to_mel = lambda hz: 2595 * np.log10(1 + hz / 700)  # noqa: E731
        to_hz = lambda mel: 700 * (10 ** (mel / 2595) - 1)  # noqa: E731
        # The edges span the mel range of a 512-point FFT's bins, as in the reference.
        grid = to_mel((sample_rate // 2) * np.linspace(0, 1, 257))
        edges = to_hz(np.linspace(grid.min(), grid.max(), bands + 1))
        t = np.arange(-(kernel - 1) / 2, (kernel - 1) / 2 + 1)
        window = np.hamming(kernel)

        def low_pass(fc: float) -> np.ndarray:
            return 2 * fc / sample_rate * np.sinc(2 * fc * t / sample_rate)

        ideal = np.stack([low_pass(hi) - low_pass(lo) for lo, hi in zip(edges[:-1], edges[1:])])
        # Window × ideal response in float32, as the reference multiplies them; a buffer follows .to() but is
        # not saved (nothing here trains).
        bank = torch.tensor(window, dtype=torch.float32) * torch.tensor(ideal, dtype=torch.float32)
        self.register_buffer("filters", bank.unsqueeze(1), persistent=False)
        self.kernel = kernel

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, T) → (B, bands, T − kernel + 1)."""
        return F.conv1d(wave.unsqueeze(1), self.filters.to(wave.dtype))


@MODELS.register("aasist_raw")
class AASISTRaw(nn.Module):
    """AASIST / AASIST-L on raw 16 kHz waveforms; outputs the graph readout as one (B, 1, D) frame."""

    Config = AASISTRawConfig

    #: the layers `adapter: {name: lora}` adapts by default (module names or dotted suffixes): the encoder's
    #: convolutions and the projections of the graph-attention layers. Not the sinc bank (fixed, no weight),
    #: BatchNorm, or the pools' one-output scorers (`proj`, targetable by name: rank-r factors there would
    #: outnumber the layer's own weights).
    lora_targets: tuple[str, ...] = (
        "conv1", "conv2", "skip", "att_proj", "proj_with_att", "proj_without_att", "proj_type1", "proj_type2",
        "att_proj_master", "proj_with_att_master", "proj_without_att_master",
    )

    def __init__(self, cfg: AASISTRawConfig) -> None:
        super().__init__()
        self.cfg = cfg
        filts, (d0, d1) = cfg.resolved("filts"), cfg.resolved("gat_dims")
        ratios, temps = cfg.resolved("pool_ratios"), cfg.resolved("temperatures")
        self.sinc = SincFilters(filts[0], cfg.resolved("first_conv"), cfg.sample_rate)
        self.first_bn = nn.BatchNorm2d(1)
        blocks = [*filts[1:], filts[-1], filts[-1]]  # the last block three times: six in all
        self.encoder = nn.ModuleList(ResidualBlock(a, b, first=i == 0, preact=False) for i, (a, b) in enumerate(blocks))
        channels = filts[-1][1]
        self.pos_s = nn.Parameter(torch.randn(1, filts[0] // 3, channels))
        self.gat_s = GraphAttention(channels, d0, temps[0], 0.2)
        self.gat_t = GraphAttention(channels, d0, temps[1], 0.2)
        self.pool_s = GraphPool(ratios[0], d0, 0.3)
        self.pool_t = GraphPool(ratios[1], d0, 0.3)
        hetero = ((d0, d1), (temps[2], temps[2]), (ratios[2], ratios[2]), 0.2, 0.3)
        self.branches = nn.ModuleList([HeteroBranch(*hetero), HeteroBranch(*hetero)])
        self.drop_way = nn.Dropout(0.2)
        self.out_dim = 5 * d1
        # (3, 3) pool, then a (1, 3) pool after each of the six blocks: 3^7 samples per time step.
        self.min_samples = self.sinc.kernel - 1 + 3 ** (1 + len(blocks))

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        """(B, T) waveforms → ((B, 1, out_dim) readout, no frame mask)."""
        if wave.shape[1] < self.min_samples:
            wave = F.pad(wave, (0, self.min_samples - wave.shape[1]))
        x = self.sinc(wave).unsqueeze(1)  # (B, 1, bands, T')
        x = F.selu(self.first_bn(F.max_pool2d(x.abs(), 3)))
        for block in self.encoder:
            x = F.max_pool2d(block(x), (1, 3))
        e_s = x.abs().amax(3).transpose(1, 2) + self.pos_s  # spectral nodes: max over time
        e_t = x.abs().amax(2).transpose(1, 2)  # temporal nodes: max over frequency
        s = self.pool_s(self.gat_s(e_s))
        t = self.pool_t(self.gat_t(e_t))
        return graph_readout(self.branches, self.drop_way, t, s).unsqueeze(1), None
