"""Fish, Reptile and SAM against independent computations on a tiny model, and through the real Trainer."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from metadg.algorithms.fish import Fish, FishConfig
from metadg.algorithms.mldg import MLDG, MLDGConfig
from metadg.algorithms.reptile import Reptile, ReptileConfig
from metadg.algorithms.sam import SAM, SAMConfig
from metadg.config import ConfigError, build_experiment, validate_plugin
from metadg.engine.batch import Batch
from metadg.engine.trainer import Trainer
from metadg.registry import ALGORITHMS
from tiny_nets import TinyNet, make_batches, manual_loss


def setup(seed=0):
    torch.manual_seed(seed)
    net = TinyNet()
    params = {k: p for k, p in net.named_parameters() if p.requires_grad}
    return net, params, {k: p.detach().clone() for k, p in params.items()}


def grad(theta, net, batch):
    leaves = {k: t.detach().clone().requires_grad_() for k, t in theta.items()}
    return dict(zip(leaves, torch.autograd.grad(manual_loss(leaves, net, batch), list(leaves.values()))))


def sgd(theta, net, batches, lr):
    for b in batches:
        g = grad(theta, net, b)
        theta = {k: t - lr * g[k] for k, t in theta.items()}
    return theta


def assert_weights(params, expected):
    for k, p in params.items():
        torch.testing.assert_close(p.detach(), expected[k], msg=k)


# ---------------------------------------------------------------- Fish


@pytest.mark.usefixtures("double_precision")
def test_fish_is_sequential_sgd_over_the_recorded_order_then_interpolation():
    net, params, theta0 = setup(1)
    batches = make_batches()
    algo = Fish(FishConfig(meta_lr=0.5), net, params, nn.CrossEntropyLoss(), seed=2)
    algo.lr = 0.4  # the Trainer's scheduled lr is the inner lr by default
    orders = []
    for step in range(3):
        before = {k: p.detach().clone() for k, p in params.items()}
        metrics = algo.update(batches)
        orders.append(tuple(algo.last_order))
        assert sorted(algo.last_order) == sorted(batches) and math.isfinite(metrics["loss"])
        end = sgd(before, net, [batches[d] for d in algo.last_order], 0.4)
        assert_weights(params, {k: before[k] + 0.5 * (end[k] - before[k]) for k in before})
        assert all(p.grad is None for p in net.parameters())  # owns its step: nothing left for the optimizer
    assert len(set(orders)) > 1  # a fresh random order each step...
    net2, params2, _ = setup(1)
    again = Fish(FishConfig(), net2, params2, nn.CrossEntropyLoss(), seed=2)
    again.lr = 0.4
    assert [tuple(again.update(batches) and again.last_order) for _ in range(3)] == orders  # ...drawn from the seed


@pytest.mark.usefixtures("double_precision")
def test_fish_inner_lr_overrides_the_scheduled_lr():
    net, params, theta0 = setup(2)
    batches = make_batches(seed=3)
    algo = Fish(FishConfig(meta_lr=0.3, inner_lr=0.2), net, params, nn.CrossEntropyLoss(), seed=0)
    algo.lr = 99.0
    algo.update(batches)
    end = sgd(theta0, net, [batches[d] for d in algo.last_order], 0.2)
    assert_weights(params, {k: theta0[k] + 0.3 * (end[k] - theta0[k]) for k in theta0})


@pytest.mark.parametrize("algo_cls,cfg", [(Fish, FishConfig()), (Reptile, ReptileConfig(domains_per_step=3, inner_steps=2))])
def test_a_non_finite_step_leaves_the_weights_untouched(algo_cls, cfg):
    net, params, theta0 = setup(3)
    batches = make_batches()
    batches["d2"].inputs[1, 0] = float("nan")
    algo = algo_cls(cfg, net, params, nn.CrossEntropyLoss())
    algo.lr = 0.5
    metrics = algo.update(batches)
    assert not math.isfinite(metrics["loss"])  # the Trainer counts it as a skipped step
    assert all(torch.equal(p, theta0[k]) for k, p in params.items())


# ---------------------------------------------------------------- Reptile


@pytest.mark.usefixtures("double_precision")
@pytest.mark.parametrize("k,per_step", [(3, 1), (2, 2)])
def test_reptile_is_inner_sgd_on_drawn_domains_then_interpolation(k, per_step):
    net, params, theta0 = setup(4)
    batches = make_batches(n_domains=4)
    algo = Reptile(ReptileConfig(meta_lr=0.7, inner_steps=k, domains_per_step=per_step), net, params, nn.CrossEntropyLoss(), seed=5)
    algo.lr = 0.3
    algo.update(batches)
    assert len(set(algo.last_domains)) == per_step
    ends = [sgd(theta0, net, [batches[d]] * k, 0.3) for d in algo.last_domains]
    mean = {n: sum(e[n] for e in ends) / per_step for n in theta0}
    assert_weights(params, {n: theta0[n] + 0.7 * (mean[n] - theta0[n]) for n in theta0})


@pytest.mark.usefixtures("double_precision")
def test_reptile_default_is_one_sgd_step_on_one_domain():
    net, params, theta0 = setup(5)
    batches = make_batches()
    algo = Reptile(ReptileConfig(), net, params, nn.CrossEntropyLoss(), seed=1)
    algo.lr = 0.25
    metrics = algo.update(batches)
    (d,) = algo.last_domains
    g = grad(theta0, net, batches[d])
    assert_weights(params, {n: theta0[n] - 0.25 * g[n] for n in theta0})
    assert metrics["loss"] == pytest.approx(float(manual_loss(theta0, net, batches[d])))


def test_reptile_needs_enough_domains():
    net, params, _ = setup()
    with pytest.raises(ValueError, match="domains_per_step=4"):
        Reptile(ReptileConfig(domains_per_step=4), net, params, nn.CrossEntropyLoss()).update(make_batches())


# ---------------------------------------------------------------- SAM


def perturbed(theta, g, rho):
    norm = torch.sqrt(sum((v * v).sum() for v in g.values()))
    return {k: t + rho * g[k] / (norm + 1e-12) for k, t in theta.items()}


@pytest.mark.usefixtures("double_precision")
def test_sam_over_erm_is_the_gradient_at_the_perturbed_point_and_restores_weights_exactly():
    net, params, theta0 = setup(6)
    batches = make_batches()
    algo = SAM(SAMConfig(rho=0.3), net, params, nn.CrossEntropyLoss())
    metrics = algo.update(batches)
    pooled = Batch.cat(list(batches.values()))
    g = grad(theta0, net, pooled)
    expected = grad(perturbed(theta0, g, 0.3), net, pooled)
    for k, p in params.items():
        torch.testing.assert_close(p.grad, expected[k], msg=k)
        assert torch.equal(p.detach(), theta0[k])  # bit-identical, not θ + ε − ε
    assert metrics["loss"] == pytest.approx(float(manual_loss(theta0, net, pooled)))
    assert metrics["sam_grad_norm"] == pytest.approx(float(torch.sqrt(sum((v * v).sum() for v in g.values()))))
    # under grad_accum an earlier draw's gradient is kept and added to
    algo.update(batches)
    for k, p in params.items():
        torch.testing.assert_close(p.grad, 2 * expected[k], msg=k)


@pytest.mark.usefixtures("double_precision")
def test_sam_over_mldg_replays_the_same_meta_test_split_in_both_passes():
    net, params, theta0 = setup(7)
    batches = make_batches(n_domains=4)
    cfg = SAMConfig.model_validate({"rho": 0.2, "base": {"name": "mldg", "alpha": 0.4, "beta": 0.8}})
    algo = SAM(cfg, net, params, nn.CrossEntropyLoss(), seed=11)
    splits = []
    split = algo.base.split
    algo.base.split = lambda domains: splits.append(split(domains)) or splits[-1]
    algo.update(batches)
    assert len(splits) == 2 and splits[0] == splits[1]
    # the base's generator advanced exactly as one plain MLDG step would have advanced it
    plain = MLDG(MLDGConfig(), net, params, nn.CrossEntropyLoss(), seed=11)
    plain.split(sorted(batches))
    assert torch.equal(algo.base.generator.get_state(), plain.generator.get_state())

    train, test = splits[0]
    b_tr, b_te = Batch.cat([batches[d] for d in train]), Batch.cat([batches[d] for d in test])

    def mldg_grad(theta):
        g_f = grad(theta, net, b_tr)
        g_g = grad({k: t - 0.4 * g_f[k] for k, t in theta.items()}, net, b_te)
        return {k: g_f[k] + 0.8 * g_g[k] for k in theta}

    expected = mldg_grad(perturbed(theta0, mldg_grad(theta0), 0.2))
    for k, p in params.items():
        torch.testing.assert_close(p.grad, expected[k], msg=k)
        assert torch.equal(p.detach(), theta0[k])


def test_sam_state_carries_the_base_state():
    net, params, _ = setup()
    cfg = SAMConfig.model_validate({"base": {"name": "mldg"}})
    a = SAM(cfg, net, params, nn.CrossEntropyLoss(), seed=3)
    a.update(make_batches())
    b = SAM(cfg, net, params, nn.CrossEntropyLoss(), seed=0)
    b.load_state_dict(a.state_dict())
    domains = [f"d{i}" for i in range(5)]
    assert [a.base.split(domains) for _ in range(5)] == [b.base.split(domains) for _ in range(5)]


# ---------------------------------------------------------------- configs


def test_registered_and_configs_validate():
    assert {"fish", "reptile", "sam"} <= set(ALGORITHMS.names())
    sam = validate_plugin(ALGORITHMS, {"name": "sam", "base": {"name": "mldg", "beta": 2}}, "algorithm")
    assert sam.as_dict()["base"] == {"name": "mldg", **MLDGConfig(beta=2).model_dump(mode="json")}
    assert validate_plugin(ALGORITHMS, "sam", "algorithm").as_dict() == {"name": "sam", "rho": 0.05, "base": {"name": "erm"}}
    assert validate_plugin(ALGORITHMS, "fish", "algorithm").cfg.meta_lr == 0.5


def test_sam_base_errors_name_their_path():
    with pytest.raises(ConfigError, match=r"algorithm\.base\.betta: unknown key; did you mean 'beta'"):
        validate_plugin(ALGORITHMS, {"name": "sam", "base": {"name": "mldg", "betta": 1}}, "algorithm")
    for bad in ("fish", "reptile", "sam"):
        with pytest.raises(ConfigError, match=r"algorithm\.base\.name"):
            validate_plugin(ALGORITHMS, {"name": "sam", "base": bad}, "algorithm")


# ---------------------------------------------------------------- through the Trainer


@pytest.mark.parametrize("algorithm", [{"name": "fish"}, {"name": "reptile"}, {"name": "sam"},
                                       {"name": "sam", "base": {"name": "mldg"}}], ids=["fish", "reptile", "sam", "sam-mldg"])
def test_trains_through_the_real_trainer(tiny_config, algorithm):
    cfg = {**tiny_config, "algorithm": algorithm, "train": {**tiny_config["train"], "steps": 4}}
    trainer = Trainer(build_experiment(cfg))
    start, setup_ = {}, trainer.setup

    def capture():  # the initial trainable weights, right after the Trainer builds them
        setup_()
        start.update({k: p.detach().clone() for k, p in trainer.params.items()})

    trainer.setup = capture
    result = trainer.fit()
    assert result.steps_done == 4 and trainer.loop.bad_steps_total == 0
    assert result.dev and all(math.isfinite(v) for v in result.dev.values())
    owns = algorithm["name"] != "sam"
    assert (trainer.optimizer.state == {}) == owns  # Fish/Reptile step themselves; AdamW never ran
    assert any(not torch.equal(p.detach(), start[k]) for k, p in trainer.params.items())


def test_fish_refuses_grad_accum(tiny_config):
    cfg = {**tiny_config, "algorithm": {"name": "fish"}, "train": {**tiny_config["train"], "grad_accum": 2}}
    with pytest.raises(ConfigError, match="grad_accum"):
        Trainer(build_experiment(cfg)).fit()
