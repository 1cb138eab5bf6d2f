"""Checkpoints: trained tensors in safetensors, everything else in JSON; never pickle."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from metadg.config.files import MAX_METADATA_BYTES, read_text_capped

WEIGHTS = "trainable.safetensors"
META = "meta.json"
FORMAT = "metadg-checkpoint/1"


class CheckpointError(ValueError):
    """A path that is not a usable metadg checkpoint."""


def checkpoint_of(path: str | Path) -> Path:
    """A run folder's checkpoints/best folder; any other path as given (it may be a checkpoint folder itself)."""
    p = Path(path).expanduser()
    return p / "checkpoints" / "best" if (p / "checkpoints" / "best").is_dir() else p


def frozen_fingerprint(model: nn.Module) -> str:
    """Hash of every frozen tensor: a reloaded model must rebuild the same base weights."""
    h = hashlib.blake2b(digest_size=16)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    # Make a rename durable: without this a power loss can forget it.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems refuse to open folders; the rename still happened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_file(path: Path, write: Any) -> None:
    write(str(path))
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def save_checkpoint(directory: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write `tensors` (safetensors) and `meta` (JSON) into `directory`, atomically as a whole folder."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    text = json.dumps({"format": FORMAT, **meta, "tensors_crc32": tensors_checksum(cpu)}, indent=2, sort_keys=True)
    # Write a complete sibling folder, then swap it in: a crash or a full disk at
    # any point leaves either the previous checkpoint or the new one, never a mix
    # (read_checkpoint falls back to `<name>.old` if the crash hit between renames).
    # A kill during an earlier save leaves its temporary folder behind: one process writes a run
    # folder at a time (the run-folder lock), so any such folder is stale.
    for stale in directory.parent.glob(f".{directory.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
    old = directory.with_name(directory.name + ".old")
    try:
        _write_file(tmp / WEIGHTS, lambda f: save_file(cpu, f))
        _write_file(tmp / META, lambda f: Path(f).write_text(text, encoding="utf-8"))
        if directory.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
        os.replace(tmp, directory)
        _fsync_dir(directory.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return directory


def read_checkpoint(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read tensors and metadata; refuses anything that is not a metadg checkpoint folder."""
    directory = Path(directory)
    old = directory.with_name(directory.name + ".old")
    if not directory.exists() and old.is_dir():  # a save was interrupted between its two renames
        directory = old
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a checkpoint folder (expected {WEIGHTS} and {META} inside)")
    meta_path, weights_path = directory / META, directory / WEIGHTS
    if not meta_path.exists() and not meta_path.is_symlink():
        raise CheckpointError(f"{meta_path}: missing")
    text = read_text_capped(meta_path, "checkpoint metadata", MAX_METADATA_BYTES, CheckpointError)
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{meta_path}: not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path}: not a metadg checkpoint (a JSON {type(meta).__name__}, not an object)")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: not a metadg checkpoint (format {meta.get('format')!r})")
    try:
        tensors = load_file(str(weights_path))
    except FileNotFoundError:
        raise CheckpointError(f"{weights_path}: missing") from None
    except Exception as exc:  # safetensors raises its own error types on garbage
        raise CheckpointError(f"{weights_path}: not a safetensors file: {exc}") from None
    if "tensors_crc32" in meta and tensors_checksum(tensors) != meta["tensors_crc32"]:
        raise CheckpointError(f"{weights_path}: damaged: its tensors do not match the checksum in {META} (a partial "
                              "copy or a disk error?); copy the folder again from where it came from, or retrain")
    broken = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if broken:  # a NaN weight would turn every score into NaN without an error
        raise CheckpointError(f"{weights_path}: non-finite values in {len(broken)} tensor(s), e.g. {broken[0]!r}")
    return tensors, meta


def tensors_checksum(tensors: dict[str, torch.Tensor]) -> int:
    """CRC-32 over every tensor's name, dtype, shape and bytes, in name order (damage detection, not security)."""
    crc = 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        crc = zlib.crc32(f"{name}|{t.dtype}|{tuple(t.shape)}".encode(), crc)
        crc = zlib.crc32(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"", crc)
    return crc


def pack_state(state: Any, tensors: dict[str, torch.Tensor], prefix: str = "") -> Any:
    """A JSON-able copy of a nested state; tensors and arrays move into `tensors`, referenced by key."""
    if isinstance(state, torch.Tensor):
        tensors[prefix] = state
        return {"__tensor__": prefix}
    if isinstance(state, np.ndarray):
        tensors[prefix] = torch.from_numpy(np.ascontiguousarray(state))
        return {"__ndarray__": prefix}
    if isinstance(state, dict):
        if not all(isinstance(k, (str, int)) for k in state):
            raise TypeError(f"{prefix or 'state'}: only str/int keys can be saved")
        # JSON keys are strings: remember which were ints (optimizer states are keyed by int).
        return {"__dict__": [[k, pack_state(v, tensors, f"{prefix}/{k}")] for k, v in state.items()]}
    if isinstance(state, tuple):
        return {"__tuple__": [pack_state(v, tensors, f"{prefix}/{i}") for i, v in enumerate(state)]}
    if isinstance(state, list):
        return [pack_state(v, tensors, f"{prefix}/{i}") for i, v in enumerate(state)]
    if state is None or isinstance(state, (bool, int, float, str)):
        return state
    raise TypeError(f"{prefix or 'state'}: cannot save a {type(state).__name__} in a checkpoint")


def unpack_state(packed: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of pack_state."""
    if isinstance(packed, dict):
        if "__tensor__" in packed:
            return tensors[packed["__tensor__"]]
        if "__ndarray__" in packed:
            return tensors[packed["__ndarray__"]].numpy()
        if "__tuple__" in packed:
            return tuple(unpack_state(v, tensors) for v in packed["__tuple__"])
        return {k: unpack_state(v, tensors) for k, v in packed["__dict__"]}
    if isinstance(packed, list):
        return [unpack_state(v, tensors) for v in packed]
    return packed
