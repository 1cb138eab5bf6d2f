"""Batch: the model input of one domain (or of several, concatenated) in one step."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class Batch:
    """Fixed-size model input: waveforms (B, T), integer labels (B,), optional valid lengths and flags.

    `shared` marks samples the sampling policy drew from a pool shared by every domain:
    an algorithm that treats them differently reads this flag, never a label value.
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    lengths: torch.Tensor | None = None
    shared: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        """Move every tensor to `device`."""
        lengths = None if self.lengths is None else self.lengths.to(device)
        shared = None if self.shared is None else self.shared.to(device)
        return Batch(self.inputs.to(device), self.labels.to(device), lengths, shared)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def select(self, mask: torch.Tensor) -> Batch:
        """The samples where `mask` is true."""
        pick = (lambda t: None if t is None else t[mask])
        return Batch(self.inputs[mask], self.labels[mask], pick(self.lengths), pick(self.shared))

    def shared_mask(self) -> torch.Tensor:
        """Per-sample 'shared across domains' flags (all false when the policy set none)."""
        if self.shared is None:
            return torch.zeros(len(self), dtype=torch.bool, device=self.labels.device)
        return self.shared

    @staticmethod
    def cat(batches: Sequence[Batch]) -> Batch:
        """Concatenate batches along the batch axis (pooling domains)."""
        lengths = shared = None
        if any(b.lengths is not None for b in batches):
            lengths = torch.cat([
                b.lengths if b.lengths is not None else torch.full((len(b),), b.inputs.shape[-1], device=b.inputs.device)
                for b in batches
            ])
        if any(b.shared is not None for b in batches):
            shared = torch.cat([b.shared_mask() for b in batches])
        return Batch(torch.cat([b.inputs for b in batches]), torch.cat([b.labels for b in batches]), lengths, shared)
