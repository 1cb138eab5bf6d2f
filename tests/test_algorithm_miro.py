"""MIRO: the pre-trained features without a second backbone, the penalty and gradients by hand, exact resume."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from metadg.algorithms.miro import MIRO, MIROConfig
from metadg.config import ConfigError, build_experiment
from metadg.engine.batch import Batch
from metadg.engine.build import build_model_and_adapter
from metadg.engine.checkpoint import pack_state, unpack_state
from metadg.engine.trainer import Trainer
from metadg.models.heads import masked_mean
from metadg.registry import ALGORITHMS

ADAPTERS = {"lora": {"name": "lora", "r": 4}, "full": {"name": "full"}, "head_only": {"name": "head_only"}}


_BUILT: dict[str, tuple] = {}


def build(tiny_config, adapter):
    """Model + adapter built the way the Trainer builds them (base weights depend only on the seed).

    Built once per adapter; every call hands out an independent copy (copies are made only in tests).
    """
    if adapter not in _BUILT:
        exp = build_experiment({**tiny_config, "adapter": ADAPTERS[adapter]})
        model, adapter_obj = build_model_and_adapter(exp)
        _BUILT[adapter] = (model.double().eval(), adapter_obj)  # eval: dropout off, so passes can be compared
    return copy.deepcopy(_BUILT[adapter])


def audio_batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([3200, 2300])
    return {f"d{i}": Batch(torch.randn(2, 3200, generator=g, dtype=torch.float64), torch.tensor([0, 1]), lengths)
            for i in range(2)}


def features(model, batch):
    feats, mask = model.backbone(batch.inputs, batch.lengths)
    return masked_mean(feats, mask)


def make_algo(model, adapter, ld=0.1, lr=0.01):
    params = adapter.trainable_parameters(model)
    algo = MIRO(MIROConfig(ld=ld), model, params, nn.CrossEntropyLoss())
    algo.lr = lr
    return algo, params


def train_steps(algo, params, n, lr=0.05, seed=0):
    """n updates, each followed by a plain SGD step on the model's trainable parameters."""
    out = []
    for i in range(n):
        out.append(algo.update(audio_batches(seed + i)))
        with torch.no_grad():
            for p in params.values():
                if p.grad is not None:
                    p -= lr * p.grad
                p.grad = None
    return out


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_pretrained_features_equal_an_untouched_model_after_training(tiny_config, adapter):
    model, ad = build(tiny_config, adapter)
    reference, _ = build(tiny_config, adapter)  # the untouched pre-trained model: a copy made only in the test
    algo, params = make_algo(model, ad)
    before = {n: p.detach().clone() for n, p in params.items()}
    train_steps(algo, params, 2)
    changed = [n for n, p in params.items() if not torch.equal(p, before[n])]
    assert any(".lora_B" in n for n in changed) if adapter == "lora" else any("encoder.layers" in n for n in changed)

    batch = Batch.cat(list(audio_batches(9).values()))
    f_pre = algo.pretrained_features(batch)
    assert f_pre.grad_fn is None and not f_pre.requires_grad  # no backward through the pre-trained pass
    with torch.no_grad():
        torch.testing.assert_close(f_pre, features(reference, batch))
        assert not torch.allclose(f_pre, features(model, batch))  # the adapted features have moved
    if adapter == "lora":
        assert algo.initial == {}  # nothing copied: the adapters are just switched off
    else:
        assert all(isinstance(t, torch.Tensor) for t in algo.initial.values())  # tensors, not a module


@pytest.mark.parametrize("adapter", ["lora", "full", "head_only"])
def test_loss_gradients_and_aux_step_match_a_hand_computation(tiny_config, adapter):
    model, ad = build(tiny_config, adapter)
    reference, _ = build(tiny_config, adapter)
    torch.manual_seed(1)
    for n, p in ad.trainable_parameters(model).items():  # LoRA B starts at 0; make the adapted model differ
        if ".lora_B" in n:
            nn.init.normal_(p, std=0.05)
    ld = 0.7
    algo, params = make_algo(model, ad, ld=ld, lr=0.02)
    train_steps(algo, params, 1)  # μ and σ² exist and have moved off their initial values

    W, b, raw = (p.detach().clone().requires_grad_() for p in algo.aux_parameters())
    opt_state = copy.deepcopy(algo.optimizer.state_dict())
    batches = audio_batches(5)
    metrics = algo.update(batches)

    batch = Batch.cat(list(batches.values()))
    feats, mask = model.backbone(batch.inputs, batch.lengths)
    f = masked_mean(feats, mask)
    logits = model.head.classify(model.head.embed(feats, mask))
    with torch.no_grad():
        f_pre = features(reference, batch)
    var = nn.functional.softplus(raw) + 1e-5
    penalty = (var.log() + (f_pre - (f @ W.T + b)) ** 2 / var).mean()
    task = nn.functional.cross_entropy(logits, batch.labels)
    total = task + ld * penalty
    assert metrics["loss_task"] == pytest.approx(task.item())
    assert metrics["penalty"] == pytest.approx(penalty.item())
    assert metrics["loss"] == pytest.approx(total.item())

    names = list(params)
    task_only = torch.autograd.grad(task, [params[n] for n in names], allow_unused=True, retain_graph=True)
    expected = torch.autograd.grad(total, [params[n] for n in names] + [W, b, raw], allow_unused=True)
    for name, exp in zip(names, expected):
        got = params[name].grad
        if exp is None:
            assert got is None or not got.any(), name
        else:
            torch.testing.assert_close(got, exp, msg=name)
    moved_by_penalty = any(e is not None and not torch.allclose(e, t) for e, t in zip(expected, task_only))
    assert moved_by_penalty == (adapter != "head_only")  # head_only: f_pre = f.detach(), the penalty trains μ/σ² only
    assert all(p.grad is None for n, p in model.named_parameters() if n not in params)

    # μ and σ² took one AdamW step on their own gradients, at the scheduled lr.
    hand = torch.optim.AdamW([W, b, raw], lr=algo.lr, weight_decay=0.0)
    hand.load_state_dict(opt_state)
    with torch.no_grad():
        for t, g in zip((W, b, raw), expected[len(names):]):
            t.grad = g
    hand.step()
    for t, got in zip((W, b, raw), algo.aux_parameters()):
        torch.testing.assert_close(got.detach(), t.detach())
        assert got.grad is None


