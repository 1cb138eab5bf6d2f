"""GroupDRO, V-REx and IRM against independent computations, through the Trainer, and under two ranks."""

from __future__ import annotations

import copy
import json
import math
import os
import signal

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from metadg.algorithms.groupdro import GroupDRO, GroupDROConfig
from metadg.algorithms.irm import IRM, IRMConfig
from metadg.algorithms.vrex import VREx, VRExConfig
from metadg.cli import main
from metadg.config import ConfigError, build_experiment, validate_plugin
from metadg.engine import distributed
from metadg.engine.batch import Batch
from metadg.engine.checkpoint import pack_state, read_checkpoint, unpack_state
from metadg.engine.resume import StopRequested
from metadg.engine.trainer import Trainer
from metadg.registry import ALGORITHMS
from tiny_nets import TinyNet, manual_logits
from two_ranks import rank_half, run_two_ranks


def weighted_ce(z, y, w):
    """Class-weighted cross-entropy written out: Σ w_y·(−log p_y) / Σ w_y."""
    return -(w[y] * torch.log_softmax(z, 1).gather(1, y[:, None])[:, 0]).sum() / w[y].sum()


def manual_losses(theta, net, batches, w=None):
    w = torch.ones(2) if w is None else w
    return torch.stack([weighted_ce(manual_logits(theta, net, batches[d]), batches[d].labels, w) for d in sorted(batches)])


