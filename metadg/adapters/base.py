"""Adapter contract: which backbone parameters train, and how they are saved."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from pydantic import BaseModel
from torch import nn

from metadg.config import StrictModel

# Parameters new to the downstream model: they always train, whatever the adapter.
ALWAYS_TRAINED = ("head.", "backbone.layer_weights")


class Adapter(ABC):
    """Decides the trainable parameter set of a Classifier and saves only that."""

    Config: type[BaseModel] = StrictModel

    def __init__(self, cfg: BaseModel) -> None:
        self.cfg = cfg

    @abstractmethod
    def apply(self, model: nn.Module) -> None:
        """Insert adapter modules into `model` in place and set requires_grad."""

    def trainable_parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """Name → parameter for everything that trains (adapter + head)."""
        return {n: p for n, p in model.named_parameters() if p.requires_grad}

    def added_parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """Parameters this adapter inserted into the model (none unless overridden)."""
        return {}

    def trained_buffers(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Buffers that training changes: those of the modules that train, and every BatchNorm's running statistics."""
        out = {}
        for prefix, module in model.named_modules():
            # A BatchNorm in train mode moves its statistics whether or not its own weights train
            # (a frozen backbone under head_only or LoRA, LCNN's affine-free BatchNorm): without
            # them a reloaded model would score with the statistics of before training.
            moving = isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats
            if moving or any(p.requires_grad for p in module.parameters(recurse=False)):
                for name, buf in module.named_buffers(recurse=False):
                    if buf is not None:
                        out[f"{prefix}.{name}" if prefix else name] = buf
        return out

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The trained tensors and the buffers of trained modules, detached and contiguous (safetensors-ready)."""
        tensors = {n: p.detach().contiguous() for n, p in self.trainable_parameters(model).items()}
        return tensors | {n: b.detach().contiguous() for n, b in self.trained_buffers(model).items()}

    def load_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Load trained tensors; the key set must match what this adapter trains.

        Buffers may be missing: checkpoints before 0.2 did not save them (their BatchNorm
        statistics are then the model's own).
        """
        params = self.trainable_parameters(model) | self.trained_buffers(model)
        buffers = set(self.trained_buffers(model))
        missing = sorted(set(params) - set(state) - buffers)
        unexpected = sorted(set(state) - set(params))
        if missing or unexpected:
            raise KeyError(
                f"adapter state does not match the model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
            )
        with torch.no_grad():
            for name, tensor in state.items():
                if params[name].shape != tensor.shape or params[name].dtype.is_floating_point != tensor.dtype.is_floating_point:
                    raise ValueError(f"adapter state {name}: shape {tuple(tensor.shape)} != {tuple(params[name].shape)}")
                params[name].copy_(tensor)

    def merge(self, model: nn.Module) -> None:
        """Fold adapter weights into the base weights for inference (no-op unless overridden)."""


def freeze_all_but_new(model: nn.Module) -> None:
    """Freeze every parameter except the head and other always-trained ones."""
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(ALWAYS_TRAINED))
