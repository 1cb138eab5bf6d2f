"""Data-parallel training over two gloo ranks against one process on the global batch, per DG algorithm.

Each rank takes its half of every domain's global batch, the algorithm runs with
`reduce = all_mean` and `.grad` is averaged as the Trainer does; the result must
match one process that sees the whole batch where the method is defined on the
global batch. Where it is per-rank by design the test asserts that it DIFFERS,
documenting which algorithms are exact under DDP and which are not:

* exact:    ERM-based SAM, EMA, SWAD, mixup (inputs and embeddings), Fish, Reptile, DANN (its
            discriminator's gradients are rank-means, so the discriminators stay equal), MIRO (μ and σ²
            likewise; the pre-trained features are per sample)
* per-rank: CORAL, MMD (the feature statistics of each rank's own samples)

GroupDRO, VREx and IRM are covered in test_algorithms_penalties.py.
"""

from __future__ import annotations


import pytest
import torch
from torch import nn

from metadg.algorithms.coral import CORAL, FeaturePenaltyConfig
from metadg.algorithms.dann import DANN, DANNConfig
from metadg.algorithms.ema import EMA, EMAConfig
from metadg.algorithms.fish import Fish, FishConfig
from metadg.algorithms.miro import MIRO, MIROConfig
from metadg.algorithms.mixup import Mixup, MixupConfig
from metadg.algorithms.mmd import MMD, MMDConfig
from metadg.algorithms.reptile import Reptile, ReptileConfig
from metadg.algorithms.sam import SAM, SAMConfig
from metadg.algorithms.swad import SWAD, SWADConfig
from metadg.config import validate_plugin
from metadg.engine import distributed
from metadg.engine.batch import Batch
from metadg.models import build_model
from metadg.registry import ADAPTERS, HEADS, MODELS
from tiny_nets import FeatNet, make_batches
from two_ranks import rank_half, run_two_ranks

N = 8  # global samples per domain; each rank takes 4
STEPS = 4
DEV_LOSS = [1.0, 0.8, 0.9, 2.0]  # what each step's validation reports to after_eval: SWAD's window is steps 1-3


def tiny_ssl():
    """The tiny wav2vec2 preset with LoRA (dropout off): MIRO needs a backbone whose adapters it can switch off."""
    backbone = validate_plugin(MODELS, {"name": "ssl", "preset": "tiny", "config": {
        "hidden_dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, "feat_proj_dropout": 0.0,
        "layerdrop": 0.0, "mask_time_prob": 0.0}}, "backbone")
    model = build_model(backbone, validate_plugin(HEADS, "linear", "head"))
    validate_plugin(ADAPTERS, {"name": "lora", "r": 2}, "adapter").build().apply(model)
    with torch.no_grad():  # LoRA B starts at 0: give the adapters a nonzero effect to disable
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    return model


def audio_batches(n, seed):
    """Two domains of n random 0.2 s waveforms with balanced labels."""
    g = torch.Generator().manual_seed(seed)
    return {f"d{i}": Batch(torch.randn(n, 3200, generator=g), torch.arange(n) % 2) for i in range(2)}


# name -> (class, config, exact under DDP?)
CASES = {
    "coral": (CORAL, FeaturePenaltyConfig(gamma=5.0), False),  # per rank: moments of each rank's own samples
    "coral_gamma0": (CORAL, FeaturePenaltyConfig(gamma=0.0), True),  # ...so without the penalty it is exact
    "mmd": (MMD, MMDConfig(gamma=5.0, bandwidths=[0.1, 1.0, 10.0]), False),  # per rank: kernel means of each rank's samples
    "mixup_inputs": (Mixup, MixupConfig(alpha=0.4), True),
    "mixup_embeddings": (Mixup, MixupConfig(alpha=0.4, mix="embeddings"), True),
    "sam": (SAM, SAMConfig(rho=0.3), True),
    "ema": (EMA, EMAConfig(decay=0.5), True),
    "swad": (SWAD, SWADConfig(n_converge=1, n_tolerance=1, tolerance_ratio=0.3), True),
    "dann": (DANN, DANNConfig(width=6, lam=0.7), True),
    "miro": (MIRO, MIROConfig(ld=0.5), True),
    "fish": (Fish, FishConfig(meta_lr=0.5, inner_lr=0.4), True),
    "reptile": (Reptile, ReptileConfig(meta_lr=0.7, inner_steps=2, domains_per_step=2, inner_lr=0.4), True),
}
# Those whose own update uses `self.reduce`: turning it off must make the two-rank run differ.
NEEDS_REDUCE = ("sam", "fish", "reptile", "dann", "miro")


def _steps(name, batches_per_step, reduce=None):
    """Two training steps as the Trainer takes them; the averaged gradients (or the weights, EMA's average too)."""
    cls, cfg, _ = CASES[name]
    torch.manual_seed(3)
    net = tiny_ssl().train() if name == "miro" else FeatNet()
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
            for p in params.values():  # (DANN's discriminator-only updates leave the model without gradients)
                p.grad = torch.zeros_like(p) if p.grad is None else p.grad
            distributed.all_mean([p.grad for p in params.values()])  # what the Trainer does with .grad
            out += [p.grad.detach().clone() for p in params.values()]
            opt.step()
        algo.after_step(step)
        algo.after_eval(step, {"loss": DEV_LOSS[step - 1]})
    out += [p.detach().clone() for p in params.values()]
    for weights in (algo.eval_weights(), algo.final_weights()):
        if weights is not None:
            out += [t.detach().clone().double() for t in weights.values()]
    if name == "swad":
        assert algo.final_weights() is not None  # the window closed: its mean is compared
    own = getattr(algo, "discriminator", None) or getattr(algo, "mean", None)
    if own is not None:  # DANN's discriminator, MIRO's μ (and σ²): the algorithm's own trained state
        out += [p.detach().clone() for p in [*own.parameters(), *getattr(algo, "aux_parameters", list)()]]
    return out


def _global_steps(name=""):
    if name == "miro":
        return [audio_batches(N // 2, seed=s) for s in range(STEPS)]
    return [make_batches(n=N, seed=s) for s in range(STEPS)]


def _rank_work(rank):
    def half(name):
        return [rank_half(batches, rank) for batches in _global_steps(name)]

    out = {name: _steps(name, half(name), distributed.all_mean) for name in CASES}
    out.update({f"{name}_no_reduce": _steps(name, half(name)) for name in NEEDS_REDUCE})
    return {k: [t.numpy() for t in v] for k, v in out.items()}


@pytest.fixture(scope="module")
def two_rank_results():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        got = run_two_ranks(_rank_work)
        single = {name: _steps(name, _global_steps(name)) for name in CASES}
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
