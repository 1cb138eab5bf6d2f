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
    cfg = PRESETS[preset]
    ratios, temps = cfg["pool_ratios"], cfg["temperatures"]

    def lin(name: str, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, sd[f"{name}.weight"], sd[f"{name}.bias"])

    def bn(name: str, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                            sd[f"{name}.bias"], False, 0.0, 1e-5)

    def node_bn(name: str, x: torch.Tensor) -> torch.Tensor:
        return bn(name, x.reshape(-1, x.shape[-1])).reshape(x.shape)

    def gat(name: str, x: torch.Tensor, temp: float) -> torch.Tensor:
        pair = x.unsqueeze(2) * x.unsqueeze(1)
        att = torch.softmax((torch.tanh(lin(f"{name}.att_proj", pair)) @ sd[f"{name}.att_weight"]) / temp, dim=-2)
        out = lin(f"{name}.proj_with_att", att.squeeze(-1) @ x) + lin(f"{name}.proj_without_att", x)
        return F.selu(node_bn(f"{name}.bn", out))

    def htrg(name: str, x1: torch.Tensor, x2: torch.Tensor, master: torch.Tensor, temp: float):
        n1 = x1.shape[1]
        x = torch.cat([lin(f"{name}.proj_type1", x1), lin(f"{name}.proj_type2", x2)], dim=1)
        hidden = torch.tanh(lin(f"{name}.att_proj", x.unsqueeze(2) * x.unsqueeze(1)))
        board = torch.zeros(*hidden.shape[:3], 1)
        board[:, :n1, :n1] = hidden[:, :n1, :n1] @ sd[f"{name}.att_weight11"]
        board[:, n1:, n1:] = hidden[:, n1:, n1:] @ sd[f"{name}.att_weight22"]
        board[:, :n1, n1:] = hidden[:, :n1, n1:] @ sd[f"{name}.att_weight12"]
        board[:, n1:, :n1] = hidden[:, n1:, :n1] @ sd[f"{name}.att_weight12"]
        att = torch.softmax(board / temp, dim=-2)
        m_att = torch.softmax((torch.tanh(lin(f"{name}.att_projM", x * master)) @ sd[f"{name}.att_weightM"]) / temp,
                              dim=-2)
        master = lin(f"{name}.proj_with_attM", m_att.squeeze(-1).unsqueeze(1) @ x) + lin(f"{name}.proj_without_attM",
                                                                                          master)
        out = F.selu(node_bn(f"{name}.bn", lin(f"{name}.proj_with_att", att.squeeze(-1) @ x)
                             + lin(f"{name}.proj_without_att", x)))
        return out[:, :n1], out[:, n1:], master

    def pool(name: str, h: torch.Tensor, ratio: float) -> torch.Tensor:
        scores = torch.sigmoid(lin(f"{name}.proj", h))
        idx = torch.topk(scores, max(int(h.shape[1] * ratio), 1), dim=1).indices.expand(-1, -1, h.shape[-1])
        return torch.gather(h * scores, 1, idx)

    x = F.conv1d(wave.unsqueeze(1), SincFilters(cfg["filts"][0], cfg["first_conv"], 16000).filters).unsqueeze(1)
    x = F.selu(bn("first_bn", F.max_pool2d(x.abs(), (3, 3))))
    for i in range(6):
        p = f"encoder.{i}.0"
        out = F.conv2d(x, sd[f"{p}.conv1.weight"], sd[f"{p}.conv1.bias"], padding=(1, 1))
        out = F.conv2d(F.selu(bn(f"{p}.bn2", out)), sd[f"{p}.conv2.weight"], sd[f"{p}.conv2.bias"], padding=(0, 1))
        skip = (F.conv2d(x, sd[f"{p}.conv_downsample.weight"], sd[f"{p}.conv_downsample.bias"], padding=(0, 1))
                if f"{p}.conv_downsample.weight" in sd else x)
        x = F.max_pool2d(out + skip, (1, 3))
    out_s = pool("pool_S", gat("GAT_layer_S", x.abs().amax(3).transpose(1, 2) + sd["pos_S"], temps[0]), ratios[0])
    out_t = pool("pool_T", gat("GAT_layer_T", x.abs().amax(2).transpose(1, 2), temps[1]), ratios[1])
    paths = []
    for k in ("1", "2"):
        t1, s1, m1 = htrg(f"HtrgGAT_layer_ST{k}1", out_t, out_s, sd[f"master{k}"], temps[2])
        s1, t1 = pool(f"pool_hS{k}", s1, ratios[2]), pool(f"pool_hT{k}", t1, ratios[2])
        t2, s2, m2 = htrg(f"HtrgGAT_layer_ST{k}2", t1, s1, m1, temps[2])
        paths.append((t1 + t2, s1 + s2, m1 + m2))
    t, s, m = (torch.maximum(a, b) for a, b in zip(*paths))
    hidden = torch.cat([t.abs().amax(1), t.mean(1), s.abs().amax(1), s.mean(1), m.squeeze(1)], dim=1)
    return lin("out_layer", hidden)


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
