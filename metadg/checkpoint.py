"""Checkpoints: trained tensors in safetensors, everything else in JSON; never pickle."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS = "trainable.safetensors"
META = "meta.json"
FORMAT = "metadg-checkpoint/1"


class CheckpointError(ValueError):
    """A path that is not a usable metadg checkpoint."""


def frozen_fingerprint(model: nn.Module) -> str:
    """Hash of every frozen tensor: a reloaded model must rebuild the same base weights."""
    h = hashlib.blake2b(digest_size=16)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _atomic_write(path: Path, write: Any) -> None:
    # Write-then-rename: a crash mid-write leaves the previous file intact.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(directory: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write `tensors` (safetensors) and `meta` (JSON) into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    _atomic_write(directory / WEIGHTS, lambda tmp: save_file(cpu, tmp))
    text = json.dumps({"format": FORMAT, **meta}, indent=2, sort_keys=True)
    _atomic_write(directory / META, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return directory


def read_checkpoint(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read tensors and metadata; refuses anything that is not a metadg checkpoint folder."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a checkpoint folder (expected {WEIGHTS} and {META} inside)")
    meta_path, weights_path = directory / META, directory / WEIGHTS
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{meta_path}: missing") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{meta_path}: not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: not a metadg checkpoint (format {meta.get('format')!r})")
    try:
        tensors = load_file(str(weights_path))
    except FileNotFoundError:
        raise CheckpointError(f"{weights_path}: missing") from None
    except Exception as exc:  # safetensors raises its own error types on garbage
        raise CheckpointError(f"{weights_path}: not a safetensors file: {exc}") from None
    return tensors, meta
