"""Gradients of ERM and MLDG against independent computations."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call

from metadg.algorithms.erm import ERM
from metadg.algorithms.mldg import MLDG, MLDGConfig
from metadg.config import StrictModel, validate_plugin
from metadg.models import build_model
from metadg.registry import ADAPTERS, HEADS, MODELS
from metadg.engine.batch import Batch
from tiny_nets import TinyNet, grads_of, make_batches, manual_loss, trainable



# Gradient comparisons at double precision (the fixture is in conftest.py).
pytestmark = pytest.mark.usefixtures("double_precision")


def test_erm_gradient_equals_pooled_batch_gradient():
    torch.manual_seed(0)
    net = TinyNet()
    params = trainable(net)
    batches = make_batches()
    ERM(StrictModel(), net, params, nn.CrossEntropyLoss()).update(batches)
    pooled = Batch.cat(list(batches.values()))
    theta = {k: p.detach().clone().requires_grad_() for k, p in params.items()}
    expected = torch.autograd.grad(manual_loss(theta, net, pooled), list(theta.values()))
    for (name, got), exp in zip(grads_of(params).items(), expected):
        torch.testing.assert_close(got, exp, msg=name)


@pytest.mark.parametrize("n_meta_test", [1, 2])
def test_mldg_first_order_matches_hand_computation(n_meta_test):
    torch.manual_seed(1)
    net = TinyNet()
    params = trainable(net)
    batches = make_batches(n_domains=4)
    cfg = MLDGConfig(alpha=0.3, beta=0.7, n_meta_test=n_meta_test)
    algo = MLDG(cfg, net, params, nn.CrossEntropyLoss(), seed=3)
    metrics = algo.update(batches)
    train, test = algo.last_split
    assert len(test) == n_meta_test and sorted(train + test) == sorted(batches)

    b_tr = Batch.cat([batches[d] for d in train])
    b_te = Batch.cat([batches[d] for d in test])
    theta = {k: p.detach().clone().requires_grad_() for k, p in params.items()}
    loss_f = manual_loss(theta, net, b_tr)
    g_f = torch.autograd.grad(loss_f, list(theta.values()))
    theta_prime = {k: (t - cfg.alpha * g).detach().requires_grad_() for (k, t), g in zip(theta.items(), g_f)}
    loss_g = manual_loss(theta_prime, net, b_te)
    g_g = torch.autograd.grad(loss_g, list(theta_prime.values()))
    for (name, got), gf, gg in zip(grads_of(params).items(), g_f, g_g):
        torch.testing.assert_close(got, gf + cfg.beta * gg, msg=name)
    assert metrics["loss_meta_train"] == pytest.approx(float(loss_f.detach()))
    assert metrics["loss_meta_test"] == pytest.approx(float(loss_g.detach()))
    # The frozen layer must not have been touched.
    assert net.frozen.weight.grad is None


def test_mldg_second_order_matches_explicit_hessian():
    torch.manual_seed(2)
    net = TinyNet()
    params = trainable(net)
    batches = make_batches(n_domains=3)
    cfg = MLDGConfig(alpha=0.5, beta=1.3, first_order=False)
    algo = MLDG(cfg, net, params, nn.CrossEntropyLoss(), seed=0)
    algo.update(batches)
    train, test = algo.last_split
    b_tr = Batch.cat([batches[d] for d in train])
    b_te = Batch.cat([batches[d] for d in test])

    names = list(params)
    shapes = [params[k].shape for k in names]
    sizes = [params[k].numel() for k in names]
    flat0 = torch.cat([params[k].detach().reshape(-1) for k in names])

    def unflat(v):
        return {k: t.reshape(s) for k, t, s in zip(names, torch.split(v, sizes), shapes)}

    def f(v):
        return manual_loss(unflat(v), net, b_tr)

    def g(v):
        return manual_loss(unflat(v), net, b_te)

    # Explicit full Hessian of F, then (I − αH)∇G(θ') as the chain rule gives it.
    grad_f = torch.autograd.functional.jacobian(f, flat0)
    hess_f = torch.autograd.functional.hessian(f, flat0)
    theta_prime = flat0 - cfg.alpha * grad_f
    grad_g = torch.autograd.functional.jacobian(g, theta_prime)
    expected = grad_f + cfg.beta * (grad_g - cfg.alpha * hess_f @ grad_g)
    got = torch.cat([params[k].grad.reshape(-1) for k in names])
    torch.testing.assert_close(got, expected)
    # and it really differs from the first-order approximation
    assert not torch.allclose(got, grad_f + cfg.beta * grad_g)


@pytest.mark.parametrize("key", ["meta_test_shared", "meta_test_bonafide"])  # the old name keeps working
def test_mldg_meta_test_without_shared_samples_uses_only_the_heldout_domains_own(key):
    torch.manual_seed(4)
    net = TinyNet()
    params = trainable(net)
    # The policy flags shared samples; here the shared ones are deliberately NOT the label-1 ones,
    # so a label-based filter would fail this test.
    batches = {d: Batch(b.inputs, b.labels, None, torch.arange(len(b)) % 3 == 0) for d, b in make_batches(n_domains=3, n=6).items()}
    cfg = MLDGConfig.model_validate({"alpha": 0.2, "beta": 0.9, key: False})
    assert cfg.meta_test_shared is False
    algo = MLDG(cfg, net, params, nn.CrossEntropyLoss(), seed=1)
    algo.update(batches)
    train, test = algo.last_split
    b_tr = Batch.cat([batches[d] for d in train])
    b_te = Batch.cat([batches[d] for d in test])
    own = ~b_te.shared
    b_te = Batch(b_te.inputs[own], b_te.labels[own])
    theta = {k: p.detach().clone().requires_grad_() for k, p in params.items()}
    g_f = torch.autograd.grad(manual_loss(theta, net, b_tr), list(theta.values()))
    theta_prime = {k: (t - cfg.alpha * g).detach().requires_grad_() for (k, t), g in zip(theta.items(), g_f)}
    g_g = torch.autograd.grad(manual_loss(theta_prime, net, b_te), list(theta_prime.values()))
    for (name, got), gf, gg in zip(grads_of(params).items(), g_f, g_g):
        torch.testing.assert_close(got, gf + cfg.beta * gg, msg=name)


def test_mldg_split_is_random_but_seeded():
    net = TinyNet()
    params = trainable(net)
    a = MLDG(MLDGConfig(), net, params, nn.CrossEntropyLoss(), seed=7)
    b = MLDG(MLDGConfig(), net, params, nn.CrossEntropyLoss(), seed=7)
    domains = [f"d{i}" for i in range(5)]
    splits_a = [a.split(domains)[1][0] for _ in range(30)]
    assert splits_a == [b.split(domains)[1][0] for _ in range(30)]
    assert len(set(splits_a)) > 2  # not always the same held-out domain


def test_mldg_needs_enough_domains():
    net = TinyNet()
    algo = MLDG(MLDGConfig(n_meta_test=2), net, trainable(net), nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="n_meta_test=2 needs more than 2 source domains"):
        algo.update(make_batches(n_domains=2))


class OnceDifferentiableTanh(torch.autograd.Function):
    """Stands in for a fused attention kernel: no double backward."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)