def make_batches(n_domains=3, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Inserted in reverse order: the algorithms must key domains by sorted name, not by dict order.
    return {f"d{i}": Batch(torch.randn(n, 6, generator=g), torch.randint(0, 2, (n,), generator=g))
            for i in reversed(range(n_domains))}


def setup(cls, cfg, seed=0, loss_fn=None):
    torch.manual_seed(seed)
    net = TinyNet()
    params = {k: p for k, p in net.named_parameters() if p.requires_grad}
    return net, params, cls(cfg, net, params, loss_fn or nn.CrossEntropyLoss()), torch.optim.SGD(params.values(), lr=0.5)


def detached(params):
    return {k: p.detach().clone().requires_grad_() for k, p in params.items()}


def assert_grads(params, expected):
    for (name, p), exp in zip(params.items(), expected):
        torch.testing.assert_close(p.grad, exp, msg=name)


def test_groupdro_q_is_the_closed_form_and_the_gradient_that_of_the_weighted_loss(double_precision):
    eta = 0.8
    net, params, algo, opt = setup(GroupDRO, GroupDROConfig(eta=eta))
    total = torch.zeros(3)
    for t in range(3):
        batches = make_batches(seed=t)
        theta = detached(params)
        losses = manual_losses(theta, net, batches)
        total += losses.detach()
        opt.zero_grad()
        metrics = algo.update(batches)
        q = torch.softmax(eta * total, 0)  # q_0 uniform, q_t ∝ exp(η·Σ_s ℓ_s)
        torch.testing.assert_close(algo.q, q)
        assert [metrics[f"q/d{i}"] for i in range(3)] == pytest.approx(q.tolist())
        assert metrics["loss"] == pytest.approx(float((q * losses).sum().detach()))
        assert_grads(params, torch.autograd.grad((q * losses).sum(), list(theta.values())))
        opt.step()
    assert not torch.allclose(algo.q, torch.full((3,), 1 / 3), atol=1e-2)  # q really moved


def test_groupdro_state_round_trip_continues_identically(double_precision):
    net, params, algo, opt = setup(GroupDRO, GroupDROConfig(eta=0.5))
    for t in range(2):
        opt.zero_grad(), algo.update(make_batches(seed=t)), opt.step()
    tensors = {}  # through the checkpoint's JSON packing, as a resumed run reads it
    state = unpack_state(json.loads(json.dumps(pack_state(algo.state_dict(), tensors))), tensors)
    net2 = copy.deepcopy(net)
    params2 = {k: p for k, p in net2.named_parameters() if p.requires_grad}
    algo2 = GroupDRO(GroupDROConfig(eta=0.5), net2, params2, nn.CrossEntropyLoss(), seed=9)
    algo2.load_state_dict(state)
    opt2 = torch.optim.SGD(params2.values(), lr=0.5)
    for t in range(2, 4):
        for a, o in ((algo, opt), (algo2, opt2)):
            o.zero_grad(), a.update(make_batches(seed=t))
        assert torch.equal(algo.q, algo2.q) and algo.generator.get_state().equal(algo2.generator.get_state())
        assert all(torch.equal(params[k].grad, params2[k].grad) for k in params)
        opt.step(), opt2.step()


def test_groupdro_refuses_other_domains_and_keeps_q_on_a_nan_step(double_precision):
    _, _, algo, _ = setup(GroupDRO, GroupDROConfig())
    batches = make_batches()
    algo.update(batches)
    q = algo.q.clone()
    bad = {**batches, "d0": Batch(torch.full((6, 6), math.nan), batches["d0"].labels)}
    assert not math.isfinite(algo.update(bad)["loss"])
    assert torch.equal(algo.q, q)  # the Trainer skips that step; q must not carry its NaN on
    with pytest.raises(ValueError, match=r"differ from the first step's \['d0', 'd1', 'd2'\]"):
        algo.update(make_batches(n_domains=2))


def test_vrex_gradient_is_that_of_mean_plus_weighted_variance_before_and_after_annealing(double_precision):
    cfg = VRExConfig(penalty_weight=5.0, anneal_steps=2)
    net, params, algo, opt = setup(VREx, cfg)
    for t in range(4):
        batches = make_batches(seed=t)
        theta = detached(params)
        losses = manual_losses(theta, net, batches)
        weight = 1.0 if t < 2 else 5.0
        variance = ((losses - losses.mean()) ** 2).sum() / 3  # population variance, written differently
        opt.zero_grad()
        metrics = algo.update(batches)
        assert metrics["penalty_weight"] == weight and metrics["penalty"] == pytest.approx(float(variance.detach()))
        assert_grads(params, torch.autograd.grad(losses.mean() + weight * variance, list(theta.values())))
        opt.step()
        algo.after_step(t + 1)
    assert algo.state_dict()["steps"] == 4


def test_irm_penalty_is_the_analytic_scale_gradient_product_and_the_gradient_matches(double_precision):
    w = torch.tensor([1.0, 3.0])  # class-weighted: the penalty must use the task's loss_fn
    net, params, algo, opt = setup(IRM, IRMConfig(penalty_weight=7.0, anneal_steps=1), loss_fn=nn.CrossEntropyLoss(weight=w))
    for t, weight in enumerate((1.0, 7.0)):
        batches = make_batches(seed=t)
        theta = detached(params)
        penalties = []
        for d in sorted(batches):
            z, y = manual_logits(theta, net, batches[d]), batches[d].labels
            # d/ds of the weighted CE of s·z at s = 1: Σ w_y (softmax(z) − onehot(y))·z / Σ w_y, per half.
            g = [(w[y[h]] * ((torch.softmax(z[h], 1) - F.one_hot(y[h], 2)) * z[h]).sum(1)).sum() / w[y[h]].sum()
                 for h in (slice(0, None, 2), slice(1, None, 2))]
            penalties.append(g[0] * g[1])
        penalty = torch.stack(penalties).mean()
        nll = manual_losses(theta, net, batches, w).mean()
        opt.zero_grad()
        metrics = algo.update(batches)
        assert metrics["penalty"] == pytest.approx(float(penalty.detach())) and metrics["penalty_weight"] == weight
        assert metrics["loss"] == pytest.approx(float((nll + weight * penalty).detach()))
        assert_grads(params, torch.autograd.grad(nll + weight * penalty, list(theta.values())))
        opt.step()
        algo.after_step(t + 1)
    with pytest.raises(ValueError, match="at least 2 samples"):
        algo.update(make_batches(n=1))


def test_registered_listed_and_configs_validate(capsys):
    assert {"groupdro", "vrex", "irm"} <= set(ALGORITHMS.names())
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in ("groupdro", "vrex", "irm")) and "Sagawa" in out
    cfgs = {n: validate_plugin(ALGORITHMS, n, "algorithm").cfg for n in ("groupdro", "vrex", "irm")}
    assert cfgs["groupdro"].eta == 1e-2
    assert (cfgs["vrex"].penalty_weight, cfgs["vrex"].anneal_steps) == (10.0, 500)
    assert (cfgs["irm"].penalty_weight, cfgs["irm"].anneal_steps) == (100.0, 500)
    for raw, key in (({"name": "groupdro", "eta": -1}, "algorithm.eta"),
                     ({"name": "vrex", "penalty_weight": -1}, "algorithm.penalty_weight"),
                     ({"name": "irm", "anneal_steps": -5}, "algorithm.anneal_steps"),
                     ({"name": "irm", "lambda": 1}, "algorithm.lambda")):
        with pytest.raises(ConfigError, match=key):
            validate_plugin(ALGORITHMS, raw, "algorithm")


