"""Parameter accounting: what an experiment trains, per module, against full fine-tuning."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import nn

from metadg.adapters.base import Adapter
from metadg.config import Experiment

_LORA = re.compile(r"\.(\w+)\.lora_[AB]\.")


@dataclass
class ParamReport:
    """Counts for one experiment's model."""

    total: int  # every parameter, adapters included
    trainable: int
    full_finetune: int  # what `full` would train: backbone + head, no adapter weights
    groups: dict[str, int]  # trainable count per module group

    @property
    def percent_of_full(self) -> float:
        """Trainable share of what full fine-tuning trains (the papers' '1.1 %')."""
        return 100.0 * self.trainable / max(1, self.full_finetune)

    def format(self) -> str:
        """Human-readable table."""
        width = max([len(k) for k in self.groups] + [28])
        lines = [f"{'module':<{width}}  {'trainable':>12}"]
        lines += [f"{k:<{width}}  {v:>12,}" for k, v in self.groups.items()]
        lines += [
            "",
            f"{'trainable':<{width}}  {self.trainable:>12,}  ({self.percent_of_full:.2f} % of full fine-tuning)",
            f"{'full fine-tuning would train':<{width}}  {self.full_finetune:>12,}",
            f"{'total (with adapters)':<{width}}  {self.total:>12,}",
        ]
        return "\n".join(lines)


def group_name(name: str) -> str:
    """Readable group of a trainable parameter: LoRA by target layer, the rest by module."""
    lora = _LORA.search(name)
    if lora:
        return f"backbone LoRA on {lora.group(1)}"
    parts = name.replace(".model.base_model.model.", ".").split(".")
    if parts[0] == "backbone" and len(parts) > 2 and parts[1] == "model":
        parts = [parts[0], *parts[2:]]
    depth = 3 if parts[:3] == ["backbone", "encoder", "layers"] else 2
    return ".".join(parts[:depth])


def count_parameters(model: nn.Module, adapter: Adapter) -> tuple[int, int, int]:
    """(trainable, total, what full fine-tuning would train = total minus adapter-inserted weights)."""
    total = sum(p.numel() for p in model.parameters())
    added = sum(p.numel() for p in adapter.added_parameters(model).values())
    return sum(p.numel() for p in adapter.trainable_parameters(model).values()), total, total - added


def count(exp: Experiment, num_classes: int | None = None) -> ParamReport:
    """Build the experiment's model on the meta device (no memory, no weights read) and count.

    `num_classes` defaults to the task's (a task reads at most its class list for that, no audio).
    """
    from metadg.engine.build import build_model_and_adapter

    if num_classes is None:
        num_classes = exp.task.build(seed=exp.seed).num_classes
    with torch.device("meta"):
        model, adapter = build_model_and_adapter(exp, num_classes)
    trainable = adapter.trainable_parameters(model)
    groups: dict[str, int] = defaultdict(int)
    for name, p in trainable.items():
        groups[group_name(name)] += p.numel()
    trained, total, full = count_parameters(model, adapter)
    return ParamReport(total, trained, full, dict(sorted(groups.items())))
