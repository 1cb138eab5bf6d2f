"""SSL-AASIST back-end (Tak et al. 2022): AASIST graph attention over SSL frame features.

Follows `model.py` of TakHemlata/SSL_Anti-spoofing (itself clovaai/aasist with the
sinc front-end replaced by a linear projection of wav2vec 2.0 features). At
in_dim 1024 and 2 classes it has the recipe's 447,242 parameters.

Differences from the reference, all without effect on the parameter count:
* Any number of frames works. The reference has no fixed time size either; its
  one fixed shape, the spectral position embedding (1, 42, 64), is tied to the
  projection dim (42 = 128 // 3), so we derive it from `proj_dim`. Inputs under
  3 frames (the first max-pool's window) are zero-padded to 3.
* `mask`: padded frames are zeroed after the projection and left out of the
  spectral attention pooling (softmax over time). Temporal graph nodes built
  from padded frames still exist, as in the reference, which always sees full
  repeat-padded 4 s crops; a padded batch therefore scores slightly differently
  from the same utterances unpadded, but never depends on the padded content.
* The reference passes the un-expanded (1, 1, D) master node and relies on
  broadcasting; we expand it to the batch (same values).
* `pool_ratios[3]` and `temperatures[3]` are unused in the reference (index 2
  serves all hetero layers/pools); we use index 3 for the second hetero layer
  and the temporal hetero pools. Identical at the recipe defaults.
* No in-place activations/dropout, so autograd (and second-order MLDG) is safe.
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from metadg.config import StrictModel
from metadg.registry import HEADS


class AASISTConfig(StrictModel):
    """Hyperparameters of the SSL-AASIST back-end; defaults are the published recipe."""

    proj_dim: int = Field(128, ge=3, description="linear projection of the SSL features (the 2-D 'image' height)")
    filters: list[list[int]] = Field(
        [[1, 32], [32, 32], [32, 64], [64, 64]],
        description="(in, out) channels of the residual blocks; the last entry repeats `last_block_repeats` times",
    )
    last_block_repeats: int = Field(3, ge=1, description="copies of the last residual block (recipe: 6 blocks in all)")
    att_hidden: int = Field(128, ge=1, description="hidden channels of the 1x1-conv attention for node pooling")
    gat_dims: list[int] = Field([64, 32], description="output dims of the GAT layers and of the hetero layers")
    pool_ratios: list[float] = Field(
        [0.5, 0.5, 0.5, 0.5], description="kept-node ratios: spectral, temporal, hetero spectral, hetero temporal"
    )
    temperatures: list[float] = Field(
        [2.0, 2.0, 100.0, 100.0], description="attention temperatures: GAT-S, GAT-T, first and second HtrgGAT"
    )
    gat_input_drop: float = Field(0.2, ge=0, lt=1, description="dropout on the nodes entering each (Htrg)GAT layer")
    pool_drop: float = Field(0.3, ge=0, lt=1, description="dropout before the graph-pool scoring projection")
    drop_way: float = Field(0.2, ge=0, lt=1, description="dropout on each branch's nodes before the max-combination")
    drop_out: float = Field(0.5, ge=0, lt=1, description="dropout before the output layer")
    residual_preact: bool = Field(
        False,
        description="apply BN+SELU before conv1 in non-first residual blocks; the reference computes and discards "
        "it (its bn1 parameters then get no gradient), so false matches the recipe",
    )

    @model_validator(mode="after")
    def _shapes(self) -> AASISTConfig:
        f = self.filters
        if not f or any(len(p) != 2 or min(p) < 1 for p in f) or f[0][0] != 1:
            raise ValueError("filters: non-empty list of positive [in, out] pairs, the first with in=1")
        if any(a[1] != b[0] for a, b in zip(f, f[1:])):
            raise ValueError(f"filters: each block's in must equal the previous out, got {f}")
        if len(self.gat_dims) != 2 or min(self.gat_dims) < 1:
            raise ValueError("gat_dims: two positive ints [GAT dim, hetero dim]")
        if len(self.pool_ratios) != 4 or not all(0 < r <= 1 for r in self.pool_ratios):
            raise ValueError("pool_ratios: four ratios in (0, 1]")
        if len(self.temperatures) != 4 or not all(t > 0 for t in self.temperatures):
            raise ValueError("temperatures: four positive values")
        return self


def _att_vector(dim: int) -> nn.Parameter:
    """A (dim, 1) attention weight, Xavier-normal as in the reference."""
    w = nn.Parameter(torch.empty(dim, 1))
    nn.init.xavier_normal_(w)
    return w


def _pair_products(x: torch.Tensor) -> torch.Tensor:
    """(B, N, D) → (B, N, N, D) elementwise products of every node pair (the attention input)."""
    return x.unsqueeze(2) * x.unsqueeze(1)


def _node_bn(bn: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm over batch and nodes together, as the reference does."""
    return bn(x.reshape(-1, x.shape[-1])).reshape(x.shape)