@pytest.mark.parametrize("algorithm", [{"name": "vrex", "anneal_steps": 2}, {"name": "irm", "anneal_steps": 2}])
def test_trains_end_to_end(tiny_config, algorithm):  # groupdro: in the resume test below
    tiny_config["train"].update({"steps": 4, "eval_every": 4})
    tiny_config["algorithm"] = algorithm
    result = Trainer(build_experiment(tiny_config)).fit()
    assert result.steps_done == 4 and result.dev and all(math.isfinite(v) for v in result.dev.values())
    assert result.eval["all"] and all(math.isfinite(v) for v in result.eval["all"].values())


def test_groupdro_stop_then_resume_matches_an_uninterrupted_run(tiny_config, tmp_path):
    tiny_config["train"].update({"steps": 4, "eval_every": 2, "checkpoint_every": 2})
    tiny_config["algorithm"] = {"name": "groupdro", "eta": 1.0}  # q far from uniform: a lost q would show

    def interrupt(step, dev):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    whole = Trainer(build_experiment(tiny_config), run_dir=tmp_path / "whole")
    result = whole.fit()  # also the end-to-end check of groupdro
    assert result.dev and all(math.isfinite(v) for v in [*result.dev.values(), *result.eval["all"].values()])
    with pytest.raises(StopRequested, match="after step 2"):
        Trainer(build_experiment(tiny_config), run_dir=tmp_path / "cut", on_eval=interrupt).fit()
    resumed = Trainer(build_experiment(tiny_config), run_dir=tmp_path / "cut")
    assert resumed.fit().steps_done == 4
    assert torch.equal(resumed.algorithm.q, whole.algorithm.q)
    got, want = (read_checkpoint(tmp_path / r / "checkpoints" / "best")[0] for r in ("cut", "whole"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    assert all(torch.equal(resumed.params[k], whole.params[k]) for k in whole.params)  # the final live weights too


ALGOS = [(GroupDRO, GroupDROConfig(eta=0.9)), (VREx, VRExConfig(penalty_weight=3.0, anneal_steps=0)),
         (IRM, IRMConfig(penalty_weight=4.0, anneal_steps=0))]


def _two_steps(cls, cfg, batches_per_step, reduce=None):
    net, params, algo, opt = setup(cls, cfg, seed=3)
    if reduce is not None:
        algo.reduce = reduce
    for batches in batches_per_step:
        opt.zero_grad()
        algo.update(batches)
        distributed.all_mean([p.grad for p in params.values()])  # what the Trainer does with .grad
        grads = [p.grad.clone() for p in params.values()]
        opt.step()
    return grads


def _rank_work(rank):
    # Each rank takes its half of every domain's global batch (samples 4r..4r+3 of 8).
    steps = [rank_half(make_batches(n=8, seed=s), rank) for s in range(2)]
    out = [_two_steps(cls, cfg, steps, distributed.all_mean) for cls, cfg in ALGOS]
    return [[g.numpy() for g in grads] for grads in out]


def test_two_ranks_give_the_gradient_of_the_global_batch(double_precision):
    got = run_two_ranks(_rank_work)
    steps = [make_batches(n=8, seed=s) for s in range(2)]
    for (cls, cfg), grads in zip(ALGOS, got):
        for g, want in zip(grads, _two_steps(cls, cfg, steps)):
            torch.testing.assert_close(torch.from_numpy(g), want, msg=cls.__name__)
