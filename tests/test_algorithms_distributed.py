"""Data-parallel training over two gloo ranks against one process on the global batch, per DG algorithm.

Each rank takes its half of every domain's global batch, the algorithm runs with
`reduce = all_mean` and `.grad` is averaged as the Trainer does; the result must
match one process that sees the whole batch where the method is defined on the
global batch. Where it is per-rank by design the test asserts that it DIFFERS,
documenting which algorithms are exact under DDP and which are not:

* exact:    ERM-based SAM, EMA, mixup (inputs and embeddings), Fish, Reptile
* per-rank: CORAL, MMD (the feature statistics of each rank's own samples)

DANN, SWAD and MIRO (stateful / per-rank designs) are not covered here.
"""

from __future__ import annotations


import pytest
import torch
from torch import nn

from metadg.algorithms.coral import CORAL, FeaturePenaltyConfig
from metadg.algorithms.ema import EMA, EMAConfig
from metadg.algorithms.fish import Fish, FishConfig
from metadg.algorithms.mixup import Mixup, MixupConfig
from metadg.algorithms.mmd import MMD, MMDConfig
from metadg.algorithms.reptile import Reptile, ReptileConfig
from metadg.algorithms.sam import SAM, SAMConfig
from metadg.engine import distributed
from tiny_nets import FeatNet, make_batches
from two_ranks import rank_half, run_two_ranks

N = 8  # global samples per domain; each rank takes 4


# name -> (class, config, exact under DDP?)
CASES = {
    "coral": (CORAL, FeaturePenaltyConfig(gamma=5.0), False),  # per rank: moments of each rank's own samples
    "coral_gamma0": (CORAL, FeaturePenaltyConfig(gamma=0.0), True),  # ...so without the penalty it is exact
    "mmd": (MMD, MMDConfig(gamma=5.0, bandwidths=[0.1, 1.0, 10.0]), False),  # per rank: kernel means of each rank's samples
    "mixup_inputs": (Mixup, MixupConfig(alpha=0.4), True),
    "mixup_embeddings": (Mixup, MixupConfig(alpha=0.4, mix="embeddings"), True),
    "sam": (SAM, SAMConfig(rho=0.3), True),
    "ema": (EMA, EMAConfig(decay=0.5), True),
    "fish": (Fish, FishConfig(meta_lr=0.5, inner_lr=0.4), True),
    "reptile": (Reptile, ReptileConfig(meta_lr=0.7, inner_steps=2, domains_per_step=2, inner_lr=0.4), True),
}
# Those whose own update uses `self.reduce`: turning it off must make the two-rank run differ.
NEEDS_REDUCE = ("sam", "fish", "reptile")


def _steps(name, batches_per_step, reduce=None):
    """Two training steps as the Trainer takes them; the averaged gradients (or the weights, EMA's average too)."""
    cls, cfg, _ = CASES[name]
    torch.manual_seed(3)
    net = FeatNet()
    params = {k: p for k, p in net.named_parameters() if p.requires_grad}
    algo = cls(cfg, net, params, nn.CrossEntropyLoss(), seed=5)  # every rank: the same seed, as in the Trainer
    if reduce is not None:
        algo.reduce = reduce
    opt = torch.optim.SGD(params.values(), lr=0.5)
    out = []
    for step, batches in enumerate(batches_per_step, 1):
        opt.zero_grad()
        algo.lr = 0.4
        algo.update(batches)
        if not algo.owns_step:
            distributed.all_mean([p.grad for p in params.values()])  # what the Trainer does with .grad
            out += [p.grad.detach().clone() for p in params.values()]
            opt.step()
        algo.after_step(step)
    out += [p.detach().clone() for p in params.values()]
    if algo.eval_weights() is not None:
        out += [t.detach().clone().double() for t in algo.eval_weights().values()]
    return out


def _global_steps():
    return [make_batches(n=N, seed=s) for s in range(2)]


def _rank_work(rank):
    steps = [rank_half(batches, rank) for batches in _global_steps()]
    out = {name: _steps(name, steps, distributed.all_mean) for name in CASES}
    out.update({f"{name}_no_reduce": _steps(name, steps) for name in NEEDS_REDUCE})
    return {k: [t.numpy() for t in v] for k, v in out.items()}


@pytest.fixture(scope="module")
def two_rank_results():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        got = run_two_ranks(_rank_work)
        single = {name: _steps(name, _global_steps()) for name in CASES}
    finally:
        torch.set_default_dtype(old)
    return got, single


def _close(a, b):
    return len(a) == len(b) and all(torch.allclose(torch.from_numpy(x), y, rtol=1e-7, atol=1e-9) for x, y in zip(a, b))


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_against_one_process_on_the_global_batch(two_rank_results, name):
    got, single = two_rank_results
    exact = CASES[name][2]
    if exact:
        # Defined on the global batch: per-sample terms with equal halves, the rank-mean inside update()
        # (SAM's ε, Fish/Reptile's inner steps) and the Trainer's mean of .grad give the global result.
        for g, want in zip(got[name], single[name], strict=True):
            torch.testing.assert_close(torch.from_numpy(g), want, msg=name)
    else:
        # Per rank by design: the penalty's statistics (CORAL's means/covariances, MMD's kernel means)
        # are taken over each rank's own samples, so the mean of the ranks' gradients is not the
        # global-batch gradient. The test detects that difference.
        assert not _close(got[name], single[name]), f"{name} unexpectedly matches the global batch"


@pytest.mark.parametrize("name", NEEDS_REDUCE)
def test_without_the_rank_mean_inside_update_the_result_differs(two_rank_results, name):
    got, single = two_rank_results
    assert not _close(got[f"{name}_no_reduce"], single[name]), name