class ResidualBlock(nn.Module):
    """2-D residual block of the AASIST encoder (no pooling inside, as in the SSL recipe)."""

    def __init__(self, c_in: int, c_out: int, first: bool, preact: bool) -> None:
        super().__init__()
        self.preact = preact and not first
        # Kept even when unused so the parameter count (and checkpoints) match the reference.
        self.bn1 = None if first else nn.BatchNorm2d(c_in)
        # (2, 3) kernels: padding (1, 1) then (0, 1) keeps height and width unchanged.
        self.conv1 = nn.Conv2d(c_in, c_out, (2, 3), padding=(1, 1))
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, (2, 3), padding=(0, 1))
        self.skip = nn.Conv2d(c_in, c_out, (1, 3), padding=(0, 1)) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) → (B, C_out, H, W)."""
        out = F.selu(self.bn1(x)) if self.preact and self.bn1 is not None else x
        out = self.conv2(F.selu(self.bn2(self.conv1(out))))
        return out + (x if self.skip is None else self.skip(x))


class GraphAttention(nn.Module):
    """Graph attention layer over fully connected nodes (AASIST's GAT)."""

    def __init__(self, in_dim: int, out_dim: int, temperature: float, drop: float) -> None:
        super().__init__()
        self.att_proj = nn.Linear(in_dim, out_dim)
        self.att_weight = _att_vector(out_dim)
        self.proj_with_att = nn.Linear(in_dim, out_dim)
        self.proj_without_att = nn.Linear(in_dim, out_dim)
        self.bn = nn.BatchNorm1d(out_dim)
        self.drop = nn.Dropout(drop)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, in_dim) → (B, N, out_dim)."""
        x = self.drop(x)
        logits = torch.tanh(self.att_proj(_pair_products(x))) @ self.att_weight  # (B, N, N, 1)
        att = torch.softmax(logits.squeeze(-1) / self.temperature, dim=-1)  # over neighbours
        out = self.proj_with_att(att @ x) + self.proj_without_att(x)
        return F.selu(_node_bn(self.bn, out))


class HeteroGraphAttention(nn.Module):
    """Heterogeneous (temporal + spectral) graph attention with a master node (HtrgGAT)."""

    def __init__(self, in_dim: int, out_dim: int, temperature: float, drop: float) -> None:
        super().__init__()
        # Each node type gets its own map into the shared space.
        self.proj_type1 = nn.Linear(in_dim, in_dim)
        self.proj_type2 = nn.Linear(in_dim, in_dim)
        self.att_proj = nn.Linear(in_dim, out_dim)
        self.att_proj_master = nn.Linear(in_dim, out_dim)
        # Separate scorers for type1-type1, type2-type2 and cross-type edges (shared both ways).
        self.att_weight11 = _att_vector(out_dim)
        self.att_weight22 = _att_vector(out_dim)
        self.att_weight12 = _att_vector(out_dim)
        self.att_weight_master = _att_vector(out_dim)
        self.proj_with_att = nn.Linear(in_dim, out_dim)
        self.proj_without_att = nn.Linear(in_dim, out_dim)
        self.proj_with_att_master = nn.Linear(in_dim, out_dim)
        self.proj_without_att_master = nn.Linear(in_dim, out_dim)
        self.bn = nn.BatchNorm1d(out_dim)
        self.drop = nn.Dropout(drop)
        self.temperature = temperature

    def forward(
        self, x1: torch.Tensor, x2: torch.Tensor, master: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N1, D), (B, N2, D), master (B, 1, D) → the same three with out_dim."""
        n1 = x1.shape[1]
        x = self.drop(torch.cat([self.proj_type1(x1), self.proj_type2(x2)], dim=1))

        # Node-node attention; the edge type picks the scoring vector.
        hidden = torch.tanh(self.att_proj(_pair_products(x)))  # (B, N, N, out)
        is1 = torch.arange(x.shape[1], device=x.device) < n1
        same1, same2 = is1[:, None] & is1[None, :], ~is1[:, None] & ~is1[None, :]
        logits = torch.where(
            same1,
            (hidden @ self.att_weight11).squeeze(-1),
            torch.where(same2, (hidden @ self.att_weight22).squeeze(-1), (hidden @ self.att_weight12).squeeze(-1)),
        )
        att = torch.softmax(logits / self.temperature, dim=-1)

        # Master node attends (one direction) to every node; it uses the pre-update nodes.
        m_logits = torch.tanh(self.att_proj_master(x * master)) @ self.att_weight_master  # (B, N, 1)
        m_att = torch.softmax(m_logits / self.temperature, dim=1)
        master = self.proj_with_att_master(m_att.transpose(1, 2) @ x) + self.proj_without_att_master(master)

        out = self.proj_with_att(att @ x) + self.proj_without_att(x)
        out = F.selu(_node_bn(self.bn, out))
        return out[:, :n1], out[:, n1:], master


