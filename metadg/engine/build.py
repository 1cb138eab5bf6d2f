"""Building what a run trains: seeds, device, model with its adapter, loss; rebuilding a trained model."""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from metadg.adapters.base import Adapter
from metadg.config import ConfigError, Experiment, build_experiment, validate_plugin
from metadg.registry import LOSSES
from metadg.engine.checkpoint import META, CheckpointError, checkpoint_of, frozen_fingerprint, read_checkpoint
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
    """The model with its adapter applied (and a margin loss's output layer); the base weights depend only on exp.seed."""
    torch.manual_seed(exp.seed)
    model = build_model(exp.backbone, exp.head, num_classes)
    if exp.init_from is not None and next(model.parameters()).device.type != "meta":  # meta: shapes only
        start_from(model, exp.init_from)
    adapter = exp.adapter.build()
    adapter.apply(model)
    output = _loss(exp, num_classes).output_layer(model.embed_dim)
    if output is not None:
        if not hasattr(model.head, "output_layer"):
            raise ConfigError(f"loss: {exp.loss.name} brings its own output layer; head "
                              f"{exp.head.name!r} does not say which of its layers that replaces")
        model.output = output.to(next(model.parameters()).device)
        for p in model.head.output_layer.parameters():  # unused now: neither trained nor counted
            p.requires_grad_(False)
    return model, adapter


def trained_weights(run: str | Path) -> dict[str, torch.Tensor]:
    """Every weight of the trained model in `run` (a run or checkpoint folder), its adapters merged in."""
    ckpt = checkpoint_of(run)
    if not (ckpt / META).is_file():
        raise ConfigError(f"model.init_from: {run} is not a trained run folder (no checkpoints/best/{META}; "
                          "train one with `metadg run`, or import one with `metadg import`)")
    # Rebuilding the source reseeds torch; what this run draws next (adapter init) must not depend on it.
    with torch.random.fork_rng(devices=[]):
        _, source, adapter, _ = load_trained(ckpt)
    adapter.merge(source)
    return source.state_dict()


def start_from(model: nn.Module, run: str) -> None:
    """Load the trained weights of `run` into the freshly built `model`; the two must have the same shapes."""
    weights, own = trained_weights(run), model.state_dict()
    missing, extra = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    if missing or extra:
        raise ConfigError(f"model.init_from: {run} was trained with another model ({len(missing)} tensors of this "
                          f"model are not in it, e.g. {missing[:2]}; {len(extra)} of its are not here, e.g. "
                          f"{extra[:2]}); model.backbone and model.head must be the run's")
    wrong = [k for k in own if own[k].shape != weights[k].shape]
    if wrong:
        k = wrong[0]
        raise ConfigError(f"model.init_from: {k} has shape {tuple(weights[k].shape)} in {run} but "
                          f"{tuple(own[k].shape)} here ({len(wrong)} tensors differ; model.backbone, model.head and "
                          "the task's class count must be the run's)")
    model.load_state_dict(weights)


def _loss(exp: Experiment, num_classes: int, weight: torch.Tensor | None = None) -> nn.Module:
    loss = exp.loss if exp.loss is not None else validate_plugin(LOSSES, {"name": "cross_entropy"}, "loss")
    try:
        return loss.build(num_classes, weight)
    except ValueError as exc:  # e.g. a two-class loss on a ten-class task
        raise ConfigError(f"loss.name: {exc}") from None


def make_loss(exp: Experiment, task: Task, device: torch.device) -> nn.Module:
    """The experiment's loss as the training criterion, weighted per class name when train.class_weights asks."""
    weight = None
    if exp.train.class_weights:
        weight = torch.ones(task.num_classes)
        for name, w in exp.train.class_weights.items():
            weight[task.class_index(name)] = w
        weight = weight.to(device)
    return _loss(exp, task.num_classes, weight)


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
