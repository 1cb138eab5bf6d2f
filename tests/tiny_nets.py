"""A tiny network and batches for checking algorithms against hand computations (imported by the algorithm tests)."""

from __future__ import annotations

import torch
from torch import nn

from metadg.engine.batch import Batch


class TinyNet(nn.Module):
    """Frozen tanh feature layer + trainable hidden and output layers; forward(inputs, lengths) like a Classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.Linear(6, 5)
        self.frozen.requires_grad_(False)
        self.hidden = nn.Linear(5, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x, lengths=None):
        return self.out(torch.tanh(self.hidden(torch.tanh(self.frozen(x)))))


def manual_logits(theta: dict[str, torch.Tensor], net: TinyNet, batch: Batch) -> torch.Tensor:
    """The same network written out as matrix algebra on a flat parameter dict (no modules)."""
    h = torch.tanh(batch.inputs @ net.frozen.weight.T + net.frozen.bias)
    return torch.tanh(h @ theta["hidden.weight"].T + theta["hidden.bias"]) @ theta["out.weight"].T + theta["out.bias"]


def manual_loss(theta: dict[str, torch.Tensor], net: TinyNet, batch: Batch) -> torch.Tensor:
    """Cross-entropy of `manual_logits`."""
    return nn.functional.cross_entropy(manual_logits(theta, net, batch), batch.labels)


def make_batches(n_domains: int = 3, n: int = 5, seed: int = 0) -> dict[str, Batch]:
    """`n_domains` random domain batches of `n` six-dimensional inputs with binary labels."""
    g = torch.Generator().manual_seed(seed)
    return {f"d{i}": Batch(torch.randn(n, 6, generator=g), torch.randint(0, 2, (n,), generator=g)) for i in range(n_domains)}


def trainable(net: nn.Module) -> dict[str, nn.Parameter]:
    """Name → parameter of what trains."""
    return {k: p for k, p in net.named_parameters() if p.requires_grad}


def grads_of(params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    """Copies of the parameters' gradients."""
    return {k: p.grad.detach().clone() for k, p in params.items()}


class TinyHead(nn.Module):
    """Linear output layer with the classify() of metadg heads."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 2)

    def classify(self, embedding):
        return self.proj(embedding)


class FeatNet(nn.Module):
    """Frozen tanh layer, trainable tanh layer (the 4-d embedding), linear head; records what it is fed."""

    embed_dim = 4

    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.Linear(6, 5)
        self.frozen.requires_grad_(False)
        self.hidden = nn.Linear(5, 4)
        self.head = TinyHead()
        self.seen: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def forward(self, x, lengths=None, with_embedding=False):
        self.seen.append((x.detach().clone(), lengths))
        z = torch.tanh(self.hidden(torch.tanh(self.frozen(x))))
        logits = self.head.classify(z)
        return (logits, z) if with_embedding else logits

    def classify(self, embedding):
        return self.head.classify(embedding)
