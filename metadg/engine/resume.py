"""Crash-safe training state: what a resumed run needs to continue exactly, and clean stops on signals."""

from __future__ import annotations

import math
import random
import signal
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

from metadg.engine.checkpoint import CheckpointError, pack_state, read_checkpoint, save_checkpoint, unpack_state

STATE_DIR = ("checkpoints", "last")


@dataclass
class LoopState:
    """The training loop's own counters: everything besides tensors that the next step depends on."""

    step: int = 0
    best: float = math.inf
    best_step: int = 0
    best_dev: dict[str, float] = field(default_factory=dict)
    stale: int = 0
    bad_steps: int = 0
    bad_steps_total: int = 0
    running: dict[str, list[float]] = field(default_factory=dict)
    run_id: str | None = None
    stopped_early: bool = False


def state_dir(run_dir: str | Path) -> Path:
    """Folder of a run's latest training state."""
    return Path(run_dir).joinpath(*STATE_DIR)


def rng_state() -> dict[str, Any]:
    """Every global RNG the training step draws from."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(legacy=False),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state returned."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(run_dir: str | Path, model_tensors: dict[str, torch.Tensor], parts: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Atomically write the trainable tensors plus every other part (optimizer, RNGs, loop) of a run."""
    tensors = {f"model/{k}": v for k, v in model_tensors.items()}
    packed = pack_state(parts, tensors, "state")
    return save_checkpoint(state_dir(run_dir), tensors, {**meta, "state": packed})


def load_state(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(trainable tensors, parts, meta) of a run's latest state; CheckpointError when there is none."""
    tensors, meta = read_checkpoint(state_dir(run_dir))
    if "state" not in meta:
        raise CheckpointError(f"{state_dir(run_dir)}: a checkpoint without training state (not resumable)")
    model = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    return model, unpack_state(meta.pop("state"), tensors), meta


def loop_to_dict(loop: LoopState) -> dict[str, Any]:
    """LoopState as plain data (inf becomes None: JSON has no infinity)."""
    data = asdict(loop)
    data["best"] = None if math.isinf(loop.best) else loop.best
    return data


def loop_from_dict(data: dict[str, Any]) -> LoopState:
    """Inverse of loop_to_dict."""
    return LoopState(**{**data, "best": math.inf if data["best"] is None else data["best"]})


class StopRun(Exception):
    """Training ended on purpose before its last step (a signal, a pruned search trial): the run ends KILLED."""


class StopRequested(StopRun):
    """SIGINT/SIGTERM arrived; the run saved its state after the current step and stopped."""

    def __init__(self, run_dir: Path, step: int, signum: int) -> None:
        self.run_dir, self.step, self.signum = run_dir, step, signum
        super().__init__(
            f"stopped by {signal.Signals(signum).name} after step {step}; state saved. "
            f"Resume with: metadg run {run_dir}"
        )


class SignalGuard:
    """Turns SIGINT/SIGTERM into a flag checked between steps; a second signal interrupts at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalGuard:
        # Handlers can only be installed from the main thread (not inside a
        # search worker thread, say); there the default behaviour stays.
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # asked twice: the user wants out now
            self.__exit__()
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
