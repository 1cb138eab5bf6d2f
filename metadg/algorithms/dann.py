"""DANN (Ganin et al. 2016): domain-adversarial training of the embedding through a gradient reversal layer."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from pydantic import AliasChoices, Field
from torch import nn

from metadg.algorithms.base import Algorithm
from metadg.config import StrictModel
from metadg.engine.batch import Batch
from metadg.registry import ALGORITHMS


class DANNConfig(StrictModel):
    """Discriminator and adversarial weight (DomainBed's defaults)."""

    lam: float = Field(1.0, ge=0, validation_alias=AliasChoices("lam", "lambda"),
                       description="λ: the gradient reversal layer's scale, weight of the domain confusion term "
                       "(Ganin et al. 2016; DomainBed's lambda)")
    d_steps_per_g_step: int = Field(1, ge=0, description="discriminator-only updates before every generator "
                                    "update, as DomainBed alternates; 0 = Ganin et al.'s simultaneous training "
                                    "(every update trains both)")
    width: int = Field(256, ge=1, description="discriminator MLP hidden width (DomainBed's mlp_width)")
    depth: int = Field(3, ge=2, description="discriminator MLP linear layers (DomainBed's mlp_depth)")
    dropout: float = Field(0.0, ge=0, lt=1, description="discriminator MLP dropout (DomainBed's mlp_dropout)")
    d_lr: float = Field(1e-3, gt=0, description="discriminator Adam learning rate (DomainBed's lr_d)")
    d_weight_decay: float = Field(0.0, ge=0, description="discriminator Adam weight decay")
    d_beta1: float = Field(0.5, ge=0, lt=1, description="discriminator Adam β1 (0.5 per DomainBed)")


class GradReverse(torch.autograd.Function):
    """Identity forward; the backward pass multiplies the gradient by −λ."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lam: float) -> torch.Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.lam * grad, None


def mlp(n_in: int, n_out: int, width: int, depth: int, dropout: float) -> nn.Sequential:
    """DomainBed's MLP: `depth` linear layers, dropout and ReLU between them."""
    dims = [n_in] + [width] * (depth - 1)
    layers: list[nn.Module] = []
    for a, b in zip(dims, dims[1:]):
        layers += [nn.Linear(a, b), nn.Dropout(dropout), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(dims[-1], n_out))


@ALGORITHMS.register("dann")
class DANN(Algorithm):
    """Learn embeddings a domain discriminator cannot tell apart, while classifying well.

    The discriminator is the algorithm's own module, outside the model's trainable
    set, so the Trainer's optimizer never sees it: it is built at the first update
    (the number of domains and its device are known only then), stepped here by its
    own Adam, and checkpointed with its optimizer state through `state_dict`. Under
    data parallelism its gradients are averaged with `self.reduce` before every step,
    so every rank's discriminator stays identical (they start from one seed).

    Updates alternate on a counter kept in the state: `d_steps_per_g_step`
    discriminator-only updates (the model gets no gradient; the Trainer's step then
    changes nothing but still counts and schedules), then one generator update with
    task loss + domain loss through the reversal layer, which the discriminator does
    not step on. Every `update()` call counts, so with grad_accum > 1 the kinds alternate by draw.
    """

    Config = DANNConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.updates = 0
        self.domains: list[str] | None = None
        self.discriminator: nn.Module | None = None
        self.d_optimizer: torch.optim.Optimizer | None = None
        self._pending: Mapping[str, Any] | None = None  # restored state waiting for the lazy build

    def setup_discriminator(self, domains: list[str], device: torch.device) -> nn.Module:
        """Build discriminator and optimizer for `domains` (once), loading restored state if there is some."""
        if self.domains is not None and domains != self.domains:
            raise ValueError(f"dann: the discriminator was built for domains {self.domains}, got {domains}")
        if self.discriminator is not None:
            return self.discriminator
        cfg, dtype, pending = self.cfg, next(iter(self.params.values())).dtype, self._pending
        # Initialise from the algorithm's generator, without touching the global RNG that
        # dropout and the batcher use: a run resumed before the build would otherwise drift.
        init_seed = 0 if pending else int(torch.randint(2**62, (), generator=self.generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            disc = mlp(self.model.embed_dim, len(domains), cfg.width, cfg.depth, cfg.dropout)
        self.discriminator, self.domains = disc.to(device=device, dtype=dtype), list(domains)
        self.d_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.d_lr,
                                            betas=(cfg.d_beta1, 0.999), weight_decay=cfg.d_weight_decay)
        if pending:
            self.discriminator.load_state_dict(pending["discriminator"])
            self.d_optimizer.load_state_dict(pending["d_optimizer"])
        self._pending = None
        return self.discriminator

    def update(self, batches: Mapping[str, Batch]) -> dict[str, float]:
        """One discriminator-only or one generator update, by the alternation counter."""
        cfg, domains, k = self.cfg, sorted(batches), self.cfg.d_steps_per_g_step
        pooled = Batch.cat([batches[d] for d in domains])
        d_only = k > 0 and self.updates % (k + 1) < k
        self.updates += 1
        # A discriminator-only update needs no graph through the backbone.
        with torch.set_grad_enabled(not d_only):
            logits, z = self.forward(pooled, embedding=True)
            task = self.loss_fn(logits, pooled.labels)
        disc = self.setup_discriminator(domains, z.device)
        disc.train(self.model.training)
        target = torch.cat([torch.full((len(batches[d]),), i, device=z.device) for i, d in enumerate(domains)])
        feats = z.detach() if d_only else GradReverse.apply(z, cfg.lam)
        d_loss = nn.functional.cross_entropy(disc(feats).float(), target)
        self.d_optimizer.zero_grad(set_to_none=True)
        # The featurizer sees −λ∇d_loss through the reversal; the discriminator gets +∇d_loss.
        (d_loss if d_only else task + d_loss).backward()
        if d_only or k == 0:
            self._step_discriminator()
        else:  # generator update: DomainBed leaves the discriminator as it is
            self.d_optimizer.zero_grad(set_to_none=True)
        t, d = float(task.detach()), float(d_loss.detach())
        return {"loss": t - cfg.lam * d, "loss_task": t, "loss_domain": d, "disc_step": float(d_only or k == 0)}

    def _step_discriminator(self) -> None:
        params = [p for p in self.discriminator.parameters() if p.grad is not None]
        grads = self.reduce([p.grad for p in params])  # mean over ranks: the discriminators stay equal
        for p, g in zip(params, grads):  # (a reduction may return new tensors)
            p.grad = g
        # Like the Trainer's NaN skip: a non-finite discriminator gradient must not reach its weights.
        if grads and bool(torch.stack([g.isfinite().all() for g in grads]).all()):
            self.d_optimizer.step()
        self.d_optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        """Generator, update counter, domains, discriminator weights and its optimizer state (copies)."""
        state: dict[str, Any] = {**super().state_dict(), "updates": self.updates, "domains": self.domains}
        if self.discriminator is not None:
            state["discriminator"] = {k: v.detach().clone() for k, v in self.discriminator.state_dict().items()}
            state["d_optimizer"] = copy.deepcopy(self.d_optimizer.state_dict())
        elif self._pending:
            state.update({k: copy.deepcopy(self._pending[k]) for k in ("discriminator", "d_optimizer")})
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        super().load_state_dict(state)
        self.updates = int(state["updates"])
        self.domains = None if state.get("domains") is None else list(state["domains"])
        self.discriminator = self.d_optimizer = None  # rebuilt, with this state, at the next update
        self._pending = copy.deepcopy(dict(state)) if "discriminator" in state else None
