"""Inter-domain mixup (Yan et al. 2020, DomainBed's Mixup): train on convex mixtures of two domains' batches."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from metadg.algorithms.base import Algorithm
from metadg.config import StrictModel
from metadg.engine.batch import Batch
from metadg.registry import ALGORITHMS


class MixupConfig(StrictModel):
    """Mixing distribution and what gets mixed."""

    alpha: float = Field(0.2, gt=0, description="λ ~ Beta(α, α) per domain pair and step (Yan et al. 2020; "
                         "DomainBed's mixup_alpha)")
    mix: Literal["inputs", "embeddings"] = Field(
        "inputs", description="inputs: mix the waveforms (the paper's input-level mixup); embeddings: mix the "
        "utterance embeddings and classify the mixture with the head's output layer (manifold mixup; cheaper, "
        "the backbone sees only real audio)")


def mix_inputs(bi: Batch, bj: Batch, lam: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """λ·x_i + (1 − λ)·x_j over the first min(n_i, n_j) samples and the common crop; the mixture's valid lengths."""
    n, t = min(len(bi), len(bj)), min(bi.inputs.shape[-1], bj.inputs.shape[-1])
    x = lam * bi.inputs[:n, :t] + (1 - lam) * bj.inputs[:n, :t]
    if bi.lengths is None and bj.lengths is None:
        return x, None
    full = torch.full((n,), t, device=x.device)
    li = full if bi.lengths is None else bi.lengths[:n].clamp_max(t)
    lj = full if bj.lengths is None else bj.lengths[:n].clamp_max(t)
    return x, torch.minimum(li, lj)  # past either sample's end the mixture is one sample plus padding


@ALGORITHMS.register("mixup")
class Mixup(Algorithm):
    """Pair the domains in a random cycle; each pair trains on λ-mixtures with the λ-weighted loss of both labels.

    `last_pairs` and `last_lams` hold the step's (domain_i, domain_j) pairs and their λ.
    """

    Config = MixupConfig

    def draw(self, domains: list[str]) -> tuple[list[tuple[str, str]], list[float]]:
        """DomainBed's random_pairs_of_minibatches: a random permutation, each domain paired with the next (cyclic), one λ per pair."""
        order = [domains[i] for i in torch.randperm(len(domains), generator=self.generator).tolist()]
        pairs = [(d, order[(k + 1) % len(order)]) for k, d in enumerate(order)]
        # torch has no seeded Beta sampler; a numpy Generator seeded from our own generator is
        # exactly reproducible, and resumes with it (its seed is drawn afresh every step).
        rng = np.random.default_rng(int(torch.randint(2**62, (), generator=self.generator)))
        return pairs, rng.beta(self.cfg.alpha, self.cfg.alpha, size=len(pairs)).tolist()

    def update(self, batches: Mapping[str, Batch]) -> dict[str, float]:
        """One forward over all pairs' mixtures (inputs) or over the pooled batch (embeddings); loss = mean over pairs."""
        pairs, lams = self.draw(sorted(batches))
        self.last_pairs, self.last_lams = pairs, lams
        if self.cfg.mix == "inputs":
            mixed = [mix_inputs(batches[i], batches[j], lam) for (i, j), lam in zip(pairs, lams)]
            sizes = [len(x) for x, _ in mixed]
            logits = self.forward(self._pool(mixed)).split(sizes)
        else:
            domains = sorted(batches)
            _, z = self.forward(Batch.cat([batches[d] for d in domains]), embedding=True)
            emb = dict(zip(domains, z.split([len(batches[d]) for d in domains])))
            mixes = []
            for (i, j), lam in zip(pairs, lams):
                n = min(len(batches[i]), len(batches[j]))
                mixes.append(lam * emb[i][:n] + (1 - lam) * emb[j][:n])
            logits = self.model.classify(torch.cat(mixes)).split([len(m) for m in mixes])
        terms = []
        for (i, j), lam, lg in zip(pairs, lams, logits):
            n = len(lg)
            terms.append(lam * self.loss_fn(lg, batches[i].labels[:n]) + (1 - lam) * self.loss_fn(lg, batches[j].labels[:n]))
        loss = torch.stack(terms).mean()
        loss.backward()
        return {"loss": float(loss.detach()), "lambda_mean": float(np.mean(lams))}

    @staticmethod
    def _pool(mixed: list[tuple[torch.Tensor, torch.Tensor | None]]) -> Batch:
        # Pairs of different crops give mixtures of different lengths: zero-pad to the
        # longest and say where each ends, so one forward covers every pair.
        # (Labels stay with the pairs: each mixture has two.)
        t = max(x.shape[-1] for x, _ in mixed)
        no_labels = torch.empty(0, dtype=torch.long)
        if all(x.shape[-1] == t and n is None for x, n in mixed):
            return Batch(torch.cat([x for x, _ in mixed]), no_labels)
        inputs = torch.cat([torch.nn.functional.pad(x, (0, t - x.shape[-1])) for x, _ in mixed])
        lengths = torch.cat([torch.full((len(x),), x.shape[-1], device=x.device) if n is None else n for x, n in mixed])
        return Batch(inputs, no_labels, lengths)
