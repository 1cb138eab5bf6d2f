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


#: where each part of the model lives in a state dict: metadg's names, and the published RawNet2Spoof's
METADG = {"first_bn": "backbone.first_bn", "block": "backbone.blocks.{i}", "skip": "skip",
          "fms": "backbone.scaling.{i}.fc", "bn_gru": "backbone.bn_before_gru", "gru": "backbone.gru",
          "fc": "backbone.fc", "out": "head.proj"}
PUBLISHED = {"first_bn": "first_bn", "block": "block{i}.0", "skip": "conv_downsample", "fms": "fc_attention{i}.0",
             "bn_gru": "bn_before_gru", "gru": "gru", "fc": "fc1_gru", "out": "fc2_gru"}


def _reference(sd, sinc, wave, n_blocks: int, layers: int, names=METADG):
    """Eval-mode RawNet2 written with functional ops over a state dict with `names` (test-only)."""
    def bn(name, x):
        return F.batch_norm(x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                            sd[f"{name}.bias"], False, 0.0, 1e-5)

    x = F.selu(bn(names["first_bn"], F.max_pool1d(F.conv1d(wave.unsqueeze(1), sinc).abs(), 3)))
    for i in range(n_blocks):
        p, q = names["block"].format(i=i), names["fms"].format(i=i)
        out = F.conv1d(x, sd[f"{p}.conv1.weight"], sd[f"{p}.conv1.bias"], padding=1)
        out = F.conv1d(F.leaky_relu(bn(f"{p}.bn2", out), 0.3), sd[f"{p}.conv2.weight"], sd[f"{p}.conv2.bias"],
                       padding=1)
        k = f"{p}.{names['skip']}"
        skip = F.conv1d(x, sd[f"{k}.weight"], sd[f"{k}.bias"]) if f"{k}.weight" in sd else x
        x = F.max_pool1d(out + skip, 3)
        s = torch.sigmoid(F.linear(x.mean(-1), sd[f"{q}.weight"], sd[f"{q}.bias"])).unsqueeze(-1)
        x = x * s + s
    h = F.selu(bn(names["bn_gru"], x)).transpose(1, 2)
    for layer in range(layers):  # GRU equations (PyTorch's gate order r, z, n)
        g = names["gru"]
        w_ih, w_hh = sd[f"{g}.weight_ih_l{layer}"], sd[f"{g}.weight_hh_l{layer}"]
        b_ih, b_hh = sd[f"{g}.bias_ih_l{layer}"], sd[f"{g}.bias_hh_l{layer}"]
        state, outs = torch.zeros(h.shape[0], w_hh.shape[1]), []
        for t in range(h.shape[1]):
            gi, gh = F.linear(h[:, t], w_ih, b_ih).chunk(3, 1), F.linear(state, w_hh, b_hh).chunk(3, 1)
            r, z = torch.sigmoid(gi[0] + gh[0]), torch.sigmoid(gi[1] + gh[1])
            n = torch.tanh(gi[2] + r * gh[2])
            state = (1 - z) * n + z * state
            outs.append(state)
        h = torch.stack(outs, 1)
    fc = F.linear(h[:, -1], sd[f"{names['fc']}.weight"], sd[f"{names['fc']}.bias"])
    return F.linear(fc, sd[f"{names['out']}.weight"], sd[f"{names['out']}.bias"])


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


def published_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under every key of the published RawNet2Spoof at RawNet2_baseline.conf."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def put(name: str, *shape: int, scale: float = 0.05) -> None:
        sd[name] = torch.randn(*shape, generator=g) * scale

    def bn(name: str, c: int) -> None:
        put(f"{name}.weight", c), put(f"{name}.bias", c), put(f"{name}.running_mean", c)
        sd[f"{name}.weight"] += 1
        sd[f"{name}.running_var"] = 0.5 + torch.rand(c, generator=g)
        sd[f"{name}.num_batches_tracked"] = torch.tensor(3)

    bn("first_bn", 20)
    for i, (a, b) in enumerate([(20, 20), (20, 20), (20, 128), (128, 128), (128, 128), (128, 128)]):
        if i:
            bn(f"block{i}.0.bn1", a)
        put(f"block{i}.0.conv1.weight", b, a, 3), put(f"block{i}.0.conv1.bias", b)
        bn(f"block{i}.0.bn2", b)
        put(f"block{i}.0.conv2.weight", b, b, 3), put(f"block{i}.0.conv2.bias", b)
        if a != b:
            put(f"block{i}.0.conv_downsample.weight", b, a, 1), put(f"block{i}.0.conv_downsample.bias", b)
        put(f"fc_attention{i}.0.weight", b, b), put(f"fc_attention{i}.0.bias", b)
    bn("bn_before_gru", 128)
    for layer in range(3):
        put(f"gru.weight_ih_l{layer}", 3 * 1024, 128 if layer == 0 else 1024, scale=0.03)
        put(f"gru.weight_hh_l{layer}", 3 * 1024, 1024, scale=0.03)
        put(f"gru.bias_ih_l{layer}", 3 * 1024), put(f"gru.bias_hh_l{layer}", 3 * 1024)
    put("fc1_gru.weight", 1024, 1024, scale=0.03), put("fc1_gru.bias", 1024)
    put("fc2_gru.weight", 2, 1024, scale=0.03), put("fc2_gru.bias", 2)
    return sd


def test_the_published_layout_imports_and_scores_like_the_direct_computation(tmp_path, capsys):
    from hostile import cli
    from metadg.engine.build import load_trained

    sd = published_state()
    params = sum(v.numel() for k, v in sd.items() if not k.endswith(("running_mean", "running_var", "_tracked")))
    assert params == 17_621_410
    torch.save(sd, tmp_path / "rawnet2.pth")
    status, _, err = cli(capsys, "import", "rawnet2", str(tmp_path / "rawnet2.pth"), str(tmp_path / "run"))
    assert status == 0, err
    _, model, _, _ = load_trained(tmp_path / "run" / "checkpoints" / "best")
    wave = torch.randn(2, 6000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = _reference(sd, model.backbone.sinc.filters, wave, 6, 3, names=PUBLISHED)
        torch.testing.assert_close(model(wave), want, rtol=1e-4, atol=1e-5)
