"""The one import mechanism: a published plain state dict, renamed key by key, written as a metadg run folder."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from metadg.config import ConfigError, atomic_write_text, build_experiment, dump_yaml
from metadg.engine.checkpoint import CheckpointError, frozen_fingerprint, save_checkpoint

Renames = list[tuple[str, str]]


def renamer(renames: Renames, parts: dict[str, str] | None = None) -> Callable[[str], str | None]:
    """key → metadg key by the first matching (regex, replacement) prefix rule, then per-part renames; None if none."""
    parts = parts or {}

    def rename(key: str) -> str | None:
        for pattern, replacement in renames:
            if re.match(pattern, key):
                return ".".join(parts.get(p, p) for p in re.sub(pattern, replacement, key).split("."))
        return None

    return rename


def load_published(checkpoint: Path) -> dict[str, torch.Tensor]:
    """A plain state dict read with weights_only=True (a `state_dict` entry and DataParallel's `module.` unwrapped)."""
    try:
        published = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{checkpoint}: not found") from None
    except Exception as exc:  # a pickle with code in it, or not a torch file at all
        raise CheckpointError(f"{checkpoint}: not a plain state dict (weights_only load failed: "
                              f"{str(exc).splitlines()[0][:200]})") from None
    if isinstance(published, dict) and isinstance(published.get("state_dict"), dict):
        published = published["state_dict"]
    if not isinstance(published, dict) or not all(isinstance(v, torch.Tensor) for v in published.values()):
        raise CheckpointError(f"{checkpoint}: expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in published.items()}


def import_run(checkpoint: str | Path, out_dir: str | Path, kind: str, rename: Callable[[str], str | None],
               config: dict[str, Any], other: str) -> Path:
    """Map every key of `checkpoint` with `rename` into the model `config` builds; write the run folder.

    Strays, missing keys and shape mismatches are errors naming a key; `other` says what to try instead.
    """
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    check_empty(out_dir)
    return write_run(load_published(checkpoint), checkpoint, out_dir, kind, rename, config, other)


def check_empty(out_dir: Path) -> None:
    """Refuse an output folder that already holds something (an import never overwrites)."""
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir}: already exists and is not empty; choose another folder")


def write_run(published: dict[str, torch.Tensor], checkpoint: Path, out_dir: Path, kind: str,
              rename: Callable[[str], str | None], config: dict[str, Any], other: str) -> Path:
    """import_run's work on tensors already read from `checkpoint` (an importer may split them first)."""
    from metadg.engine.accounting import count_parameters
    from metadg.engine.build import build_model_and_adapter
    from metadg.engine.trainer import RunResult

    unknown = sorted(k for k in published if rename(k) is None)
    if unknown:
        raise CheckpointError(f"{checkpoint}: {len(unknown)} key(s) are not {kind}'s, e.g. {unknown[0]!r}")
    exp = build_experiment(config | {"name": out_dir.name}, source=f"metadg import {kind} {checkpoint}")
    model, adapter = build_model_and_adapter(exp)
    target = adapter.state_dict(model)
    mapped = {rename(k): v for k, v in published.items()}
    missing, extra = sorted(set(target) - set(mapped)), sorted(set(mapped) - set(target))
    if missing or extra:
        raise CheckpointError(f"{checkpoint}: does not fit this {kind}: missing {missing[:3]}, unexpected {extra[:3]} "
                              f"({len(missing)} missing, {len(extra)} unexpected; {other})")
    wrong = [k for k in target if tuple(target[k].shape) != tuple(mapped[k].shape)]
    if wrong:
        k = wrong[0]
        raise CheckpointError(f"{checkpoint}: {k}: shape {tuple(mapped[k].shape)}, the model has "
                              f"{tuple(target[k].shape)} ({other})")
    adapter.load_state_dict(model, mapped)
    out_dir.mkdir(parents=True, exist_ok=True)
    dump_yaml(exp.to_dict(), out_dir / "config.yaml")
    meta = {"config": exp.to_dict(), "step": 0, "dev": {}, "num_classes": 2,
            "frozen_fingerprint": frozen_fingerprint(model), "imported_from": str(checkpoint)}
    save_checkpoint(out_dir / "checkpoints" / "best", adapter.state_dict(model), meta)
    trainable, total, full = count_parameters(model, adapter)  # a head_only import trains its head only
    result = RunResult(out_dir.name, str(out_dir), 0, 0, trainable, total, full, {}, {}, None, "imported")
    atomic_write_text(out_dir / "results.json", json.dumps(asdict(result), indent=2))
    return out_dir


def spoof_config(model: dict[str, Any]) -> dict[str, Any]:
    """A run config for an imported spoof detector (the sets come with `metadg eval --sets`)."""
    synthetic = {"name": "synthetic"}
    return {"seed": 0, "task": {"name": "spoof_detection", "train": {**synthetic, "split": "train"},
                                "dev": {**synthetic, "split": "dev"}, "crop_samples": 64600},
            "model": model, "adapter": {"name": "full"}, "algorithm": {"name": "erm"}, "tracking": {"enabled": False}}