class GraphPool(nn.Module):
    """Keep the top `ratio` of nodes by a learned sigmoid score, scaling nodes by that score."""

    def __init__(self, ratio: float, dim: int, drop: float) -> None:
        super().__init__()
        self.ratio = ratio
        self.proj = nn.Linear(dim, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(B, N, D) → (B, max(int(N * ratio), 1), D)."""
        scores = torch.sigmoid(self.proj(self.drop(h)))  # (B, N, 1)
        n, exact = h.shape[1], integer_ratio(float(self.ratio))
        if isinstance(n, torch.SymInt) and exact is not None:
            # Traced for export: int(N · ratio) through a float would be frozen at the traced N; the
            # same count in integer arithmetic stays an expression of the input length.
            k = torch.sym_max(n * exact[0] // exact[1], 1)
        else:
            k = max(int(n * self.ratio), 1)  # the published models' float arithmetic
        idx = scores.topk(k, dim=1).indices.expand(-1, -1, h.shape[-1])
        return torch.gather(h * scores, 1, idx)


@lru_cache(maxsize=None)
def integer_ratio(ratio: float, limit: int = 1 << 20) -> tuple[int, int] | None:
    """(p, q) with n·p // q == int(n · ratio) for every node count n < limit; None if float rounding breaks that."""
    frac = Fraction(ratio).limit_denominator(1000)
    n = np.arange(1, limit, dtype=np.int64)
    same = np.array_equal((n * frac.numerator) // frac.denominator, np.floor(n * ratio).astype(np.int64))
    return (frac.numerator, frac.denominator) if same else None


class HeteroBranch(nn.Module):
    """One of AASIST's two inference paths: HtrgGAT, graph pooling, a residual HtrgGAT, learned master."""

    def __init__(self, dims: tuple[int, int], temperatures: tuple[float, float], ratios: tuple[float, float],
                 gat_drop: float, pool_drop: float) -> None:
        """`temperatures` of the two hetero layers; `ratios` of the spectral and the temporal pool."""
        super().__init__()
        d0, d1 = dims
        self.master = nn.Parameter(torch.randn(1, 1, d0))
        self.htrg1 = HeteroGraphAttention(d0, d1, temperatures[0], gat_drop)
        self.pool_s = GraphPool(ratios[0], d1, pool_drop)
        self.pool_t = GraphPool(ratios[1], d1, pool_drop)
        self.htrg2 = HeteroGraphAttention(d1, d1, temperatures[1], gat_drop)

    def forward(self, t: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Temporal (B, Nt, d0) and spectral (B, Ns, d0) nodes → pooled nodes and master, all d1."""
        t, s, m = self.htrg1(t, s, self.master.expand(t.shape[0], -1, -1))
        t, s = self.pool_t(t), self.pool_s(s)
        t2, s2, m2 = self.htrg2(t, s, m)
        return t + t2, s + s2, m + m2


@HEADS.register("aasist")
class AASISTHead(nn.Module):
    """SSL-AASIST back-end: projection, 2-D residual encoder, spectro-temporal graph attention."""

    Config = AASISTConfig

    def __init__(self, cfg: AASISTConfig, in_dim: int, num_classes: int = 2) -> None:
        super().__init__()
        self.cfg = cfg
        channels = cfg.filters[-1][1]
        d0, d1 = cfg.gat_dims
        self.proj = nn.Linear(in_dim, cfg.proj_dim)
        self.first_bn = nn.BatchNorm2d(1)
        blocks = cfg.filters + [cfg.filters[-1]] * (cfg.last_block_repeats - 1)
        self.encoder = nn.Sequential(
            *(ResidualBlock(a, b, first=i == 0, preact=cfg.residual_preact) for i, (a, b) in enumerate(blocks))
        )
        self.encoder_bn = nn.BatchNorm2d(channels)
        # 1x1 convs give one attention logit per (channel, freq, time) cell for both pooling directions.
        self.attention = nn.Sequential(
            nn.Conv2d(channels, cfg.att_hidden, 1),
            nn.SELU(),
            nn.BatchNorm2d(cfg.att_hidden),
            nn.Conv2d(cfg.att_hidden, channels, 1),
        )
        # Spectral nodes are the projection dim after the (3, 3) max-pool: 128 // 3 = 42 in the recipe.
        self.pos_s = nn.Parameter(torch.randn(1, cfg.proj_dim // 3, channels))
        self.gat_s = GraphAttention(channels, d0, cfg.temperatures[0], cfg.gat_input_drop)
        self.gat_t = GraphAttention(channels, d0, cfg.temperatures[1], cfg.gat_input_drop)
        self.pool_s = GraphPool(cfg.pool_ratios[0], d0, cfg.pool_drop)
        self.pool_t = GraphPool(cfg.pool_ratios[1], d0, cfg.pool_drop)
        hetero = ((d0, d1), (cfg.temperatures[2], cfg.temperatures[3]), (cfg.pool_ratios[2], cfg.pool_ratios[3]),
                  cfg.gat_input_drop, cfg.pool_drop)
        self.branches = nn.ModuleList([HeteroBranch(*hetero), HeteroBranch(*hetero)])
        self.drop_way = nn.Dropout(cfg.drop_way)
        self.drop = nn.Dropout(cfg.drop_out)
        self.out = nn.Linear(5 * d1, num_classes)

    @property
    def output_layer(self) -> nn.Module:
        """The final layer, frozen when a margin loss brings its own."""
        return self.out

    @property
    def embed_dim(self) -> int:
        """Width of the utterance embedding (the graph readout before the output layer)."""
        return self.out.in_features

    def forward(self, feats: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, F, H) features (mask: (B, F) valid frames) → (B, num_classes) logits."""
        return self.classify(self.embed(feats, mask))

    def classify(self, embedding: torch.Tensor) -> torch.Tensor:
        """(B, embed_dim) utterance embeddings → (B, num_classes) logits."""
        return self.out(self.drop(embedding))

    def embed(self, feats: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, F, H) features → (B, embed_dim) utterance embedding: max and mean readouts of both graphs + master node."""
        x = self.proj(feats)
        if mask is not None:
            mask = mask.bool()
            # A row with no valid frame would make the masked softmax undefined; treat it as unpadded.
            mask = mask | ~mask.any(dim=1, keepdim=True)
            x = x * mask.unsqueeze(-1).to(x.dtype)
        x = x.transpose(1, 2).unsqueeze(1)  # (B, 1, proj_dim, F): frequency × time image
        if x.shape[-1] < 3:
            x = F.pad(x, (0, 3 - x.shape[-1]))
            mask = None if mask is None else F.pad(mask, (0, 3 - mask.shape[1]))
        x = F.max_pool2d(x, 3)
        x = F.selu(self.first_bn(x))
        x = F.selu(self.encoder_bn(self.encoder(x)))  # (B, C, S, T)
        w = self.attention(x)

        # Spectral nodes: attention-weighted sum over time, padded time steps excluded.
        w_time = w
        if mask is not None:
            n_t = x.shape[-1]
            # A pooled step is valid if any frame in its window of 3 is.
            valid = mask[:, : 3 * n_t].reshape(-1, n_t, 3).any(-1)
            w_time = w.masked_fill(~valid[:, None, None, :], torch.finfo(w.dtype).min)
        e_s = (x * torch.softmax(w_time, dim=-1)).sum(-1).transpose(1, 2) + self.pos_s  # (B, S, C)
        # Temporal nodes: attention-weighted sum over frequency.
        e_t = (x * torch.softmax(w, dim=-2)).sum(-2).transpose(1, 2)  # (B, T, C)

        s = self.pool_s(self.gat_s(e_s))
        t = self.pool_t(self.gat_t(e_t))
        return graph_readout(self.branches, self.drop_way, t, s)


def graph_readout(branches: nn.ModuleList, drop_way: nn.Module, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Both hetero inference paths over temporal `t` and spectral `s` nodes → (B, 5 * d1) readout.

    Each path's nodes and master get `drop_way`; an element-wise max combines the paths; the
    readout is max |·| and mean over each node type, and the master node.
    """
    outs = [tuple(drop_way(z) for z in branch(t, s)) for branch in branches]
    t, s, master = (torch.maximum(a, b) for a, b in zip(*outs))
    return torch.cat([t.abs().amax(1), t.mean(1), s.abs().amax(1), s.mean(1), master.squeeze(1)], dim=1)
