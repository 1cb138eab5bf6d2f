"""RawNet2: the published parameter count, its forward against a functional computation, padding, training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metadg.config import ConfigError, build_experiment, validate_plugin
from metadg.models import build_model
from metadg.registry import HEADS, MODELS

SMALL = {"first_conv": 128, "filts": [20, [20, 20], [20, 32], [32, 32]], "gru_node": 16, "nb_gru_layer": 2,
         "nb_fc_node": 8}


def _model(**cfg):
    backbone = validate_plugin(MODELS, {"name": "rawnet2", **cfg}, "model.backbone")
    return build_model(backbone, validate_plugin(HEADS, "linear", "model.head"))


def test_the_baseline_configuration_has_the_published_parameter_count():
    assert sum(p.numel() for p in _model().parameters()) == 17_621_410


def _reference(sd: dict[str, torch.Tensor], sinc: torch.Tensor, wave: torch.Tensor, n_blocks: int, layers: int):
    """Eval-mode RawNet2 written with functional ops over the state dict (test-only)."""
    def bn(name, x):
        return F.batch_norm(x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                            sd[f"{name}.bias"], False, 0.0, 1e-5)

    x = F.selu(bn("backbone.first_bn", F.max_pool1d(F.conv1d(wave.unsqueeze(1), sinc).abs(), 3)))
    for i in range(n_blocks):
        p = f"backbone.blocks.{i}"
        out = F.conv1d(x, sd[f"{p}.conv1.weight"], sd[f"{p}.conv1.bias"], padding=1)
        out = F.conv1d(F.leaky_relu(bn(f"{p}.bn2", out), 0.3), sd[f"{p}.conv2.weight"], sd[f"{p}.conv2.bias"],
                       padding=1)
        skip = F.conv1d(x, sd[f"{p}.skip.weight"], sd[f"{p}.skip.bias"]) if f"{p}.skip.weight" in sd else x
        x = F.max_pool1d(out + skip, 3)
        s = torch.sigmoid(F.linear(x.mean(-1), sd[f"backbone.scaling.{i}.fc.weight"],
                                   sd[f"backbone.scaling.{i}.fc.bias"])).unsqueeze(-1)
        x = x * s + s
    h = F.selu(bn("backbone.bn_before_gru", x)).transpose(1, 2)
    for layer in range(layers):  # GRU equations (PyTorch's gate order r, z, n)
        w_ih, w_hh = sd[f"backbone.gru.weight_ih_l{layer}"], sd[f"backbone.gru.weight_hh_l{layer}"]
        b_ih, b_hh = sd[f"backbone.gru.bias_ih_l{layer}"], sd[f"backbone.gru.bias_hh_l{layer}"]
        state, outs = torch.zeros(h.shape[0], w_hh.shape[1]), []
        for t in range(h.shape[1]):
            gi, gh = F.linear(h[:, t], w_ih, b_ih).chunk(3, 1), F.linear(state, w_hh, b_hh).chunk(3, 1)
            r, z = torch.sigmoid(gi[0] + gh[0]), torch.sigmoid(gi[1] + gh[1])
            n = torch.tanh(gi[2] + r * gh[2])
            state = (1 - z) * n + z * state
            outs.append(state)
        h = torch.stack(outs, 1)
    fc = F.linear(h[:, -1], sd["backbone.fc.weight"], sd["backbone.fc.bias"])
    return F.linear(fc, sd["head.proj.weight"], sd["head.proj.bias"])


def test_the_forward_equals_a_functional_computation_of_the_same_tensors():
    torch.manual_seed(0)
    model = _model(**SMALL)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    model.eval()
    wave = torch.randn(2, 8000)
    sd = model.state_dict()
    with torch.no_grad():
        want = _reference(sd, model.backbone.sinc.filters, wave, 6, SMALL["nb_gru_layer"])
        torch.testing.assert_close(model(wave), want, rtol=1e-4, atol=1e-5)


def test_short_inputs_are_padded_to_the_receptive_field():
    model = _model(**SMALL).eval()
    assert model.backbone.min_samples == 128 + 3 ** 7
    wave = torch.randn(1, 500)
    with torch.no_grad():
        torch.testing.assert_close(model(wave), model(F.pad(wave, (0, model.backbone.min_samples - 500))))


def test_inconsistent_filters_are_refused():
    with pytest.raises(ConfigError, match=r"model\.backbone[\s\S]*filts"):
        _model(filts=[20, [20, 20], [32, 128], [128, 128]])


def test_rawnet2_trains_with_the_engine(tiny_config):
    from metadg.engine.trainer import Trainer

    tiny_config.update({"model": {"backbone": {"name": "rawnet2", **SMALL}, "head": {"name": "linear"}},
                        "adapter": {"name": "full"}})
    tiny_config["train"].update({"steps": 2, "eval_every": 2, "batch_per_domain": 2})
    result = Trainer(build_experiment(tiny_config)).fit()
    assert 0.0 <= result.eval["all"]["eer"] <= 1.0 and result.trainable_params == result.total_params
