"""Feature-level DG algorithms (CORAL, MMD, DANN, mixup) against independent computations."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
from itertools import combinations

import numpy as np
import pytest
import torch
from torch import nn

from metadg.algorithms.coral import CORAL, FeaturePenaltyConfig
from metadg.algorithms.dann import DANN, DANNConfig
from metadg.algorithms.mixup import Mixup, MixupConfig, mix_inputs
from metadg.algorithms.mmd import MMD, MMDConfig
from metadg.config import ConfigError, build_experiment, validate_plugin
from metadg.engine.batch import Batch
from metadg.engine.checkpoint import pack_state, read_checkpoint, unpack_state
from metadg.engine.resume import StopRequested
from metadg.engine.trainer import Trainer
from metadg.registry import ALGORITHMS
from tiny_nets import FeatNet

CE = nn.functional.cross_entropy


def manual_embed(theta, net, x):
    """The embedding written out as matrix algebra on a flat parameter dict (no modules)."""
    h = torch.tanh(x @ net.frozen.weight.T + net.frozen.bias)
    return torch.tanh(h @ theta["hidden.weight"].T + theta["hidden.bias"])


def manual_logits(theta, z):
    return z @ theta["head.proj.weight"].T + theta["head.proj.bias"]


def make_batches(sizes=(5, 6, 7), seed=0):
    g = torch.Generator().manual_seed(seed)
    return {f"d{i}": Batch(torch.randn(n, 6, generator=g) + i, torch.randint(0, 2, (n,), generator=g))
            for i, n in enumerate(sizes)}


def setup(seed=0):
    torch.manual_seed(seed)
    net = FeatNet()
    params = {k: p for k, p in net.named_parameters() if p.requires_grad}
    theta = {k: p.detach().clone().requires_grad_() for k, p in params.items()}
    return net, params, theta


def grads_of(params):
    return {k: p.grad.detach().clone() for k, p in params.items()}


def np_embeddings(net, batches):
    with torch.no_grad():
        return {d: net(b.inputs, with_embedding=True)[1].numpy() for d, b in batches.items()}


# ---------------------------------------------------------------- CORAL, MMD


def test_coral_penalty_matches_numpy_moments_and_gradient_matches_hand_objective(double_precision):
    net, params, theta = setup(0)
    batches = make_batches()
    z = np_embeddings(net, batches)
    metrics = CORAL(FeaturePenaltyConfig(gamma=0.7), net, params, nn.CrossEntropyLoss()).update(batches)

    expected = np.mean([np.mean((z[a].mean(0) - z[b].mean(0)) ** 2)
                        + np.mean((np.cov(z[a], rowvar=False) - np.cov(z[b], rowvar=False)) ** 2)
                        for a, b in combinations(sorted(z), 2)])
    assert metrics["penalty"] == pytest.approx(expected, rel=1e-10)
    assert metrics["penalty"] > 0

    # The objective written independently: per-domain losses, torch.cov, every pair.
    embs = {d: manual_embed(theta, net, b.inputs) for d, b in batches.items()}
    task = sum(CE(manual_logits(theta, embs[d]), b.labels) for d, b in batches.items()) / len(batches)
    pen = sum((embs[a].mean(0) - embs[b].mean(0)).pow(2).mean() + (torch.cov(embs[a].T) - torch.cov(embs[b].T)).pow(2).mean()
              for a, b in combinations(sorted(embs), 2)) / 3
    want = torch.autograd.grad(task + 0.7 * pen, list(theta.values()))
    for (name, got), w in zip(grads_of(params).items(), want):
        torch.testing.assert_close(got, w, msg=name)
    assert metrics["loss_task"] == pytest.approx(task.item())
    assert metrics["loss"] == pytest.approx((task + 0.7 * pen).item())
    assert net.frozen.weight.grad is None


def test_coral_refuses_single_sample_domains(double_precision):
    net, params, _ = setup()
    with pytest.raises(ValueError, match="at least 2 samples"):
        CORAL(FeaturePenaltyConfig(), net, params, nn.CrossEntropyLoss()).update(make_batches((1, 3)))


def test_mmd_penalty_matches_double_loop_kernel_sum(double_precision):
    net, params, theta = setup(1)
    batches = make_batches((4, 5, 3), seed=1)
    z = np_embeddings(net, batches)
    scales = [0.001, 0.01, 0.1, 1, 10, 100, 1000]
    cfg = MMDConfig(gamma=1.5)
    assert cfg.bandwidths == scales
    metrics = MMD(cfg, net, params, nn.CrossEntropyLoss()).update(batches)

    def k_mean(x, y):
        total = 0.0
        for a in x:
            for b in y:
                d2 = sum((float(u) - float(v)) ** 2 for u, v in zip(a, b))
                total += sum(math.exp(-s * d2) for s in scales)
        return total / (len(x) * len(y))

    pairs = list(combinations(sorted(z), 2))
    expected = sum(k_mean(z[a], z[a]) + k_mean(z[b], z[b]) - 2 * k_mean(z[a], z[b]) for a, b in pairs) / len(pairs)
    assert metrics["penalty"] == pytest.approx(expected, rel=1e-8, abs=1e-12)
    assert metrics["penalty"] > 0

    embs = {d: manual_embed(theta, net, b.inputs) for d, b in batches.items()}
    kern = lambda x, y: sum(torch.exp(-s * torch.cdist(x, y).pow(2)) for s in scales).mean()  # noqa: E731
    task = sum(CE(manual_logits(theta, embs[d]), b.labels) for d, b in batches.items()) / len(batches)
    pen = sum(kern(embs[a], embs[a]) + kern(embs[b], embs[b]) - 2 * kern(embs[a], embs[b]) for a, b in pairs) / 3
    want = torch.autograd.grad(task + 1.5 * pen, list(theta.values()))
    for (name, got), w in zip(grads_of(params).items(), want):
        torch.testing.assert_close(got, w, msg=name)


# ---------------------------------------------------------------- DANN


def disc_weights(algo):
    return {k: v.detach().clone() for k, v in algo.discriminator.state_dict().items()}


def test_dann_featurizer_gets_minus_lambda_times_the_domain_gradient(double_precision):
    net, params, theta = setup(2)
    batches = make_batches()
    domains = sorted(batches)
    algo = DANN(DANNConfig(lam=0.6), net, params, nn.CrossEntropyLoss(), seed=0)
    algo.setup_discriminator(domains, torch.device("cpu"))  # what the first update builds, to snapshot it
    before = disc_weights(algo)

    m1 = algo.update(batches)  # update 0: discriminator only
    assert m1["disc_step"] == 1.0
    assert all(p.grad is None for p in params.values())  # the model gets nothing from a discriminator step
    after = disc_weights(algo)
    assert any(not torch.equal(before[k], after[k]) for k in before)

    frozen_disc = copy.deepcopy(algo.discriminator)
    m2 = algo.update(batches)  # update 1: generator
    assert m2["disc_step"] == 0.0
    assert all(torch.equal(after[k], v) for k, v in disc_weights(algo).items())  # DomainBed: not stepped here
    assert all(p.grad is None for p in algo.discriminator.parameters())

    pooled = Batch.cat([batches[d] for d in domains])
    target = torch.cat([torch.full((len(batches[d]),), i) for i, d in enumerate(domains)])
    z = manual_embed(theta, net, pooled.inputs)
    g_task = torch.autograd.grad(CE(manual_logits(theta, z), pooled.labels), list(theta.values()),
                                 allow_unused=True, retain_graph=True)
    d_loss = CE(frozen_disc(z), target)  # the same discriminator, no reversal
    g_dom = torch.autograd.grad(d_loss, list(theta.values()), allow_unused=True)
    assert d_loss.item() == pytest.approx(m2["loss_domain"])
    zero = torch.zeros(())
    for (name, got), gt, gd in zip(grads_of(params).items(), g_task, g_dom):
        gt, gd = (zero if gt is None else gt), (zero if gd is None else gd)
        torch.testing.assert_close(got - gt, (-0.6 * gd).expand_as(got), msg=name)
    assert float(g_dom[0].abs().sum()) > 0  # hidden.weight: the domain term is really there


def test_dann_alternation_follows_the_counter_and_zero_trains_both(double_precision):
    net, params, _ = setup(3)
    batches = make_batches()
    algo = DANN(DANNConfig(d_steps_per_g_step=2), net, params, nn.CrossEntropyLoss())
    assert [algo.update(batches)["disc_step"] for _ in range(6)] == [1, 1, 0, 1, 1, 0]

    algo = DANN(DANNConfig(d_steps_per_g_step=0), net, params, nn.CrossEntropyLoss())
    for p in params.values():
        p.grad = None
    algo.setup_discriminator(sorted(batches), torch.device("cpu"))
    before = disc_weights(algo)
    assert algo.update(batches)["disc_step"] == 1.0
    assert all(p.grad is not None for p in params.values())
    assert any(not torch.equal(before[k], v) for k, v in disc_weights(algo).items())


def test_dann_state_round_trip_gives_identical_updates(double_precision):
    net_a, params_a, _ = setup(4)
    net_b = copy.deepcopy(net_a)
    params_b = {k: p for k, p in net_b.named_parameters() if p.requires_grad}
    batches = [make_batches(seed=s) for s in range(6)]
    cfg = DANNConfig(d_steps_per_g_step=2)
    a = DANN(cfg, net_a, params_a, nn.CrossEntropyLoss(), seed=5)
    for b in batches[:4]:
        a.update(b)
    # Through the checkpoint's own packing (JSON + tensors), as a resumed run reads it.
    tensors: dict[str, torch.Tensor] = {}
    packed = json.loads(json.dumps(pack_state(a.state_dict(), tensors, "algorithm")))
    b_algo = DANN(cfg, net_b, params_b, nn.CrossEntropyLoss(), seed=99)
    b_algo.load_state_dict(unpack_state(packed, tensors))
    assert b_algo.state_dict()["updates"] == 4  # before its first update the restored state is kept as is
    for b in batches[4:]:
        for p in [*params_a.values(), *params_b.values()]:
            p.grad = None
        assert a.update(b) == b_algo.update(b)
        for k in params_a:
            assert (params_a[k].grad is None) == (params_b[k].grad is None)
            if params_a[k].grad is not None:
                assert torch.equal(params_a[k].grad, params_b[k].grad)
    wa, wb = disc_weights(a), disc_weights(b_algo)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = a.d_optimizer.state_dict()["state"], b_algo.d_optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)


def test_dann_refuses_other_domains_than_it_was_built_for(double_precision):
    net, params, _ = setup()
    algo = DANN(DANNConfig(), net, params, nn.CrossEntropyLoss())
    algo.update(make_batches())
    with pytest.raises(ValueError, match="built for domains"):
        algo.update(make_batches((3, 3)))


# ---------------------------------------------------------------- mixup


def mixup_reference(theta, net, batches, pairs, lams, mode):
    terms, mixed = [], []
    for (i, j), lam in zip(pairs, lams):
        bi, bj = batches[i], batches[j]
        n = min(len(bi), len(bj))
        if mode == "inputs":
            x = lam * bi.inputs[:n] + (1 - lam) * bj.inputs[:n]
            mixed.append(x)
            logits = manual_logits(theta, manual_embed(theta, net, x))
        else:
            e = lam * manual_embed(theta, net, bi.inputs)[:n] + (1 - lam) * manual_embed(theta, net, bj.inputs)[:n]
            logits = manual_logits(theta, e)
        terms.append(lam * CE(logits, bi.labels[:n]) + (1 - lam) * CE(logits, bj.labels[:n]))
    return sum(terms) / len(terms), mixed


@pytest.mark.parametrize("mode", ["inputs", "embeddings"])
def test_mixup_mixtures_loss_and_gradient_match_the_formula(double_precision, mode):
    net, params, theta = setup(5)
    batches = make_batches((5, 3, 4), seed=5)
    algo = Mixup(MixupConfig(mix=mode), net, params, nn.CrossEntropyLoss(), seed=1)
    metrics = algo.update(batches)
    pairs, lams = algo.last_pairs, algo.last_lams
    # A cycle over a random permutation: every domain is first once and second once.
    assert sorted(p[0] for p in pairs) == sorted(p[1] for p in pairs) == sorted(batches)
    assert all(0 < lam < 1 for lam in lams) and len(set(lams)) == 3

    loss, mixed = mixup_reference(theta, net, batches, pairs, lams, mode)
    assert len(net.seen) == 1  # one forward for the whole step
    if mode == "inputs":
        torch.testing.assert_close(net.seen[0][0], torch.cat(mixed))
    else:  # the pooled real batch goes through the model; the head classifies the mixtures
        torch.testing.assert_close(net.seen[0][0], Batch.cat([batches[d] for d in sorted(batches)]).inputs)
    assert metrics["loss"] == pytest.approx(loss.item())
    for (name, got), w in zip(grads_of(params).items(), torch.autograd.grad(loss, list(theta.values()))):
        torch.testing.assert_close(got, w, msg=name)


def test_mixup_draws_are_seeded_and_vary():
    domains = ["a", "b", "c", "d"]
    net, params, _ = setup()
    a, b = (Mixup(MixupConfig(), net, params, nn.CrossEntropyLoss(), seed=3) for _ in range(2))
    draws = [a.draw(domains) for _ in range(20)]
    assert draws == [b.draw(domains) for _ in range(20)]
    assert len({tuple(p) for p, _ in draws}) > 1
    # Beta(0.2, 0.2) puts most mass near 0 and 1
    lams = np.array([lam for _, ls in draws for lam in ls])
    assert ((lams < 0.1) | (lams > 0.9)).mean() > 0.4
    # resumable: the state restores the stream
    state = a.state_dict()
    nxt = a.draw(domains)
    b.load_state_dict(state)
    assert b.draw(domains) == nxt


def test_mixup_of_different_lengths_uses_the_common_crop():
    bi = Batch(torch.arange(24.0).reshape(3, 8), torch.zeros(3, dtype=torch.long), torch.tensor([8, 5, 7]))
    bj = Batch(torch.ones(2, 6), torch.ones(2, dtype=torch.long))
    x, lengths = mix_inputs(bi, bj, 0.25)
    torch.testing.assert_close(x, 0.25 * bi.inputs[:2, :6] + 0.75)
    assert lengths.tolist() == [6, 5]
    assert mix_inputs(bj, bj, 0.5)[1] is None
    pooled = Mixup._pool([(x, lengths), (torch.ones(1, 8), None)])
    assert pooled.inputs.shape == (3, 8) and pooled.lengths.tolist() == [6, 5, 8]
    assert torch.equal(pooled.inputs[:2, 6:], torch.zeros(2, 2))


# ---------------------------------------------------------------- configs and the real Trainer


def test_configs_are_registered_and_validated():
    assert {"coral", "mmd", "dann", "mixup"} <= set(ALGORITHMS.names())
    with pytest.raises(ConfigError, match=r"algorithm\.gamma"):
        validate_plugin(ALGORITHMS, {"name": "coral", "gamma": -1}, "algorithm")
    with pytest.raises(ConfigError, match=r"algorithm\.mix"):
        validate_plugin(ALGORITHMS, {"name": "mixup", "mix": "spectra"}, "algorithm")
    assert validate_plugin(ALGORITHMS, {"name": "dann", "lambda": 0.3}, "algorithm").cfg.lam == 0.3  # DomainBed's name
    dann = validate_plugin(ALGORITHMS, "dann", "algorithm").as_dict()
    assert (dann["lam"], dann["width"], dann["depth"], dann["d_beta1"], dann["d_lr"]) == (1.0, 256, 3, 0.5, 1e-3)
    assert validate_plugin(ALGORITHMS, "mixup", "algorithm").cfg.alpha == 0.2


@pytest.mark.parametrize("algorithm", [{"name": "coral"}, {"name": "mmd"}, {"name": "dann"},
                                       {"name": "mixup"}, {"name": "mixup", "mix": "embeddings"}])
def test_end_to_end_on_the_tiny_wav2vec2_lora_model(tiny_config, algorithm):
    tiny_config["algorithm"] = algorithm
    tiny_config["train"].update({"steps": 4, "eval_every": 2})
    trainer = Trainer(build_experiment(tiny_config))
    result = trainer.fit()
    assert result.steps_done == 4 and trainer.loop.bad_steps_total == 0
    assert result.dev and all(math.isfinite(v) for v in result.dev.values())
    if algorithm["name"] == "dann":
        assert trainer.algorithm.updates == 4 and trainer.algorithm.discriminator is not None


def test_dann_resumed_through_the_trainer_ends_on_the_uninterrupted_weights(tiny_config, tmp_path):
    tiny_config["train"].update({"steps": 8, "eval_every": 2, "checkpoint_every": 3})
    # 2 discriminator steps per generator step: a resume that lost the counter would shift the pattern.
    tiny_config["algorithm"] = {"name": "dann", "d_steps_per_g_step": 2}
    finals = {}

    def run(folder, on_eval=None):
        box = {}

        def hook(step, dev):
            if step == 8:  # the live weights at the end of training (the best checkpoint may be earlier)
                box["final"] = {k: p.detach().clone() for k, p in box["trainer"].params.items()}
                box["disc"] = disc_weights(box["trainer"].algorithm)
            if on_eval is not None:
                on_eval(step, dev)

        box["trainer"] = Trainer(build_experiment(tiny_config), run_dir=tmp_path / folder, on_eval=hook)
        box["trainer"].fit()
        finals[folder] = box

    run("whole")

    def interrupt(step, dev):
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(StopRequested, match="after step 4"):
        run("cut", interrupt)
    run("cut")

    got, want = finals["cut"], finals["whole"]
    assert got["final"].keys() == want["final"].keys()
    assert all(torch.equal(got["final"][k], want["final"][k]) for k in want["final"])
    assert all(torch.equal(got["disc"][k], want["disc"][k]) for k in want["disc"])
    best_got = read_checkpoint(tmp_path / "cut" / "checkpoints" / "best")[0]
    best_want = read_checkpoint(tmp_path / "whole" / "checkpoints" / "best")[0]
    assert all(torch.equal(best_got[k], best_want[k]) for k in best_want)
