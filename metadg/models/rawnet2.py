"""RawNet2 for anti-spoofing (Tak et al. 2021, the ASVspoof 2021 baseline), trained from scratch: `rawnet2`.

The configuration clovaai/aasist ships as `config/RawNet2_baseline.conf`: a fixed sinc front-end
(20 mel-spaced bands, 1024-tap filters made odd), |·| and a max-pool, residual blocks of 1-D
convolutions each followed by filter-wise feature-map scaling (x ← x·s + s with s the sigmoid of
a linear map of the time-averaged features), a 3-layer GRU of 1,024 units read at its last step,
and a 1,024-unit fully connected layer. The backbone returns that layer's output as one (B, 1, 1024)
"frame"; the published output layer is the `linear` head: 17,621,410 parameters in all.

Differences from the reference: no final log-softmax (the logits differ from it by a per-row
constant, so the loss and the score are the same); inputs shorter than the receptive field are
zero-padded to it; batches of unequal lengths are zero-padded (the GRU's last step then reads
padding, as it would for a zero-padded crop in the reference).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from metadg.config import StrictModel
from metadg.models.aasist_raw import SincFilters
from metadg.registry import MODELS


class RawNet2Config(StrictModel):
    """RawNet2 shape; defaults are RawNet2_baseline.conf."""

    first_conv: int = Field(1024, ge=3, le=4096, description="sinc filter length in samples (made odd)")
    filts: list = Field([20, [20, 20], [20, 128], [128, 128]],
                        description="[sinc bands, [c0, c1] of the first group, [c1, c2] of the second, [c2, c2]]")
    blocks: list[int] = Field([2, 4], description="residual blocks in the first and the second group")
    gru_node: int = Field(1024, ge=1, le=8192, description="GRU hidden units")
    nb_gru_layer: int = Field(3, ge=1, le=16, description="GRU layers")
    nb_fc_node: int = Field(1024, ge=1, le=8192, description="units of the fully connected layer before the output")
    sample_rate: int = Field(16000, ge=8000, description="sample rate the sinc bands are laid out for")

    @model_validator(mode="after")
    def _shapes(self) -> RawNet2Config:
        f = self.filts
        if (len(f) != 4 or not isinstance(f[0], int) or any(not isinstance(p, list) or len(p) != 2 for p in f[1:])
                or f[1][0] != f[0] or f[2][0] != f[1][1] or f[3] != [f[2][1], f[2][1]]):
            raise ValueError(f"filts: [bands, [bands, c1], [c1, c2], [c2, c2]], got {f}")
        if len(self.blocks) != 2 or min(self.blocks) < 1:
            raise ValueError("blocks: two positive counts")
        return self


class ResBlock1d(nn.Module):
    """Residual block of 1-D convolutions with LeakyReLU(0.3), then a max-pool of 3."""

    def __init__(self, c_in: int, c_out: int, first: bool) -> None:
        super().__init__()
        # The reference computes BN + LeakyReLU of the input in non-first blocks and discards it; the layer is
        # kept so checkpoints (and the parameter count) match.
        self.bn1 = None if first else nn.BatchNorm1d(c_in)
        self.conv1 = nn.Conv1d(c_in, c_out, 3, padding=1)
        self.bn2 = nn.BatchNorm1d(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, T) → (B, C_out, T // 3)."""
        out = self.conv2(F.leaky_relu(self.bn2(self.conv1(x)), 0.3))
        return F.max_pool1d(out + (x if self.skip is None else self.skip(x)), 3)


class FilterScaling(nn.Module):
    """Filter-wise feature-map scaling: x · s + s, s = sigmoid(W · mean_t(x) + b)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) → (B, C, T)."""
        s = torch.sigmoid(self.fc(x.mean(-1))).unsqueeze(-1)
        return x * s + s


@MODELS.register("rawnet2")
class RawNet2(nn.Module):
    """RawNet2 on raw 16 kHz waveforms; outputs the fully connected layer as one (B, 1, nb_fc_node) frame."""

    Config = RawNet2Config

    #: the layers `adapter: {name: lora}` adapts by default (module names or dotted suffixes): the residual
    #: blocks' convolutions, the filter-wise scaling maps and the fully connected layer (`fc` names both).
    #: Not the sinc bank (fixed, no weight), the GRU (peft has no LoRA for recurrent layers) or BatchNorm.
    lora_targets: tuple[str, ...] = ("conv1", "conv2", "skip", "fc")

    def __init__(self, cfg: RawNet2Config) -> None:
        super().__init__()
        self.cfg = cfg
        bands, (c0, c1), (_, c2) = cfg.filts[0], cfg.filts[1], cfg.filts[2]
        self.sinc = SincFilters(bands, cfg.first_conv, cfg.sample_rate)
        self.first_bn = nn.BatchNorm1d(bands)
        shapes = [(c0, c1)] * cfg.blocks[0] + [(c1, c2)] + [(c2, c2)] * (cfg.blocks[1] - 1)
        self.blocks = nn.ModuleList(ResBlock1d(a, b, first=i == 0) for i, (a, b) in enumerate(shapes))
        self.scaling = nn.ModuleList(FilterScaling(b) for _, b in shapes)
        self.bn_before_gru = nn.BatchNorm1d(c2)
        self.gru = nn.GRU(c2, cfg.gru_node, cfg.nb_gru_layer, batch_first=True)
        self.fc = nn.Linear(cfg.gru_node, cfg.nb_fc_node)
        self.out_dim = cfg.nb_fc_node
        self.min_samples = self.sinc.kernel - 1 + 3 ** (1 + len(shapes))

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        """(B, T) waveforms → ((B, 1, nb_fc_node) features, no frame mask)."""
        if wave.shape[1] < self.min_samples:
            wave = F.pad(wave, (0, self.min_samples - wave.shape[1]))
        x = F.selu(self.first_bn(F.max_pool1d(self.sinc(wave).abs(), 3)))
        for block, scale in zip(self.blocks, self.scaling):
            x = scale(block(x))
        x = F.selu(self.bn_before_gru(x)).transpose(1, 2)  # (B, T, C)
        out, _ = self.gru(x)
        return self.fc(out[:, -1]).unsqueeze(1), None
