"""Building what a run trains: seeds, device, model with its adapter, loss; rebuilding a trained model."""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from metadg.adapters.base import Adapter
from metadg.config import Experiment, build_experiment
from metadg.engine.checkpoint import CheckpointError, frozen_fingerprint, read_checkpoint
from metadg.models.classifier import Classifier, build_model

if TYPE_CHECKING:
    from metadg.tasks.base import Task


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """'auto' → cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_model_and_adapter(exp: Experiment, num_classes: int = 2) -> tuple[Classifier, Adapter]:
    """The model with its adapter applied; the base weights depend only on exp.seed."""
    torch.manual_seed(exp.seed)
    model = build_model(exp.backbone, exp.head, num_classes)
    adapter = exp.adapter.build()
    adapter.apply(model)
    return model, adapter


def make_loss(task: Task, class_weights: dict[str, float] | None, device: torch.device) -> nn.Module:
    """Cross-entropy, weighted per class name when asked."""
    weight = None
    if class_weights:
        weight = torch.ones(task.num_classes)
        for name, w in class_weights.items():
            weight[task.class_index(name)] = w
        weight = weight.to(device)
    return nn.CrossEntropyLoss(weight=weight)


def checkpoint_classes(meta: dict[str, Any], where: str) -> int:
    """Number of classes a checkpoint was trained with (checkpoints before it was recorded: two)."""
    n = meta.get("num_classes", 2)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 100_000:
        raise CheckpointError(f"{where}: num_classes must be a positive integer, got {n!r}")
    return n


def load_trained(checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[Experiment, Classifier, Adapter, dict[str, Any]]:
    """Rebuild a trained model from a checkpoint folder (its class count included); refuses mismatching base weights."""
    tensors, meta = read_checkpoint(checkpoint)
    where = str(Path(checkpoint) / "meta.json")
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{where}: no `config` mapping to rebuild the model from")
    exp = build_experiment(meta["config"], source=where)
    model, adapter = build_model_and_adapter(exp, checkpoint_classes(meta, where))
    if meta.get("frozen_fingerprint") not in (None, frozen_fingerprint(model)):
        raise CheckpointError(
            f"{checkpoint}: the frozen backbone rebuilt from the saved config differs from the one trained "
            "(changed pretrained weights or transformers version?)"
        )
    try:
        adapter.load_state_dict(model, tensors)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{checkpoint}: its tensors do not fit the model its config builds: {exc}") from None
    return exp, model.to(device).eval(), adapter, meta
