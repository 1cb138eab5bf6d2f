"""model.backbone.gradient_checkpointing: the same losses and gradients as without it, with the layers recomputed."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from metadg.algorithms.erm import ERM
from metadg.algorithms.mldg import MLDG, MLDGConfig
from metadg.config import ConfigError, StrictModel, build_experiment, validate_plugin
from metadg.engine.batch import Batch
from metadg.engine.build import build_model_and_adapter
from metadg.models import build_model
from metadg.models.backbones import SSLConfig
from metadg.registry import ADAPTERS, HEADS, MODELS

# Every kind of dropout on, and layerdrop too: the recompute must draw the same
# masks, and the layers layerdrop skips must be the same with and without it.
DROPOUT = {"hidden_dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.1,
           "feat_proj_dropout": 0.1, "layerdrop": 0.2, "num_hidden_layers": 3}


def make(gc: bool, adapter: str | dict, attn: str = "auto", dropout: dict | None = None, seed: int = 0):
    """The tiny ssl model with the adapter applied, in train mode, and its trainable parameters."""
    torch.manual_seed(seed)
    backbone = {"name": "ssl", "preset": "tiny", "config": DROPOUT if dropout is None else dropout,
                "attn_implementation": attn, "gradient_checkpointing": gc}
    model = build_model(validate_plugin(MODELS, backbone, "model.backbone"), validate_plugin(HEADS, "linear", "h"))
    ad = validate_plugin(ADAPTERS, adapter, "adapter").build()
    ad.apply(model)
    model.train()
    return model, ad.trainable_parameters(model)


def pair(adapter: str | dict, attn: str = "auto", dropout: dict | None = None):
    """(off, on): two models with identical weights, checkpointing off and on."""
    off, params_off = make(False, adapter, attn, dropout)
    with torch.no_grad():  # LoRA's B starts at zero, which would leave A without a gradient to compare
        g = torch.Generator().manual_seed(1)
        for n, p in params_off.items():
            if "lora_B" in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    on, params_on = make(True, adapter, attn, dropout, seed=123)
    on.load_state_dict(off.state_dict())
    assert list(params_on) == list(params_off)
    return (off, params_off), (on, params_on)


def batches(n_domains: int = 3, n: int = 2, seed: int = 0) -> dict[str, Batch]:
    """Seeded 0.2 s waveforms, one padded, per domain."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([3200, 2400] * (n // 2))
    return {f"d{i}": Batch(torch.randn(n, 3200, generator=g), torch.tensor([0, 1] * (n // 2)), lengths)
            for i in range(n_domains)}


def algorithm(kind: str, model, params):
    """ERM, first-order MLDG or second-order MLDG (a large inner step, so θ' differs from θ visibly)."""
    loss = nn.CrossEntropyLoss()
    if kind == "erm":
        return ERM(StrictModel(), model, params, loss)
    return MLDG(MLDGConfig(first_order=kind == "mldg_fo", alpha=0.1), model, params, loss, seed=3)


def step(kind: str, model, params, amp: bool = False) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """One update from a fixed RNG state (dropout, layerdrop, the MLDG split); metrics and gradients."""
    torch.manual_seed(7)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        metrics = algorithm(kind, model, params).update(batches())
    return metrics, {n: p.grad.detach().clone() for n, p in params.items() if p.grad is not None}


class Calls:
    """Counts forward calls of modules inside each encoder layer (and conv layer) of a model."""

    def __init__(self, model: nn.Module) -> None:
        hf = model.backbone.model
        hf = hf.get_base_model() if hasattr(hf, "get_base_model") else hf
        # HF checkpoints a layer's forward, not its __call__, so hooks on the layer
        # itself fire once either way; a submodule's run again in the recompute.
        # Pre-hooks: the recompute stops early once it has what the backward needs.
        self.layers = [0] * len(hf.encoder.layers)
        self.convs = [0] * len(hf.feature_extractor.conv_layers)
        self.handles = [layer.attention.register_forward_pre_hook(self._bump(self.layers, i))
                        for i, layer in enumerate(hf.encoder.layers)]
        self.handles += [conv.conv.register_forward_pre_hook(self._bump(self.convs, i))
                         for i, conv in enumerate(hf.feature_extractor.conv_layers)]

    @staticmethod
    def _bump(counts: list[int], i: int):
        def hook(*_):
            counts[i] += 1
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def assert_same(ref: tuple[dict, dict], got: tuple[dict, dict], atol: float = 1e-6, rtol: float = 1e-5) -> None:
    """The same metrics and the same gradients, for the same parameters."""
    (m_ref, g_ref), (m_got, g_got) = ref, got
    assert set(m_ref) == set(m_got)
    for k in m_ref:
        assert m_got[k] == pytest.approx(m_ref[k], abs=atol, rel=rtol), k
    assert set(g_got) == set(g_ref) and g_ref
    for n in g_ref:
        torch.testing.assert_close(g_got[n], g_ref[n], atol=atol, rtol=rtol, msg=n)


# Runs of each layer's forward in one update, (without, with) checkpointing; MLDG
# forwards twice (meta-train, meta-test), and second order recomputes the
# meta-train layers twice: once for create_graph's ∇F, again in the final backward.
RUNS = {"erm": (1, 2), "mldg_fo": (2, 4), "mldg_so": (2, 5)}


@pytest.mark.parametrize(
    ("kind", "adapter", "attn"),
    [
        ("erm", "full", "auto"),
        ("erm", {"name": "lora", "r": 4, "dropout": 0.1}, "auto"),
        ("erm", "head_only", "auto"),
        ("mldg_fo", {"name": "lora", "r": 4}, "auto"),
        ("mldg_fo", "full", "auto"),
        ("mldg_so", {"name": "lora", "r": 4}, "eager"),
        ("mldg_so", "full", "eager"),
    ],
)
def test_loss_and_every_gradient_equal_those_without_checkpointing(kind, adapter, attn):
    (off, p_off), (on, p_on) = pair(adapter, attn)
    ref = step(kind, off, p_off)
    calls = Calls(on)
    got = step(kind, on, p_on)
    calls.remove()
    assert_same(ref, got)
    assert all(math.isfinite(v) for v in got[0].values())
    without, with_ = RUNS[kind]
    if adapter == "head_only":  # nothing below the head needs a gradient, so nothing is recomputed
        assert max(calls.layers) == without and calls.convs == [without] * len(calls.convs)
        return
    assert max(calls.layers) == with_  # (layerdrop skipped some layers in some forwards)
    # The conv feature encoder is recomputed only where it trains.
    assert calls.convs == [with_ if adapter == "full" else without] * len(calls.convs)


@pytest.mark.parametrize("kind", ["erm", "mldg_fo", "mldg_so"])
def test_with_checkpointing_each_layer_runs_again_in_the_backward(kind):
    for gc in (False, True):
        model, params = make(gc, "full", attn="eager", dropout={"layerdrop": 0.0})
        calls = Calls(model)
        step(kind, model, params)
        runs = RUNS[kind][gc]
        assert calls.layers == [runs] * len(calls.layers) and calls.convs == [runs] * len(calls.convs)


def test_amp_bf16_on_cpu_matches_the_unchecked_bf16_step():
    (off, p_off), (on, p_on) = pair({"name": "lora", "r": 4})
    ref = step("erm", off, p_off, amp=True)
    calls = Calls(on)
    got = step("erm", on, p_on, amp=True)
    assert math.isfinite(got[0]["loss"]) and all(bool(g.isfinite().all()) for g in got[1].values())
    assert max(calls.layers) == 2  # the recompute ran, under the same autocast as the forward
    # The recompute replays autocast, so it repeats the same bf16 casts and kernels.
    assert_same(ref, got, atol=1e-5, rtol=1e-4)


def test_the_recompute_uses_the_weights_functional_call_ran_with():
    # MLDG's meta-test forward runs at θ' through functional_call, which has put θ
    # back by the time the backward recomputes the layers.
    (off, p_off), (on, p_on) = pair("full", dropout={"layerdrop": 0.0})
    x = batches()["d0"]
    g = torch.Generator().manual_seed(2)
    shift = {n: 0.05 * torch.randn(p.shape, generator=g) for n, p in p_off.items()}
    grads = []
    for model, params in ((off, p_off), (on, p_on)):
        virtual = {n: p + shift[n] for n, p in params.items()}
        torch.manual_seed(4)
        logits = torch.func.functional_call(model, virtual, (x.inputs, x.lengths))
        grads.append(torch.autograd.grad(nn.functional.cross_entropy(logits, x.labels), list(params.values())))
    for n, a, b in zip(p_off, *grads):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5, msg=n)


def test_scoring_in_eval_mode_or_without_grad_is_unaffected():
    (off, _), (on, _) = pair({"name": "lora", "r": 4}, dropout={**DROPOUT, "layerdrop": 0.0})
    x = batches()["d0"]
    calls = Calls(on)
    for train in (False, True):  # eval-mode scoring, and a no_grad forward in train mode (dropout on)
        out = {}
        for name, m in (("off", off), ("on", on)):
            m.train(train)
            torch.manual_seed(5)
            with torch.no_grad():
                out[name] = m(x.inputs, x.lengths)
        torch.testing.assert_close(out["on"], out["off"], atol=0, rtol=0)
    assert calls.layers == [2] * len(calls.layers)  # one run per forward: nothing is checkpointed without grad


def test_the_key_defaults_off_round_trips_and_rejects_a_wrong_type():
    assert SSLConfig(preset="tiny").gradient_checkpointing is False
    off, _ = make(False, "full")
    assert not any(getattr(m, "gradient_checkpointing", False) for m in off.modules())
    plugin = validate_plugin(MODELS, {"name": "ssl", "preset": "tiny", "gradient_checkpointing": True}, "model.backbone")
    again = validate_plugin(MODELS, plugin.as_dict(), "model.backbone")
    assert again.as_dict() == plugin.as_dict() and again.as_dict()["gradient_checkpointing"] is True
    for wrong in ("sometimes", [True], {"on": 1}, 2):
        with pytest.raises(ConfigError, match=r"model\.backbone\.gradient_checkpointing"):
            validate_plugin(MODELS, {"name": "ssl", "preset": "tiny", "gradient_checkpointing": wrong}, "model.backbone")


def test_checkpointing_survives_the_lora_wrap_in_a_built_experiment(tiny_config):
    tiny_config["model"]["backbone"]["gradient_checkpointing"] = True
    exp = build_experiment(tiny_config)
    assert exp.to_dict()["model"]["backbone"]["gradient_checkpointing"] is True
    assert build_experiment(exp.to_dict()).to_dict() == exp.to_dict()
    model, _ = build_model_and_adapter(exp)
    base = model.backbone.model.get_base_model()
    assert base.encoder.gradient_checkpointing
    assert all(layer.gradient_checkpointing for layer in base.encoder.layers)


def test_a_trainer_run_with_checkpointing_amp_and_mldg(tiny_config, monkeypatch):
    from metadg.engine.trainer import Trainer
    from metadg.models import backbones

    tiny_config["model"]["backbone"]["gradient_checkpointing"] = True
    tiny_config["algorithm"] = {"name": "mldg"}
    tiny_config["train"].update(steps=2, eval_every=2, amp=True)
    checkpoints = []
    real = backbones.checkpoint
    monkeypatch.setattr(backbones, "checkpoint", lambda *a, **k: checkpoints.append(1) or real(*a, **k))
    trainer = Trainer(build_experiment(tiny_config))
    trainer.fit()
    assert checkpoints  # the LoRA-wrapped encoder's layers ran checkpointed under the Trainer's autocast
    assert all(bool(p.isfinite().all()) for p in trainer.params.values())


def test_a_model_without_checkpointing_support_is_a_config_error(monkeypatch):
    from transformers import Wav2Vec2Model

    monkeypatch.setattr(Wav2Vec2Model, "supports_gradient_checkpointing", False)
    with pytest.raises(ConfigError, match=r"model\.backbone\.gradient_checkpointing: Wav2Vec2Model does not support"):
        make(True, "full")
