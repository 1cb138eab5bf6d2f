"""LoRA on the from-scratch detectors (aasist_raw, rawnet2, lcnn): what trains, exactness, merging, errors, saving."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from metadg.adapters.base import freeze_all_but_new
from metadg.algorithms.erm import ERM
from metadg.config import ConfigError, StrictModel, build_experiment, validate_plugin
from metadg.engine.batch import Batch
from metadg.models import build_model
from metadg.registry import ADAPTERS, HEADS, MODELS

#: small shapes of each model, so that a forward takes milliseconds
TINY = {
    "aasist_raw": {"first_conv": 31, "filts": [12, [1, 4], [4, 4], [4, 8], [8, 8]], "gat_dims": [8, 8]},
    "rawnet2": {"first_conv": 31, "filts": [8, [8, 8], [8, 16], [16, 16]], "blocks": [1, 2], "gru_node": 16,
                "nb_gru_layer": 1, "nb_fc_node": 16},
    "lcnn": {"n_fft": 128, "frame_length": 64, "frame_shift": 32, "filters": 6},
}
#: one linear and one convolution layer of each (lcnn has no linear layer: two convolutions)
CHOSEN = {"aasist_raw": ("gat_s.att_proj", "encoder.1.conv1"), "rawnet2": ("fc", "blocks.1.conv1"),
          "lcnn": ("convs.0", "convs.6")}
NAMES = list(TINY)


def _model(name, seed=0, **shape):
    torch.manual_seed(seed)
    backbone = validate_plugin(MODELS, {"name": name, **(TINY[name] if not shape else shape)}, "model.backbone")
    return build_model(backbone, validate_plugin(HEADS, "linear", "model.head"))


def _lora(**cfg):
    return validate_plugin(ADAPTERS, {"name": "lora", **cfg}, "adapter").build()


def _adapted(name, seed=0, **cfg):
    model, adapter = _model(name, seed), _lora(**cfg)
    adapter.apply(model)
    return model.eval(), adapter


def _wave(seed=0, n=2):
    return torch.randn(n, 6600, generator=torch.Generator().manual_seed(seed))


def _targeted(backbone: nn.Module, targets) -> dict[str, nn.Module]:
    """The modules of an unadapted backbone that `targets` name (exact name or dotted suffix; test-only)."""
    return {n: m for n, m in backbone.named_modules() if n and any(n == t or n.endswith(f".{t}") for t in targets)}


def _factor_count(module: nn.Module, r: int) -> int:
    """r·(in + out) for a linear layer, r·(in·k + out) for a convolution with k kernel taps."""
    if isinstance(module, nn.Linear):
        return r * (module.in_features + module.out_features)
    return r * (module.in_channels * math.prod(module.kernel_size) + module.out_channels)


def _randomize_factors(model, only=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_" in n and (only is None or n.split(".lora_")[0] in {f"backbone.{o}" for o in only}):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("name", NAMES)
def test_only_the_factors_of_the_declared_layers_and_the_head_train(name):
    plain = _model(name)
    r = 8
    model, adapter = _adapted(name, r=r)
    layers = _targeted(plain.backbone, plain.backbone.lora_targets)
    kinds = {type(m) for m in layers.values()}
    assert kinds == {"aasist_raw": {nn.Conv2d, nn.Linear}, "rawnet2": {nn.Conv1d, nn.Linear}, "lcnn": {nn.Conv2d}}[name]
    trainable = adapter.trainable_parameters(model)
    factors = {f"backbone.{n}.lora_{ab}.default.weight" for n in layers for ab in "AB"}
    head = {n for n in trainable if n.startswith("head.")}
    assert set(trainable) == factors | head and head == {"head.proj.weight", "head.proj.bias"}
    head_count = sum(p.numel() for n, p in plain.named_parameters() if n.startswith("head."))
    assert sum(p.numel() for p in trainable.values()) == sum(_factor_count(m, r) for m in layers.values()) + head_count
    assert not any(k in n for n in trainable for k in ("sinc", "gru", "lstm", "bn"))
    assert set(adapter.added_parameters(model)) == factors


@pytest.mark.parametrize("name", NAMES)
def test_outputs_at_init_equal_the_unadapted_model(name):
    plain = _model(name).eval()
    # Frozen like the adapted model's base weights: torch's CPU kernels (matmul folding, the GRU) choose
    # their path by requires_grad, which moves the last bit of an otherwise identical computation.
    freeze_all_but_new(plain)
    model, _ = _adapted(name, r=4, dropout=0.1)
    x = _wave()
    assert torch.equal(model(x), plain(x))


@pytest.mark.parametrize("name", NAMES)
def test_random_factors_act_as_the_merged_weight_w_plus_scaled_ba(name):
    r, alpha = 4, 12.0
    model, _ = _adapted(name, r=r, alpha=alpha)
    chosen = CHOSEN[name]
    _randomize_factors(model, only=chosen)
    reference = _model(name).eval()
    with torch.no_grad():
        for layer in chosen:
            wrapped = model.backbone.get_submodule(layer)
            a, b = wrapped.lora_A["default"].weight, wrapped.lora_B["default"].weight
            # Linear: B (out, r) · A (r, in); convolution: B (out, r, 1, ...) with A (r, in, k...) tap by tap.
            delta = torch.einsum("or,ri...->oi...", b.reshape(b.shape[0], r), a)
            reference.backbone.get_submodule(layer).weight += (alpha / r) * delta
    x = _wave(1)
    with torch.no_grad():
        got, want = model(x), reference(x)
        assert not torch.allclose(got, _model(name).eval()(x), atol=1e-4)  # the factors do change the output
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_merge_keeps_the_outputs_and_restores_the_plain_layers(name):
    model, adapter = _adapted(name, r=4, rslora=True)
    _randomize_factors(model)
    x = _wave(2)
    with torch.no_grad():
        before = model(x)
    adapter.merge(model)
    assert not any("lora_" in n or "base_layer" in n for n in model.state_dict())
    assert set(model.state_dict()) == set(_model(name).state_dict())  # what init_from reads
    assert not hasattr(model.backbone, "peft_config")
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_one_erm_step_changes_only_the_trainable_tensors(name):
    model, adapter = _adapted(name, r=4)
    params = adapter.trainable_parameters(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = Batch(_wave(3, n=4), torch.tensor([0, 1, 0, 1]))
    ERM(StrictModel(), model, params, nn.CrossEntropyLoss()).update({"d": batch})
    with torch.no_grad():
        for p in params.values():
            p -= 0.1 * p.grad
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(params)
    assert any(".lora_B." in n for n in changed) and {"head.proj.weight", "head.proj.bias"} <= changed


@pytest.mark.parametrize("name, targets, message", [
    ("aasist_raw", ["sinc"], r"adapter\.targets: 'sinc' names sinc \(SincFilters: no trainable weight"),
    ("rawnet2", ["conv1", "gru"], r"adapter\.targets: 'gru' names gru \(GRU: peft has no LoRA for recurrent"),
    ("lcnn", ["lstm"], r"adapter\.targets: 'lstm' names blstm\.0\.lstm \(LSTM: peft has no LoRA for recurrent"),
    ("rawnet2", ["first_bn"], r"adapter\.targets: 'first_bn' names first_bn \(BatchNorm1d: a normalisation layer"),
    ("aasist_raw", ["encoder"], r"adapter\.targets: 'encoder' names encoder \(ModuleList: a block, not one layer; "
                                r"name its layers \(e\.g\. encoder\.0\.conv1\)"),
    ("lcnn", ["convs.1"], r"'convs\.1' names convs\.1 \(MaxFeatureMap: no trainable weight"),
    ("aasist_raw", ["q_proj", "nope"], r"'nope' names no layer of AASISTRaw\. LoRA can target: conv1, conv2, skip, "
                                       r"att_proj,"),
    ("lcnn", ["nope"], r"LoRA can target: convs\.0, convs\.3, "),
])
def test_layers_lora_cannot_take_or_that_do_not_exist_are_refused_naming_the_key(name, targets, message):
    with pytest.raises(ConfigError, match=message):
        _lora(targets=targets).apply(_model(name))


@pytest.mark.parametrize("option", [{"per_head": True}, {"layers": [0]}])
def test_transformer_only_options_are_refused_naming_the_key(option):
    key = next(iter(option))
    with pytest.raises(ConfigError, match=rf"adapter\.{key}: only means something on a transformer backbone.*"
                                          r"RawNet2 is a from-scratch model.*adapter\.targets"):
        _lora(**option).apply(_model("rawnet2"))


def test_the_params_path_counts_on_the_meta_device_and_reports_errors(tiny_config):
    from metadg.engine.accounting import count

    tiny_config["model"] = {"backbone": {"name": "rawnet2", **TINY["rawnet2"]}, "head": {"name": "linear"}}
    tiny_config["adapter"] = {"name": "lora", "r": 2, "targets": ["scaling.1.fc", "blocks.0.conv2"]}
    report = count(build_experiment(tiny_config))
    assert report.groups == {"backbone LoRA on fc": 2 * (16 + 16), "backbone LoRA on conv2": 2 * (8 * 3 + 8),
                             "head.proj": 16 * 2 + 2}
    tiny_config["adapter"] = {"name": "lora", "targets": ["gru"]}
    with pytest.raises(ConfigError, match=r"adapter\.targets: 'gru'"):
        count(build_experiment(tiny_config))


@pytest.mark.parametrize("name, shape", [
    ("aasist_raw", {"preset": "AASIST"}), ("aasist_raw", {"preset": "AASIST-L"}), ("rawnet2", {}), ("lcnn", {})])
def test_published_shapes_count_the_declared_layers_factors(tiny_config, name, shape):
    from metadg.engine.accounting import count, count_parameters
    from metadg.engine.build import build_model_and_adapter

    tiny_config["model"] = {"backbone": {"name": name, **shape}, "head": {"name": "linear"}}
    tiny_config["adapter"] = {"name": "lora", "r": 8}
    exp = build_experiment(tiny_config)
    # lcnn's front-end reads a tensor value while it is built, which the meta device (`metadg params`) cannot give.
    device = torch.device("cpu" if name == "lcnn" else "meta")
    if device.type == "meta":
        report = count(exp)
        trained, full = report.trainable, report.full_finetune
    else:
        trained, _, full = count_parameters(*build_model_and_adapter(exp))
    with device:  # the published shape, unadapted
        plain = build_model(validate_plugin(MODELS, {"name": name, **shape}, "b"),
                            validate_plugin(HEADS, "linear", "h"))
    layers = _targeted(plain.backbone, plain.backbone.lora_targets)
    head = sum(p.numel() for n, p in plain.named_parameters() if n.startswith("head."))
    assert trained == sum(_factor_count(m, 8) for m in layers.values()) + head
    assert full == sum(p.numel() for p in plain.parameters())
    print(f"{name} {shape}: {trained:,} trainable at r=8 ({head} in the head), full fine-tuning {full:,}")


def _built(name, adapter_cfg):
    model, adapter = _model(name), validate_plugin(ADAPTERS, adapter_cfg, "adapter").build()
    adapter.apply(model)
    return model.eval(), adapter


@pytest.mark.parametrize("adapter_cfg", [{"name": "lora", "r": 4}, {"name": "head_only"}, {"name": "full"}])
@pytest.mark.parametrize("name", NAMES)
def test_the_adapter_state_round_trips_with_the_batchnorm_statistics(name, adapter_cfg, tmp_path):
    # Every adapter: a frozen backbone's BatchNorm (head_only, LoRA) and an affine-free one (LCNN) move too.
    from safetensors.torch import load_file, save_file

    model, adapter = _built(name, adapter_cfg)
    if adapter_cfg["name"] == "lora":
        _randomize_factors(model)
    model.train()
    with torch.no_grad():
        model(_wave(4, n=4))  # moves the frozen backbone's BatchNorm statistics, as training does
    model.eval()
    x = _wave(5)
    with torch.no_grad():
        out = model(x)
    state = adapter.state_dict(model)
    statistics = {f"{n}.{b}" for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                  for b in ("running_mean", "running_var", "num_batches_tracked")}
    assert set(state) == set(adapter.trainable_parameters(model)) | statistics
    save_file(state, tmp_path / "a.safetensors")
    fresh, fresh_adapter = _built(name, adapter_cfg)
    with torch.no_grad():
        assert not torch.equal(fresh(x), out)
        fresh_adapter.load_state_dict(fresh, load_file(tmp_path / "a.safetensors"))
        assert torch.equal(fresh(x), out)
    state.pop(next(n for n in state if "weight" in n and "running" not in n))
    with pytest.raises(KeyError, match="missing"):
        fresh_adapter.load_state_dict(fresh, state)


@pytest.mark.parametrize("name", NAMES)
def test_save_peft_writes_what_plain_peft_loads_onto_the_plain_backbone(name, tmp_path):
    from peft import PeftModel

    model, adapter = _adapted(name, r=4)
    _randomize_factors(model)
    adapter.save_peft(model, tmp_path / "peft")
    loaded = PeftModel.from_pretrained(_model(name).backbone, str(tmp_path / "peft")).eval()
    x = _wave(6)
    with torch.no_grad():  # close, not equal: peft loads the factors frozen, and torch's kernels follow requires_grad
        torch.testing.assert_close(loaded(x)[0], model.backbone(x)[0], rtol=1e-5, atol=1e-6)
    adapter.merge(model)
    with pytest.raises(ValueError, match="save_peft: .* carries no LoRA adapters"):
        adapter.save_peft(model, tmp_path / "again")


def test_lora_trains_with_the_engine_and_reloads_merged(tiny_config):
    from metadg.engine.build import trained_weights
    from metadg.engine.trainer import Trainer

    tiny_config.update({"model": {"backbone": {"name": "aasist_raw", **TINY["aasist_raw"]},
                                  "head": {"name": "linear"}}, "adapter": {"name": "lora", "r": 2}})
    tiny_config["train"].update({"steps": 2, "eval_every": 2, "batch_per_domain": 2})
    result = Trainer(build_experiment(tiny_config)).fit()
    plain = _model("aasist_raw")
    layers = _targeted(plain.backbone, plain.backbone.lora_targets)
    assert result.trainable_params == sum(_factor_count(m, 2) for m in layers.values()) + 8 * 5 * 2 + 2
    assert 0.0 <= result.eval["all"]["eer"] <= 1.0
    weights = trained_weights(result.run_dir)  # rebuilt from the checkpoint, LoRA merged in
    assert set(weights) == set(plain.state_dict())
    assert any(not torch.equal(weights[f"backbone.{n}.weight"], plain.state_dict()[f"backbone.{n}.weight"])
               for n in layers)


def test_the_transformer_default_targets_are_the_attention_projections():
    from peft.tuners.lora import LoraLayer

    from metadg.adapters.lora import LoRAConfig

    assert LoRAConfig().targets == ["q_proj", "k_proj", "v_proj", "out_proj"]
    torch.manual_seed(0)
    model = build_model(validate_plugin(MODELS, {"name": "ssl", "preset": "tiny"}, "b"),
                        validate_plugin(HEADS, "linear", "h"))
    _lora(r=2).apply(model)
    wrapped = {n.rsplit(".", 1)[-1] for n, m in model.backbone.model.named_modules() if isinstance(m, LoraLayer)}
    assert wrapped == {"q_proj", "k_proj", "v_proj", "out_proj"}
