"""MIRO (Cha et al. 2022): keep the features mutually informative with the pre-trained model's (oracle) features."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Mapping

import torch
from pydantic import Field
from torch import nn
from torch.func import functional_call

from metadg.algorithms.base import Algorithm
from metadg.config import StrictModel
from metadg.engine.batch import Batch
from metadg.models.heads import masked_mean
from metadg.registry import ALGORITHMS

EPS = 1e-5  # floor of σ², as in the reference's VarianceEncoder


class MIROConfig(StrictModel):
    """Weight of the mutual-information penalty and the initial variance."""

    ld: float = Field(0.1, ge=0, description="weight λ of the MI penalty added to the task loss (`ld` in the reference)")
    var_init: float = Field(0.1, gt=EPS, description="initial σ² of every feature dimension (reference: 0.1)")


def _is_peft(module: nn.Module | None) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft ships with the LoRA adapter
        return False
    return isinstance(module, PeftModel)


@contextlib.contextmanager
def _adapters_disabled(module: nn.Module) -> Iterator[None]:
    """LoRA layers injected into `module` (a from-scratch backbone, no PeftModel around it) run as their base layer."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in module.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


@ALGORITHMS.register("miro")
class MIRO(Algorithm):
    """Task loss + λ·mean[log σ² + (f_pre − μ(f))² / σ²] over batch and feature dims.

    f: the backbone's frame features mean-pooled over valid frames, one feature level
    (DomainBed-MIRO regularises several intermediate blocks; here only the backbone output).
    The logits come from the same backbone pass (`head.embed`/`classify`): a step costs one
    backbone forward with grad and at most one without.

    f_pre, the pre-trained backbone's feature, is computed under `torch.no_grad` (no backward
    through it), in eval mode (no dropout/layerdrop/masking in the target), never by a second
    module. How is decided from the model:

    * no `backbone.` parameter trains (head_only): the backbone is the pre-trained model, so
      f_pre = f.detach() of the same pass, and the penalty only trains μ and σ²;
    * `model.backbone.model` is a peft `PeftModel` (LoRA): the backbone runs inside
      `disable_adapter()`; with the adapters bypassed the frozen base weights are exactly the
      pre-trained model;
    * otherwise (full fine-tuning): the trainable backbone tensors are copied when the algorithm
      is built (before any step or resume restore, so a resumed run needs not save them) and
      f_pre = `functional_call(model.backbone, initial, (inputs, lengths))`: one extra copy of
      the trainable backbone weights in memory, but no second module. The same (tiny) copy puts
      back other trainable backbone tensors, e.g. `layer_weights`, under LoRA or head_only.

    μ = Linear(H, H), identity-initialised (the reference's mean encoder is a fixed identity), and
    σ² = softplus(b) + 1e-5 with σ² = `var_init` at the start (the reference's VarianceEncoder)
    are the algorithm's own parameters, created at the first update on the features' device.
    Their own AdamW (lr = the Trainer's scheduled `self.lr`, no weight decay) steps inside
    update() after backward, on gradients averaged over data-parallel ranks by `self.reduce`
    (every rank takes the same step); a non-finite loss or gradient skips it (and the Trainer's
    step). With train.grad_accum > 1 they step once per draw. The penalty is REFERENCE.md's
    constant-free Gaussian NLL; the kakaobrain code halves it (its ld = 0.1 is λ = 0.05 here).
    """

    Config = MIROConfig

    def __init__(self, cfg, model, params, loss_fn, *, seed: int = 0) -> None:
        super().__init__(cfg, model, params, loss_fn, seed=seed)
        self.mean: nn.Linear | None = None
        self.log_var_raw: nn.Parameter | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._pending: Mapping | None = None
        bb = "backbone."
        self.trains_backbone = any(n.startswith(bb) for n in self.params)
        self.initial = {n[len(bb):]: p.detach().clone() for n, p in self.params.items()
                        if n.startswith(bb) and ".lora_" not in n}

    def _ensure(self, h: int, like: torch.Tensor) -> None:
        """Create μ, σ² and their optimizer for width `h` (once), then apply a pending loaded state."""
        if self.mean is None:
            dtype = torch.promote_types(like.dtype, torch.float32)
            self.mean = nn.Linear(h, h, device=like.device, dtype=dtype)
            nn.init.eye_(self.mean.weight), nn.init.zeros_(self.mean.bias)
            raw = math.log(math.expm1(self.cfg.var_init - EPS))  # softplus⁻¹(var_init − eps)
            self.log_var_raw = nn.Parameter(torch.full((h,), raw, device=like.device, dtype=dtype))
            self.optimizer = torch.optim.AdamW(self.aux_parameters(), lr=self.lr, weight_decay=0.0)
        if self._pending is not None:
            state, self._pending = self._pending, None
            with torch.no_grad():
                self.mean.weight.copy_(state["mean.weight"])
                self.mean.bias.copy_(state["mean.bias"])
                self.log_var_raw.copy_(state["log_var_raw"])
            self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))  # never alias the given state

    def aux_parameters(self) -> list[nn.Parameter]:
        """μ's weight and bias and σ²'s raw parameter (empty before the first update)."""
        return [] if self.mean is None else [self.mean.weight, self.mean.bias, self.log_var_raw]

    def variance(self) -> torch.Tensor:
        """σ² per feature dimension."""
        return nn.functional.softplus(self.log_var_raw) + EPS

    def pretrained_features(self, batch: Batch) -> torch.Tensor:
        """f_pre of `batch` from the pre-trained backbone (no grad, eval mode, no second module)."""
        backbone = self.model.backbone
        hf = getattr(backbone, "model", None)  # a transformer inside (ssl), or none (from-scratch detectors)
        ctx = hf.disable_adapter() if _is_peft(hf) else _adapters_disabled(backbone)
        was_training = backbone.training
        backbone.eval()
        try:
            with torch.no_grad(), ctx:
                self.initial = {k: v.to(batch.inputs.device) for k, v in self.initial.items()}
                feats, mask = functional_call(backbone, self.initial, (batch.inputs, batch.lengths))
        finally:
            backbone.train(was_training)
        return masked_mean(feats, mask)

    def penalty(self, f: torch.Tensor, f_pre: torch.Tensor) -> torch.Tensor:
        """mean over batch and dims of log σ² + (f_pre − μ(f))² / σ²."""
        dtype = self.mean.weight.dtype
        with torch.autocast(f.device.type, enabled=False):  # μ in full precision under AMP
            var = self.variance()
            return (var.log() + (f_pre.to(dtype) - self.mean(f.to(dtype))).pow(2) / var).mean()

    def update(self, batches: Mapping[str, Batch]) -> dict[str, float]:
        """Leave ∇(task loss + λ·penalty) in `.grad` of the trainable params; step μ and σ²."""
        batch, head = Batch.cat(list(batches.values())), self.model.head
        feats, mask = self.model.backbone(batch.inputs, batch.lengths)
        # (a third-party head without the embed/classify split gives logits directly)
        logits = self.model.classify(head.embed(feats, mask)) if hasattr(head, "embed") else head(feats, mask)
        f = masked_mean(feats, mask)
        f_pre = self.pretrained_features(batch) if self.trains_backbone else f.detach()
        self._ensure(f.shape[-1], f)
        loss_task = self.loss_fn(logits, batch.labels)
        penalty = self.penalty(f, f_pre)
        loss = loss_task + self.cfg.ld * penalty
        aux = self.aux_parameters()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for p, g in zip(aux, self.reduce([p.grad for p in aux])):
            p.grad = g
        if math.isfinite(float(loss.detach())) and all(bool(p.grad.isfinite().all()) for p in aux):
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        t, r = float(loss_task.detach()), float(penalty.detach())
        return {"loss": t + self.cfg.ld * r, "loss_task": t, "penalty": r}

    def state_dict(self) -> dict:
        """Generator state plus μ, σ² and their optimizer state (once created)."""
        state = super().state_dict()
        if self._pending is not None:
            state["miro"] = self._pending
        elif self.mean is not None:
            state["miro"] = {
                "mean.weight": self.mean.weight.detach().clone(), "mean.bias": self.mean.bias.detach().clone(),
                "log_var_raw": self.log_var_raw.detach().clone(), "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            }
        return state

    def load_state_dict(self, state: Mapping) -> None:
        """Restore `state_dict`; μ/σ² are created at the next update if they do not exist yet."""
        super().load_state_dict(state)
        if "miro" in state:
            self._pending = state["miro"]
            if self.mean is not None:
                self._ensure(self.mean.in_features, self.mean.weight)
