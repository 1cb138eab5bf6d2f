"""Test-only: the published AASIST graph layers (clovaai/aasist, SSL_Anti-spoofing) as functional ops on a state dict.

Written from the published module layout; no metadg module computes any of it, so the importer tests
compare metadg's models against an independent computation. Eval mode (BatchNorm on running statistics).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class Published:
    """The published layers, each reading its tensors from `sd` by the published module name."""

    def __init__(self, sd: dict[str, torch.Tensor]) -> None:
        self.sd = sd

    def lin(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """nn.Linear `name`."""
        return F.linear(x, self.sd[f"{name}.weight"], self.sd[f"{name}.bias"])

    def bn(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """BatchNorm `name` on its running statistics."""
        sd = self.sd
        return F.batch_norm(x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                            sd[f"{name}.bias"], False, 0.0, 1e-5)

    def conv(self, name: str, x: torch.Tensor, padding: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """nn.Conv2d `name`."""
        return F.conv2d(x, self.sd[f"{name}.weight"], self.sd[f"{name}.bias"], padding=padding)

    def node_bn(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """BatchNorm1d over the last axis of (B, N, D) nodes."""
        return self.bn(name, x.reshape(-1, x.shape[-1])).reshape(x.shape)

    def gat(self, name: str, x: torch.Tensor, temp: float) -> torch.Tensor:
        """GraphAttentionLayer."""
        pair = x.unsqueeze(2) * x.unsqueeze(1)
        att = torch.softmax((torch.tanh(self.lin(f"{name}.att_proj", pair)) @ self.sd[f"{name}.att_weight"]) / temp,
                            dim=-2)
        out = self.lin(f"{name}.proj_with_att", att.squeeze(-1) @ x) + self.lin(f"{name}.proj_without_att", x)
        return F.selu(self.node_bn(f"{name}.bn", out))

    def htrg(self, name: str, x1: torch.Tensor, x2: torch.Tensor, master: torch.Tensor, temp: float):
        """HtrgGraphAttentionLayer: (type-1 nodes, type-2 nodes, master node)."""
        sd, lin, n1 = self.sd, self.lin, x1.shape[1]
        x = torch.cat([lin(f"{name}.proj_type1", x1), lin(f"{name}.proj_type2", x2)], dim=1)
        hidden = torch.tanh(lin(f"{name}.att_proj", x.unsqueeze(2) * x.unsqueeze(1)))
        board = torch.zeros(*hidden.shape[:3], 1)
        board[:, :n1, :n1] = hidden[:, :n1, :n1] @ sd[f"{name}.att_weight11"]
        board[:, n1:, n1:] = hidden[:, n1:, n1:] @ sd[f"{name}.att_weight22"]
        board[:, :n1, n1:] = hidden[:, :n1, n1:] @ sd[f"{name}.att_weight12"]
        board[:, n1:, :n1] = hidden[:, n1:, :n1] @ sd[f"{name}.att_weight12"]
        att = torch.softmax(board / temp, dim=-2)
        m_att = torch.softmax((torch.tanh(lin(f"{name}.att_projM", x * master)) @ sd[f"{name}.att_weightM"]) / temp,
                              dim=-2)
        master = (lin(f"{name}.proj_with_attM", m_att.squeeze(-1).unsqueeze(1) @ x)
                  + lin(f"{name}.proj_without_attM", master))
        out = F.selu(self.node_bn(f"{name}.bn", lin(f"{name}.proj_with_att", att.squeeze(-1) @ x)
                                  + lin(f"{name}.proj_without_att", x)))
        return out[:, :n1], out[:, n1:], master

    def pool(self, name: str, h: torch.Tensor, ratio: float) -> torch.Tensor:
        """GraphPool: the top max(int(N · ratio), 1) nodes by sigmoid score, scaled by it."""
        scores = torch.sigmoid(self.lin(f"{name}.proj", h))
        idx = torch.topk(scores, max(int(h.shape[1] * ratio), 1), dim=1).indices.expand(-1, -1, h.shape[-1])
        return torch.gather(h * scores, 1, idx)

    def heterogeneous_readout(self, out_s: torch.Tensor, out_t: torch.Tensor, ratio: float, temp: float) -> torch.Tensor:
        """The two HtrgGAT branches, their element-wise max, the readout and `out_layer`: the logits."""
        paths = []
        for k in ("1", "2"):
            t1, s1, m1 = self.htrg(f"HtrgGAT_layer_ST{k}1", out_t, out_s, self.sd[f"master{k}"], temp)
            s1, t1 = self.pool(f"pool_hS{k}", s1, ratio), self.pool(f"pool_hT{k}", t1, ratio)
            t2, s2, m2 = self.htrg(f"HtrgGAT_layer_ST{k}2", t1, s1, m1, temp)
            paths.append((t1 + t2, s1 + s2, m1 + m2))
        t, s, m = (torch.maximum(a, b) for a, b in zip(*paths))
        hidden = torch.cat([t.abs().amax(1), t.mean(1), s.abs().amax(1), s.mean(1), m.squeeze(1)], dim=1)
        return self.lin("out_layer", hidden)
