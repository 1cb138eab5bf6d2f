"""`metadg import aasist`: a clovaai/aasist checkpoint (AASIST.pth, AASIST-L.pth) as a metadg run folder.

The published files are plain state dicts of 229 tensors, loaded with `torch.load(weights_only=True)`
(no code runs). Every published key maps to exactly one key of `aasist_raw` + the `linear` head; a key
left over or missing is an error naming it, so a checkpoint of another model cannot half-load.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from metadg.config import ConfigError, atomic_write_text, build_experiment, dump_yaml
from metadg.engine.checkpoint import CheckpointError, frozen_fingerprint, save_checkpoint

#: published module → metadg module, applied to the key prefix (the rest of the key is unchanged)
RENAMES: list[tuple[str, str]] = [
    (r"^first_bn\.", "backbone.first_bn."),
    (r"^encoder\.(\d)\.0\.conv_downsample\.", r"backbone.encoder.\1.skip."),
    (r"^encoder\.(\d)\.0\.", r"backbone.encoder.\1."),
    (r"^pos_S$", "backbone.pos_s"),
    (r"^master1$", "backbone.branches.0.master"),
    (r"^master2$", "backbone.branches.1.master"),
    (r"^GAT_layer_S\.", "backbone.gat_s."),
    (r"^GAT_layer_T\.", "backbone.gat_t."),
    (r"^HtrgGAT_layer_ST11\.", "backbone.branches.0.htrg1."),
    (r"^HtrgGAT_layer_ST12\.", "backbone.branches.0.htrg2."),
    (r"^HtrgGAT_layer_ST21\.", "backbone.branches.1.htrg1."),
    (r"^HtrgGAT_layer_ST22\.", "backbone.branches.1.htrg2."),
    (r"^pool_S\.", "backbone.pool_s."),
    (r"^pool_T\.", "backbone.pool_t."),
    (r"^pool_hS1\.", "backbone.branches.0.pool_s."),
    (r"^pool_hT1\.", "backbone.branches.0.pool_t."),
    (r"^pool_hS2\.", "backbone.branches.1.pool_s."),
    (r"^pool_hT2\.", "backbone.branches.1.pool_t."),
    (r"^out_layer\.", "head.proj."),
]
#: attribute names inside the hetero layers that metadg spells out
SUFFIXES = {"att_projM": "att_proj_master", "att_weightM": "att_weight_master",
            "proj_with_attM": "proj_with_att_master", "proj_without_attM": "proj_without_att_master"}


def metadg_key(key: str) -> str | None:
    """The metadg name of a published key; None when the key is not AASIST's."""
    for pattern, replacement in RENAMES:
        if re.match(pattern, key):
            return ".".join(SUFFIXES.get(part, part) for part in re.sub(pattern, replacement, key).split("."))
    return None


def experiment_config(preset: str, name: str) -> dict[str, Any]:
    """The run's config: the published model on the spoof task (sets are given at `eval` time)."""
    synthetic = {"name": "synthetic"}
    return {
        "name": name, "seed": 0,
        "task": {"name": "spoof_detection", "train": {**synthetic, "split": "train"},
                 "dev": {**synthetic, "split": "dev"}, "crop_samples": 64600},
        "model": {"backbone": {"name": "aasist_raw", "preset": preset}, "head": {"name": "linear", "dropout": 0.5}},
        "adapter": {"name": "full"}, "algorithm": {"name": "erm"}, "tracking": {"enabled": False},
    }


def import_aasist(checkpoint: str | Path, out_dir: str | Path, preset: str = "AASIST") -> Path:
    """Write a run folder (config.yaml, checkpoints/best, results.json) holding the published weights."""
    from metadg.engine.build import build_model_and_adapter
    from metadg.engine.trainer import RunResult

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir}: already exists and is not empty; choose another folder")
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
    published = {k.removeprefix("module."): v for k, v in published.items()}  # saved from DataParallel
    unknown = sorted(k for k in published if metadg_key(k) is None)
    if unknown:
        raise CheckpointError(f"{checkpoint}: {len(unknown)} key(s) are not AASIST's, e.g. {unknown[0]!r}")

    config = experiment_config(preset, out_dir.name)
    exp = build_experiment(config, source=f"metadg import aasist {checkpoint}")
    model, adapter = build_model_and_adapter(exp)
    target = adapter.state_dict(model)
    mapped = {metadg_key(k): v for k, v in published.items()}
    missing, extra = sorted(set(target) - set(mapped)), sorted(set(mapped) - set(target))
    if missing or extra:
        raise CheckpointError(f"{checkpoint}: does not fit {preset}: missing {missing[:3]}, unexpected {extra[:3]} "
                              f"({len(missing)} missing, {len(extra)} unexpected; try --preset AASIST-L or AASIST)")
    wrong = [k for k in target if tuple(target[k].shape) != tuple(mapped[k].shape)]
    if wrong:
        k = wrong[0]
        raise CheckpointError(f"{checkpoint}: {k}: shape {tuple(mapped[k].shape)}, {preset} has "
                              f"{tuple(target[k].shape)} (try the other --preset)")
    adapter.load_state_dict(model, mapped)

    out_dir.mkdir(parents=True, exist_ok=True)
    dump_yaml(exp.to_dict(), out_dir / "config.yaml")
    meta = {"config": exp.to_dict(), "step": 0, "dev": {}, "num_classes": 2,
            "frozen_fingerprint": frozen_fingerprint(model), "imported_from": str(checkpoint)}
    save_checkpoint(out_dir / "checkpoints" / "best", adapter.state_dict(model), meta)
    n = sum(p.numel() for p in model.parameters())
    result = RunResult(out_dir.name, str(out_dir), 0, 0, n, n, n, {}, {}, None, "imported")
    atomic_write_text(out_dir / "results.json", json.dumps(asdict(result), indent=2))
    return out_dir
