"""Adapters: LoRA starts as an exact no-op, only trained tensors change and are saved."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metadg.algorithms.erm import ERM
from metadg.config import StrictModel, validate_plugin
from metadg.models import build_model
from metadg.registry import ADAPTERS, HEADS, MODELS
from metadg.engine.batch import Batch


def make(adapter_cfg, seed=0, layer="last"):
    torch.manual_seed(seed)
    model = build_model(validate_plugin(MODELS, {"name": "ssl", "preset": "tiny", "layer": layer}, "b"), validate_plugin(HEADS, "linear", "h"))
    adapter = validate_plugin(ADAPTERS, adapter_cfg, "adapter").build()
    return model, adapter


def batch(seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(n, 4000, generator=g), torch.tensor([0, 1] * (n // 2)))


def one_step(model, adapter, lr=0.1):
    params = adapter.trainable_parameters(model)
    ERM(StrictModel(), model, params, nn.CrossEntropyLoss()).update({"d": batch()})
    with torch.no_grad():
        for p in params.values():
            p -= lr * p.grad


def test_lora_is_exact_noop_before_training():
    model, adapter = make({"name": "lora", "r": 4, "dropout": 0.1})
    model.eval()
    x = batch().inputs
    before = model(x)
    adapter.apply(model)
    model.eval()
    assert torch.equal(model(x), before)


@pytest.mark.parametrize(
    ("cfg", "should_train"),
    [
        ({"name": "lora", "r": 4}, lambda n: ".lora_" in n or n.startswith("head.")),
        ({"name": "head_only"}, lambda n: n.startswith("head.")),
        ({"name": "full"}, lambda n: True),
        ({"name": "full", "freeze_feature_encoder": True}, lambda n: "feature_extractor" not in n),
    ],
)
def test_only_adapter_and_head_parameters_change_after_a_step(cfg, should_train):
    model, adapter = make(cfg)
    adapter.apply(model)
    model.eval()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    one_step(model, adapter)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    expected = {n for n in before if should_train(n)}
    # A LoRA A factor gets no gradient while its B is zero, so compare against what may change.
    assert changed <= expected
    assert any(n.startswith("head.") for n in changed)
    if cfg["name"] == "lora":
        assert any("lora_B" in n for n in changed)
    if cfg["name"] == "full":
        assert any(n.startswith("backbone.") for n in changed)
    assert set(adapter.trainable_parameters(model)) == expected


def test_lora_default_targets_every_attention_projection():
    model, adapter = make({"name": "lora", "r": 2})
    adapter.apply(model)
    lora_a = [n for n in adapter.trainable_parameters(model) if "lora_A" in n]
    layers = model.backbone.num_layers
    assert len(lora_a) == 4 * layers
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        assert sum(f".{proj}." in n for n in lora_a) == layers


def test_lora_layers_and_bad_targets():
    model, adapter = make({"name": "lora", "r": 2, "layers": [1]})
    adapter.apply(model)
    assert all(".layers.1." in n for n in adapter.trainable_parameters(model) if "lora_" in n)
    model, adapter = make({"name": "lora", "targets": ["q_proj", "nope_proj"]})
    with pytest.raises(ValueError, match=r"\['nope_proj'\] are not linear layers"):
        adapter.apply(model)


def test_saved_adapter_reloads_to_identical_outputs(tmp_path):
    from safetensors.torch import load_file, save_file

    model, adapter = make({"name": "lora", "r": 4})
    adapter.apply(model)
    one_step(model, adapter)
    model.eval()
    x = batch(seed=1).inputs
    out = model(x)
    state = adapter.state_dict(model)
    assert set(state) == set(adapter.trainable_parameters(model))
    save_file(state, tmp_path / "a.safetensors")

    fresh, fresh_adapter = make({"name": "lora", "r": 4})
    fresh_adapter.apply(fresh)
    fresh.eval()
    assert not torch.equal(fresh(x), out)
    fresh_adapter.load_state_dict(fresh, load_file(tmp_path / "a.safetensors"))
    assert torch.equal(fresh(x), out)


def test_adapter_state_must_match(tmp_path):
    model, adapter = make({"name": "lora", "r": 4})
    adapter.apply(model)
    state = adapter.state_dict(model)
    state.pop(next(iter(state)))
    with pytest.raises(KeyError, match="missing"):
        adapter.load_state_dict(model, state)


def test_lora_saves_in_peft_format_and_plain_peft_loads_it(tmp_path):
    from peft import PeftModel

    model, adapter = make({"name": "lora", "r": 4})
    base_state = {k: v.clone() for k, v in model.backbone.model.state_dict().items()}
    adapter.apply(model)
    one_step(model, adapter)
    model.eval()
    adapter.save_peft(model, tmp_path / "peft")
    assert (tmp_path / "peft" / "adapter_config.json").is_file()

    base = make({"name": "full"})[0].backbone.model
    base.load_state_dict(base_state)
    loaded = PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    x = batch(seed=2).inputs
    torch.testing.assert_close(loaded(x).last_hidden_state, model.backbone.model(x).last_hidden_state)


def test_merged_lora_matches_unmerged():
    model, adapter = make({"name": "lora", "r": 4})
    adapter.apply(model)
    one_step(model, adapter)
    model.eval()
    x = batch(seed=3).inputs
    out = model(x)
    adapter.merge(model)
    assert not any("lora_" in n for n, _ in model.named_parameters())
    torch.testing.assert_close(model(x), out, atol=1e-5, rtol=1e-5)


def test_weighted_layer_sum_trains_with_any_adapter():
    model, adapter = make({"name": "head_only"}, layer="weighted")
    adapter.apply(model)
    assert "backbone.layer_weights" in adapter.trainable_parameters(model)
    model.eval()
    before = model.backbone.layer_weights.detach().clone()
    one_step(model, adapter)
    assert not torch.equal(model.backbone.layer_weights, before)


def test_per_head_lora_gives_each_head_its_own_rank_r_factors():
    r = 2
    model, adapter = make({"name": "lora", "r": r, "per_head": True})
    base = {n: p.detach().clone() for n, p in model.backbone.model.named_parameters()}
    adapter.apply(model)
    model.eval()
    x = batch().inputs
    with torch.no_grad():
        before = model(x)
        for name, p in adapter.trainable_parameters(model).items():
            if "lora_" in name:
                p.normal_(std=0.1)  # B starts at zero; give every factor a value
    out = model(x)
    assert not torch.allclose(out, before)
    adapter.merge(model)
    torch.testing.assert_close(model(x), out, atol=1e-5, rtol=1e-5)

    heads, dim = model.backbone.num_heads, model.backbone.out_dim
    merged = dict(model.backbone.model.named_parameters())
    head = dim // heads
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        name = f"encoder.layers.0.attention.{proj}.weight"
        delta = merged[name] - base[name]
        # q/k/v: head h's output rows; out_proj: head h's input columns.
        blocks = [delta[h * head:(h + 1) * head] if proj != "out_proj" else delta[:, h * head:(h + 1) * head] for h in range(heads)]
        assert all(int(torch.linalg.matrix_rank(b.double(), atol=1e-6)) <= r for b in blocks), proj
        assert int(torch.linalg.matrix_rank(delta.double(), atol=1e-6)) > r, proj  # not one shared rank-r update


def test_per_head_lora_refuses_non_attention_targets():
    model, adapter = make({"name": "lora", "per_head": True, "targets": ["q_proj", "intermediate_dense"]})
    with pytest.raises(ValueError, match="only attention projections have heads"):
        adapter.apply(model)


def test_per_head_factors_affect_only_their_own_head():
    r = 2
    model, adapter = make({"name": "lora", "r": r, "per_head": True})
    adapter.apply(model)
    heads, head = model.backbone.num_heads, model.backbone.out_dim // model.backbone.num_heads
    attn = model.backbone.model.base_model.model.encoder.layers[0].attention
    x = torch.randn(3, 7, model.backbone.out_dim)
    with torch.no_grad():
        for name, p in adapter.trainable_parameters(model).items():
            if "lora_" in name:
                p.normal_(std=0.1)
        q_before, out_before = attn.q_proj(x), attn.out_proj(x)
        # q_proj: head 1's B block (compact block-diagonal rows) moves head 1's output slice only.
        attn.q_proj.lora_B["default"].weight[head:2 * head] += 1.0
        q_diff = (attn.q_proj(x) - q_before).abs().amax((0, 1))
        assert [h for h in range(heads) if q_diff[h * head:(h + 1) * head].max() > 0] == [1]
        # out_proj: head 1's A block reads head 1's input slice only.
        x_other = x.clone()
        x_other[..., head:2 * head] = torch.randn(3, 7, head)  # change head 1's input only
        ref_other = attn.out_proj(x_other)
        attn.out_proj.lora_A["default"].weight[r:2 * r] += 1.0
        assert (attn.out_proj(x) - out_before).abs().max() > 0
        x_zero = x.clone()
        x_zero[..., head:2 * head] = 0
        attn.out_proj.lora_A["default"].weight[r:2 * r] -= 1.0
        base_zero = attn.out_proj(x_zero)
        attn.out_proj.lora_A["default"].weight[r:2 * r] += 1.0
        torch.testing.assert_close(attn.out_proj(x_zero), base_zero)  # no head-1 input, no effect
        assert not torch.allclose(attn.out_proj(x_other), ref_other)  # head-1 input, effect


@pytest.mark.parametrize("adapter", ["lora", "full", "head_only"])
def test_batchnorm_statistics_travel_with_the_checkpoint(tiny_config, adapter):
    # AASIST's BatchNorm running statistics change with training like its weights; a reloaded
    # checkpoint that kept the fresh ones would score with untrained normalisation.
    from metadg.config import build_experiment
    from metadg.engine.build import load_trained
    from metadg.engine.trainer import Trainer

    tiny_config["model"]["head"] = {"name": "aasist"}
    tiny_config["adapter"] = {"name": adapter, **({"r": 4} if adapter == "lora" else {})}
    tiny_config["train"].update(steps=3, eval_every=3)
    trainer = Trainer(build_experiment(tiny_config))
    result = trainer.fit()
    stats = {n: b.clone() for n, b in trainer.model.named_buffers() if "running_" in n}
    assert stats and all("head." in n for n in stats)
    _, model, _, _ = load_trained(f"{result.run_dir}/checkpoints/best")
    reloaded = dict(model.named_buffers())
    for name, value in stats.items():
        torch.testing.assert_close(reloaded[name], value, msg=name)
    assert any(not torch.allclose(v, torch.zeros_like(v)) for n, v in stats.items() if n.endswith("running_mean"))