def test_second_order_names_the_fix_when_a_kernel_has_no_double_backward():
    class Fused(TinyNet):
        def forward(self, x, lengths=None):
            return self.out(OnceDifferentiableTanh.apply(self.hidden(torch.tanh(self.frozen(x)))))

    net = Fused()
    algo = MLDG(MLDGConfig(first_order=False), net, trainable(net), nn.CrossEntropyLoss())
    with pytest.raises(RuntimeError, match="attn_implementation: eager"):
        algo.update(make_batches())


# ---------------------------------------------------------------- real backbone


def wav2vec2_lora(attn="sdpa"):
    torch.manual_seed(0)
    model = build_model(
        validate_plugin(MODELS, {"name": "ssl", "preset": "tiny", "attn_implementation": attn}, "b"),
        validate_plugin(HEADS, "linear", "h"),
    ).double()
    adapter = validate_plugin(ADAPTERS, {"name": "lora", "r": 2}, "a").build()
    adapter.apply(model)
    for p in adapter.trainable_parameters(model).values():  # LoRA B starts at 0; make the test non-trivial
        nn.init.normal_(p, std=0.05)
    return model.eval(), adapter  # eval: dropout off, so two forward passes agree


def audio_batches(n_domains=3, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {f"d{i}": Batch(torch.randn(n, 3200, generator=g), torch.tensor([0, 1] * (n // 2))) for i in range(n_domains)}


def test_mldg_on_wav2vec2_lora_matches_naive_deepcopy_reference():
    model, adapter = wav2vec2_lora()
    params = adapter.trainable_parameters(model)
    batches = audio_batches()
    cfg = MLDGConfig(alpha=0.1, beta=0.5)
    algo = MLDG(cfg, model, params, nn.CrossEntropyLoss(), seed=0)
    algo.update(batches)
    train, test = algo.last_split
    got = grads_of(params)

    # The textbook implementation: copy the model, take a real SGD step on the copy.
    ref = copy.deepcopy(model)
    for p in ref.parameters():
        p.grad = None
    ref_params = adapter.trainable_parameters(ref)
    b_tr, b_te = Batch.cat([batches[d] for d in train]), Batch.cat([batches[d] for d in test])
    g_f = torch.autograd.grad(nn.functional.cross_entropy(ref(b_tr.inputs), b_tr.labels), list(ref_params.values()))
    inner = copy.deepcopy(ref)
    with torch.no_grad():
        for p, g in zip(adapter.trainable_parameters(inner).values(), g_f):
            p -= cfg.alpha * g
    inner_params = adapter.trainable_parameters(inner)
    g_g = torch.autograd.grad(nn.functional.cross_entropy(inner(b_te.inputs), b_te.labels), list(inner_params.values()))
    for (name, value), gf, gg in zip(got.items(), g_f, g_g):
        torch.testing.assert_close(value, gf + cfg.beta * gg, msg=name)
    assert all(p.grad is None for n, p in model.named_parameters() if n not in params)


def test_second_order_mldg_on_wav2vec2_eager_matches_hessian_vector_product():
    model, adapter = wav2vec2_lora(attn="eager")
    params = adapter.trainable_parameters(model)
    cfg = MLDGConfig(alpha=0.1, beta=0.5, first_order=False)
    batches = audio_batches()
    algo = MLDG(cfg, model, params, nn.CrossEntropyLoss(), seed=0)
    algo.update(batches)
    train, test = algo.last_split
    got = grads_of(params)

    # Reference on a separate copy: ∇F + β(∇G(θ') − α·H_F∇G(θ')), with H_F·v from
    # an explicit Hessian-vector product (double backward of ∇F·v).
    ref = copy.deepcopy(model)
    ref_params = list(adapter.trainable_parameters(ref).values())
    b_tr, b_te = Batch.cat([batches[d] for d in train]), Batch.cat([batches[d] for d in test])
    g_f = torch.autograd.grad(nn.functional.cross_entropy(ref(b_tr.inputs), b_tr.labels), ref_params, create_graph=True)
    inner = copy.deepcopy(ref)
    with torch.no_grad():
        for p, g in zip(adapter.trainable_parameters(inner).values(), g_f):
            p -= cfg.alpha * g
    g_g = torch.autograd.grad(
        nn.functional.cross_entropy(inner(b_te.inputs), b_te.labels), list(adapter.trainable_parameters(inner).values())
    )
    hvp = torch.autograd.grad(sum((gf * gg).sum() for gf, gg in zip(g_f, g_g)), ref_params)
    for (name, value), gf, gg, hv in zip(got.items(), g_f, g_g, hvp):
        torch.testing.assert_close(value, gf.detach() + cfg.beta * (gg - cfg.alpha * hv), msg=name)


def test_functional_call_never_copies_frozen_backbone():
    model, adapter = wav2vec2_lora()
    params = adapter.trainable_parameters(model)
    frozen_before = {n: p.data_ptr() for n, p in model.named_parameters() if n not in params}
    virtual = {k: p - 0.1 for k, p in params.items()}
    functional_call(model, virtual, (torch.randn(1, 3200),))
    assert frozen_before == {n: p.data_ptr() for n, p in model.named_parameters() if n not in params}
