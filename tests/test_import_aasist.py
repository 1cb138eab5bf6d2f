"""`metadg import aasist`: a state dict in clovaai/aasist's key layout, imported, scores like a direct computation.

The reference is written here from the published layout with plain torch.nn.functional ops on the
state-dict tensors (test-only code): no metadg module computes it.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from metadg.engine.build import load_trained
from metadg.engine.checkpoint import CheckpointError
from metadg.models.aasist_raw import PRESETS, SincFilters
from aasist_reference import Published
from hostile import cli

PRESET = "AASIST-L"  # its hetero pool ratio (0.7) differs from pool_ratios[3]: the index matters


def published_state(preset: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under every key of the published model (module names as in clovaai/aasist)."""
    cfg, g = PRESETS[preset], torch.Generator().manual_seed(seed)
    filts, (d0, d1) = cfg["filts"], cfg["gat_dims"]
    sd: dict[str, torch.Tensor] = {}

    def rnd(*shape: int, scale: float = 0.3) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    def linear(name: str, i: int, o: int) -> None:
        sd[f"{name}.weight"], sd[f"{name}.bias"] = rnd(o, i, scale=1 / math.sqrt(i)), rnd(o, scale=0.1)

    def bn(name: str, c: int) -> None:
        sd[f"{name}.weight"], sd[f"{name}.bias"] = 1 + rnd(c, scale=0.1), rnd(c, scale=0.1)
        sd[f"{name}.running_mean"], sd[f"{name}.running_var"] = rnd(c, scale=0.1), 0.5 + torch.rand(c, generator=g)
        sd[f"{name}.num_batches_tracked"] = torch.tensor(7)

    def conv(name: str, i: int, o: int, kh: int, kw: int) -> None:
        sd[f"{name}.weight"], sd[f"{name}.bias"] = rnd(o, i, kh, kw, scale=1 / math.sqrt(i * kh * kw)), rnd(o, scale=0.1)

    bn("first_bn", 1)
    for i, (a, b) in enumerate([*filts[1:], filts[-1], filts[-1]]):
        p = f"encoder.{i}.0"
        if i:
            bn(f"{p}.bn1", a)
        conv(f"{p}.conv1", a, b, 2, 3)
        bn(f"{p}.bn2", b)
        conv(f"{p}.conv2", b, b, 2, 3)
        if a != b:
            conv(f"{p}.conv_downsample", a, b, 1, 3)
    c = filts[-1][1]
    sd["pos_S"], sd["master1"], sd["master2"] = rnd(1, filts[0] // 3, c), rnd(1, 1, d0), rnd(1, 1, d0)
    for name in ("GAT_layer_S", "GAT_layer_T"):
        linear(f"{name}.att_proj", c, d0)
        sd[f"{name}.att_weight"] = rnd(d0, 1)
        linear(f"{name}.proj_with_att", c, d0)
        linear(f"{name}.proj_without_att", c, d0)
        bn(f"{name}.bn", d0)
    for name, i in (("HtrgGAT_layer_ST11", d0), ("HtrgGAT_layer_ST12", d1), ("HtrgGAT_layer_ST21", d0),
                    ("HtrgGAT_layer_ST22", d1)):
        linear(f"{name}.proj_type1", i, i)
        linear(f"{name}.proj_type2", i, i)
        linear(f"{name}.att_proj", i, d1)
        linear(f"{name}.att_projM", i, d1)
        for w in ("att_weight11", "att_weight22", "att_weight12", "att_weightM"):
            sd[f"{name}.{w}"] = rnd(d1, 1)
        for proj in ("proj_with_att", "proj_without_att", "proj_with_attM", "proj_without_attM"):
            linear(f"{name}.{proj}", i, d1)
        bn(f"{name}.bn", d1)
    for name, dim in (("pool_S", d0), ("pool_T", d0), ("pool_hS1", d1), ("pool_hT1", d1), ("pool_hS2", d1),
                      ("pool_hT2", d1)):
        linear(f"{name}.proj", dim, 1)
    linear("out_layer", 5 * d1, 2)
    return sd


def reference_logits(sd: dict[str, torch.Tensor], wave: torch.Tensor, preset: str) -> torch.Tensor:
    """The published model's eval-mode forward, computed from the state dict with functional ops."""
    cfg, ref = PRESETS[preset], Published(sd)
    ratios, temps = cfg["pool_ratios"], cfg["temperatures"]
    x = F.conv1d(wave.unsqueeze(1), SincFilters(cfg["filts"][0], cfg["first_conv"], 16000).filters).unsqueeze(1)
    x = F.selu(ref.bn("first_bn", F.max_pool2d(x.abs(), (3, 3))))
    for i in range(6):
        p = f"encoder.{i}.0"
        out = ref.conv(f"{p}.conv1", x, (1, 1))
        out = ref.conv(f"{p}.conv2", F.selu(ref.bn(f"{p}.bn2", out)), (0, 1))
        skip = ref.conv(f"{p}.conv_downsample", x, (0, 1)) if f"{p}.conv_downsample.weight" in sd else x
        x = F.max_pool2d(out + skip, (1, 3))
    out_s = ref.pool("pool_S", ref.gat("GAT_layer_S", x.abs().amax(3).transpose(1, 2) + sd["pos_S"], temps[0]),
                     ratios[0])
    out_t = ref.pool("pool_T", ref.gat("GAT_layer_T", x.abs().amax(2).transpose(1, 2), temps[1]), ratios[1])
    return ref.heterogeneous_readout(out_s, out_t, ratios[2], temps[2])


def test_the_published_layout_imports_and_scores_like_the_direct_computation(tmp_path, capsys):
    sd = published_state(PRESET)
    assert len(sd) == 229 and sum(v.numel() for k, v in sd.items()
                                  if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))) == 85_306
    torch.save(sd, tmp_path / "AASIST-L.pth")
    status, stdout, err = cli(capsys, "import", "aasist", str(tmp_path / "AASIST-L.pth"), str(tmp_path / "run"),
                              "--preset", PRESET)
    assert status == 0, err
    _, model, _, meta = load_trained(tmp_path / "run" / "checkpoints" / "best")
    assert meta["imported_from"].endswith("AASIST-L.pth")
    wave = torch.randn(3, 24000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(wave), reference_logits(sd, wave, PRESET), rtol=1e-4, atol=1e-5)


def test_a_checkpoint_of_another_model_or_preset_is_refused_naming_keys(tmp_path):
    from metadg.importers.aasist import import_aasist

    sd = published_state("AASIST")
    torch.save(sd, tmp_path / "a.pth")
    with pytest.raises(CheckpointError, match=r"shape .*, the model has .*try --preset AASIST-L or AASIST"):
        import_aasist(tmp_path / "a.pth", tmp_path / "x", "AASIST-L")
    torch.save({**sd, "extra.weight": torch.zeros(1)}, tmp_path / "b.pth")
    with pytest.raises(CheckpointError, match=r"1 key\(s\) are not AASIST's, e.g. 'extra.weight'"):
        import_aasist(tmp_path / "b.pth", tmp_path / "y")
    torch.save({k: v for k, v in sd.items() if k != "pos_S"}, tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match=r"missing \['backbone.pos_s'\]"):
        import_aasist(tmp_path / "c.pth", tmp_path / "z")


def test_a_pickle_with_code_is_refused_without_running_it(tmp_path):
    from metadg.importers.aasist import import_aasist

    marker = tmp_path / "MARKER"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"weight": torch.zeros(1), "evil": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="not a plain state dict"):
        import_aasist(tmp_path / "evil.pth", tmp_path / "run")
    assert not marker.exists()