def test_aux_parameters_start_at_identity_and_reference_variance(tiny_config):
    model, ad = build(tiny_config, "lora")
    algo, _ = make_algo(model, ad, lr=0.0)
    metrics = algo.update(audio_batches())
    h = model.backbone.out_dim
    torch.testing.assert_close(algo.mean.weight.detach(), torch.eye(h, dtype=torch.float64))
    assert not algo.mean.bias.any()
    torch.testing.assert_close(algo.variance().detach(), torch.full((h,), 0.1, dtype=torch.float64))
    # LoRA starts as a no-op, so f = f_pre (eval mode) and the penalty is log σ² alone.
    assert metrics["penalty"] == pytest.approx(math.log(0.1))


def test_state_dict_round_trip_continues_identically(tiny_config):
    model, ad = build(tiny_config, "full")
    algo, params = make_algo(model, ad)
    train_steps(algo, params, 2)
    weights = {n: p.detach().clone() for n, p in params.items()}
    tensors: dict[str, torch.Tensor] = {}
    saved = pack_state(algo.state_dict(), tensors, "state")  # what a checkpoint writes
    first = train_steps(algo, params, 2, seed=10)
    aux_first = [p.detach().clone() for p in algo.aux_parameters()]

    # A resumed run: fresh pre-trained model (the algorithm copies its initial tensors), then the restore.
    model2, ad2 = build(tiny_config, "full")
    algo2, params2 = make_algo(model2, ad2)
    with torch.no_grad():
        for n, p in params2.items():
            p.copy_(weights[n])
    algo2.load_state_dict(unpack_state(saved, tensors))
    assert algo2.state_dict()["miro"]["mean.weight"] is not None  # a pending state is saved again as it is
    assert train_steps(algo2, params2, 2, seed=10) == first
    for a, b in zip(algo2.aux_parameters(), aux_first):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    # Loading into an algorithm whose μ/σ² already exist applies at once.
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(weights[n])
    algo.load_state_dict(unpack_state(saved, tensors))
    assert train_steps(algo, params, 2, seed=10) == first


def test_config_registered_and_negative_weight_rejected(tiny_config):
    assert "miro" in ALGORITHMS
    exp = build_experiment({**tiny_config, "algorithm": {"name": "miro"}})
    assert exp.algorithm.cfg.ld == 0.1 and exp.algorithm.cfg.var_init == 0.1
    with pytest.raises(ConfigError, match=r"algorithm\.ld"):
        build_experiment({**tiny_config, "algorithm": {"name": "miro", "ld": -0.5}})


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_end_to_end_training(tiny_config, adapter):
    cfg = {**tiny_config, "algorithm": {"name": "miro"}, "adapter": ADAPTERS[adapter],
           "train": {**tiny_config["train"], "steps": 4, "eval_every": 2}}
    result = Trainer(build_experiment(cfg)).fit()
    assert result.steps_done == 4
    assert result.dev and all(math.isfinite(v) for v in result.dev.values())


def test_lora_on_a_from_scratch_backbone_switches_its_injected_adapters_off(tiny_config):
    # No PeftModel around aasist_raw: its injected LoRA layers are disabled for f_pre, then back on.
    from test_lora_scratch import TINY

    cfg = {**tiny_config, "adapter": ADAPTERS["lora"],
           "model": {"backbone": {"name": "aasist_raw", **TINY["aasist_raw"]}, "head": {"name": "linear"}}}
    model, ad = build_model_and_adapter(build_experiment(cfg))
    model = model.double().eval()
    reference = copy.deepcopy(model)
    algo, params = make_algo(model, ad)
    train_steps(algo, params, 2)
    batch = Batch.cat(list(audio_batches(9).values()))
    f_pre = algo.pretrained_features(batch)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if "lora_B" in name:
                p.zero_()  # B = 0: the untouched model's function
        torch.testing.assert_close(f_pre, features(reference, batch))
        assert not torch.allclose(f_pre, features(model, batch))
    assert all(p.requires_grad for n, p in model.named_parameters() if ".lora_" in n)  # adapters back on
