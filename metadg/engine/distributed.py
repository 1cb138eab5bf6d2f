"""Data-parallel training with torch.distributed: process group, rank, gradient averaging, rank-0 decisions.

Every rank builds the same model from the seed, draws its slice of the same
global plan, and steps on the mean gradient of all ranks; rank 0 alone
validates, checkpoints and logs, and the others follow its decisions.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from metadg.config import ConfigError

# Rank 0 validates alone while the others wait in the next collective; a dev
# pass over a real corpus can outlast torch's 10-minute NCCL default.
TIMEOUT = timedelta(hours=2)
# Gradients are averaged in flat buckets of at most this many elements (256 MB
# of float32): one collective per bucket, and a bounded extra copy for full fine-tuning.
BUCKET_ELEMENTS = 2**26


@dataclass(frozen=True)
class Rank:
    """Where this process stands in the job: its rank, the number of ranks, its local GPU index and device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """True on the rank that validates, checkpoints and logs."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when several ranks train together."""
        return self.world_size > 1


def launched() -> bool:
    """True inside a process that torchrun started as one of several (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join(device: torch.device) -> Rank:
    """Join torchrun's process group (nccl on CUDA, gloo on CPU) if this process is one of several, else a single rank."""
    initialized = dist.is_available() and dist.is_initialized()
    if not initialized and not launched():
        return Rank(device=device)
    rank = dist.get_rank() if initialized else int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        if device.index is not None:
            raise ConfigError(
                f"train.device: {device} under torchrun would put every rank on one GPU; "
                "use 'auto' or 'cuda' (each rank then takes cuda:LOCAL_RANK)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not initialized:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    return Rank(rank, dist.get_world_size(), local_rank, device)


def leave() -> None:
    """Destroy the process group, if there is one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def finish() -> None:
    """After a run that succeeded on every rank: meet (rank 0 has evaluated meanwhile), then destroy the group.

    destroy_process_group is collective: a rank that destroys and exits while another still works
    can abort the process ("terminate called without an active exception" under gloo). After a
    failure it is skipped (it could deadlock); torchrun tears the group down with the processes.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class _AllMean(torch.autograd.Function):
    # Mean over ranks that stays differentiable: second-order MLDG backpropagates
    # through the averaged inner gradient, and the mean's adjoint is again a mean.
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out.div_(dist.get_world_size())

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return _AllMean.apply(grad)


def _buckets(tensors: Iterable[torch.Tensor]) -> list[list[torch.Tensor]]:
    # Consecutive tensors of one dtype and device, up to BUCKET_ELEMENTS each.
    buckets: list[list[torch.Tensor]] = []
    size = 0
    for t in tensors:
        last = buckets[-1] if buckets else None
        if last is None or size + t.numel() > BUCKET_ELEMENTS or (t.dtype, t.device) != (last[0].dtype, last[0].device):
            buckets.append([])
            size = 0
        buckets[-1].append(t)
        size += t.numel()
    return buckets


def all_mean(tensors: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """The mean over ranks of each tensor (None stays None); identity on a single process.

    Tensors that carry a graph (second-order MLDG) come back as new, differentiable
    tensors; plain ones are averaged in place, in flat buckets.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(tensors)
    present = [t for t in tensors if t is not None]
    if any(t.requires_grad for t in present):
        flat = _AllMean.apply(torch.cat([t.reshape(-1) for t in present]))
        parts = iter(p.view_as(t) for p, t in zip(flat.split([t.numel() for t in present]), present))
        return [None if t is None else next(parts) for t in tensors]
    with torch.no_grad():
        for bucket in _buckets(present):
            flat = torch.cat([t.reshape(-1) for t in bucket])
            dist.all_reduce(flat)
            flat.div_(dist.get_world_size())
            for t, part in zip(bucket, flat.split([t.numel() for t in bucket])):
                t.copy_(part.view_as(t))
    return list(tensors)


def average_step(params: Iterable[torch.nn.Parameter], metrics: Mapping[str, float], device: torch.device) -> dict[str, float]:
    """Replace each `.grad` by its mean over ranks and return the step's metrics averaged the same way.

    Afterwards every rank holds bit-identical gradients and metrics, so clipping
    and the NaN/Inf skip decide alike without another collective.
    """
    names = sorted(metrics)
    values = torch.tensor([float(metrics[k]) for k in names], dtype=torch.float32, device=device)
    all_mean([p.grad for p in params if p.grad is not None] + [values])
    return dict(zip(names, values.tolist()))


def from_main(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (picklable objects only)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def decide(stop_early: bool, signum: int | None, device: torch.device) -> tuple[bool, int | None]:
    """(rank 0's early-stop decision, a stop signal received by any rank) on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return stop_early, signum
    # Only rank 0 validates, so only its early-stop flag can be set; a signal
    # may reach any rank (or each at a different step): all stop at the same step.
    flags = torch.tensor([int(stop_early and dist.get_rank() == 0), signum or 0], device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return bool(flags[0]), int(flags[1]) or None


def check_agree(value: Any, what: str) -> None:
    """Raise on every rank unless all ranks hold the same `value` (e.g. the step a resumed run continues from)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    if any(v != values[0] for v in values):
        raise RuntimeError(f"ranks disagree on {what}: {values} (rank order)")
