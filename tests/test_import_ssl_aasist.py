"""`import_ssl_aasist`: a state dict in SSL_Anti-spoofing's layout, imported, scores like a direct computation.

The published layout is built here at tiny size: the XLS-R part from a tiny transformers model through
test_convert_fairseq's inverse renaming, the back-end written from the published model's module names.
The reference back-end is a transcription with torch.nn.functional ops on the state-dict tensors.
"""

from __future__ import annotations

import copy
import csv
import json
import math

import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
import yaml
from transformers import Wav2Vec2Config, Wav2Vec2Model

from metadg.config import ConfigError, build_experiment
from metadg.engine.build import build_model_and_adapter, load_trained
from metadg.engine.checkpoint import CheckpointError, read_checkpoint
from metadg.importers.ssl_aasist import import_ssl_aasist
from aasist_reference import Published
from hostile import cli, tone
from test_convert_fairseq import to_fairseq

HIDDEN = 64
FILTS = [[1, 32], [32, 32], [32, 64], [64, 64], [64, 64], [64, 64]]  # the recipe's six residual blocks
D0, D1 = 64, 32  # gat_dims


def tiny_xlsr(seed: int) -> Wav2Vec2Model:
    """A tiny XLS-R-shaped encoder (layer-norm conv stack, pre-LN transformer), tensors off their init values."""
    torch.manual_seed(seed)
    config = Wav2Vec2Config(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                            conv_dim=[32] * 5, conv_kernel=[10, 3, 3, 3, 2], conv_stride=[5, 2, 2, 2, 2],
                            conv_bias=True, feat_extract_norm="layer", do_stable_layer_norm=True,
                            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    model = Wav2Vec2Model(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def backend_state(in_dim: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under every back-end key of SSL_Anti-spoofing's Model (LL, encoder, attention, graphs)."""
    g = torch.Generator().manual_seed(seed)
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

    linear("LL", in_dim, 128)
    bn("first_bn", 1)
    for i, (a, b) in enumerate(FILTS):
        p = f"encoder.{i}.0"
        if i:
            bn(f"{p}.bn1", a)
        conv(f"{p}.conv1", a, b, 2, 3)
        bn(f"{p}.bn2", b)
        conv(f"{p}.conv2", b, b, 2, 3)
        if a != b:
            conv(f"{p}.conv_downsample", a, b, 1, 3)
    bn("first_bn1", 64)
    conv("attention.0", 64, 128, 1, 1)
    bn("attention.2", 128)
    conv("attention.3", 128, 64, 1, 1)
    sd["pos_S"], sd["master1"], sd["master2"] = rnd(1, 42, 64), rnd(1, 1, D0), rnd(1, 1, D0)
    for name in ("GAT_layer_S", "GAT_layer_T"):
        linear(f"{name}.att_proj", 64, D0)
        sd[f"{name}.att_weight"] = rnd(D0, 1)
        linear(f"{name}.proj_with_att", 64, D0)
        linear(f"{name}.proj_without_att", 64, D0)
        bn(f"{name}.bn", D0)
    for name, i in (("HtrgGAT_layer_ST11", D0), ("HtrgGAT_layer_ST12", D1), ("HtrgGAT_layer_ST21", D0),
                    ("HtrgGAT_layer_ST22", D1)):
        linear(f"{name}.proj_type1", i, i)
        linear(f"{name}.proj_type2", i, i)
        linear(f"{name}.att_proj", i, D1)
        linear(f"{name}.att_projM", i, D1)
        for w in ("att_weight11", "att_weight22", "att_weight12", "att_weightM"):
            sd[f"{name}.{w}"] = rnd(D1, 1)
        for proj in ("proj_with_att", "proj_without_att", "proj_with_attM", "proj_without_attM"):
            linear(f"{name}.{proj}", i, D1)
        bn(f"{name}.bn", D1)
    for name, dim in (("pool_S", D0), ("pool_T", D0), ("pool_hS1", D1), ("pool_hT1", D1), ("pool_hS2", D1),
                      ("pool_hT2", D1)):
        linear(f"{name}.proj", dim, 1)
    linear("out_layer", 5 * D1, 2)
    return sd


def reference_logits(sd: dict[str, torch.Tensor], feats: torch.Tensor) -> torch.Tensor:
    """SSL_Anti-spoofing's back-end in eval mode on (B, F, H) encoder outputs, from the state dict."""
    ref = Published(sd)
    x = ref.lin("LL", feats).transpose(1, 2).unsqueeze(1)  # (B, 1, 128, F)
    x = F.selu(ref.bn("first_bn", F.max_pool2d(x, (3, 3))))
    for i in range(len(FILTS)):
        p = f"encoder.{i}.0"
        out = ref.conv(f"{p}.conv1", x, (1, 1))  # the reference computes bn1/selu and then convolves x itself
        out = ref.conv(f"{p}.conv2", F.selu(ref.bn(f"{p}.bn2", out)), (0, 1))
        x = out + (ref.conv(f"{p}.conv_downsample", x, (0, 1)) if f"{p}.conv_downsample.weight" in sd else x)
    x = F.selu(ref.bn("first_bn1", x))
    w = ref.conv("attention.3", ref.bn("attention.2", F.selu(ref.conv("attention.0", x))))
    e_s = (x * torch.softmax(w, dim=-1)).sum(-1).transpose(1, 2) + sd["pos_S"]
    e_t = (x * torch.softmax(w, dim=-2)).sum(-2).transpose(1, 2)
    out_s = ref.pool("pool_S", ref.gat("GAT_layer_S", e_s, 2.0), 0.5)
    out_t = ref.pool("pool_T", ref.gat("GAT_layer_T", e_t, 2.0), 0.5)
    return ref.heterogeneous_readout(out_s, out_t, 0.5, 100.0)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """(folder, published state dict, the encoder it holds): LA_model.pth-like file and an XLS-R config folder."""
    root = tmp_path_factory.mktemp("ssl_aasist")
    encoder = tiny_xlsr(seed=1)
    tiny_xlsr(seed=2).save_pretrained(str(root / "xlsr"))  # other weights: only its config may be used
    sd = {f"ssl_model.model.{k}": v for k, v in to_fairseq(encoder.state_dict(), "layer_norm").items()}
    sd |= backend_state(HIDDEN)
    torch.save(sd, root / "LA_model.pth")
    return root, sd, encoder


@pytest.fixture(scope="module")
def imported(published):
    root, _, _ = published
    return import_ssl_aasist(root / "LA_model.pth", root / "run", backbone=root / "xlsr")


def _wave() -> torch.Tensor:
    return torch.randn(2, 8000, generator=torch.Generator().manual_seed(3))


def test_the_published_layout_imports_and_scores_like_the_direct_computation(published, imported):
    _, sd, encoder = published
    backend = {k: v for k, v in sd.items() if not k.startswith("ssl_model.")}
    assert sum(v.numel() for k, v in backend.items() if not k.endswith(("running_mean", "running_var", "batches_tracked"))) \
        == 447_242 - (1024 - HIDDEN) * 128  # the recipe's count, less the narrower LL projection
    _, model, _, meta = load_trained(imported / "checkpoints" / "best")
    assert meta["imported_from"].endswith("LA_model.pth")
    with torch.no_grad():
        want = reference_logits(backend, encoder(_wave()).last_hidden_state)
        torch.testing.assert_close(model(_wave()), want, rtol=1e-4, atol=1e-5)


def test_the_run_folder_holds_the_encoder_beside_a_head_only_checkpoint(published, imported):
    _, sd, _ = published
    config = yaml.safe_load((imported / "config.yaml").read_text())
    backbone = config["model"]["backbone"]
    assert (backbone["name"], backbone["pretrained"]) == ("ssl", str((imported / "backbone").resolve()))
    assert config["adapter"]["name"] == "head_only" and config["model"]["head"]["name"] == "aasist"
    tensors, _ = read_checkpoint(imported / "checkpoints" / "best")
    assert tensors and all(k.startswith("head.") for k in tensors)
    record = json.loads((imported / "backbone" / "conversion.json").read_text())
    assert {"ssl_model.model.quantizer.vars", "ssl_model.model.project_q.weight"} <= set(record["dropped"])
    assert len(record["mapped"]) + len(record["dropped"]) == sum(k.startswith("ssl_model.") for k in sd)
    assert Wav2Vec2Model.from_pretrained(str(imported / "backbone")).config.apply_spec_augment is False


def test_lora_fine_tuning_from_the_import_starts_at_its_outputs(imported):
    _, source, _, meta = load_trained(imported / "checkpoints" / "best")
    cfg = copy.deepcopy(meta["config"])
    cfg["name"], cfg["model"]["init_from"], cfg["adapter"] = "ft", str(imported), {"name": "lora", "r": 2}
    model, adapter = build_model_and_adapter(build_experiment(cfg))
    assert any("lora_A" in k for k in adapter.state_dict(model))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(_wave()), source(_wave()), rtol=1e-5, atol=1e-6)


def test_metadg_score_reads_the_import(imported, tmp_path, capsys):
    sf.write(tmp_path / "a.wav", tone(0.5), 16000)
    status, _, err = cli(capsys, "score", str(imported), str(tmp_path / "a.wav"), "--out", str(tmp_path / "s.csv"))
    assert status == 0, err
    rows = list(csv.DictReader(open(tmp_path / "s.csv")))
    assert len(rows) == 1 and rows[0]["score"] not in ("", None)


def test_a_key_that_is_neither_mapped_nor_dropped_is_named_and_nothing_is_left(published, tmp_path):
    root, sd, _ = published
    cases = [({**sd, "ssl_model.model.encoder.layers.0.adapter.weight": torch.zeros(2)},
              r"ssl_model\.model\.encoder\.layers\.0\.adapter\.weight"),
             ({**sd, "classifier.weight": torch.zeros(2)}, r"not SSL-AASIST's, e\.g\. 'classifier\.weight'"),
             ({k: v for k, v in sd.items() if k != "pos_S"}, r"missing \['head\.pos_s'\]"),
             ({k: v for k, v in sd.items() if k != "ssl_model.model.encoder.layers.1.fc2.bias"},
              r"encoder\.layers\.1\.feed_forward\.output_dense\.bias")]
    for i, (state, match) in enumerate(cases):
        torch.save(state, tmp_path / f"{i}.pth")
        with pytest.raises(CheckpointError, match=match):
            import_ssl_aasist(tmp_path / f"{i}.pth", tmp_path / f"run{i}", backbone=root / "xlsr")
        assert not (tmp_path / f"run{i}").exists()
    with pytest.raises(ConfigError, match="not a Hugging Face model folder"):
        import_ssl_aasist(root / "LA_model.pth", tmp_path / "x", backbone=tmp_path)


def test_the_import_command_needs_the_backbone_folder(published, tmp_path, capsys):
    from hostile import cli

    root, _, _ = published
    status, _, err = cli(capsys, "import", "ssl-aasist", str(root / "LA_model.pth"), str(tmp_path / "a"))
    assert status == 2 and "--backbone" in err and not (tmp_path / "a").exists()
    status, out, err = cli(capsys, "import", "ssl-aasist", str(root / "LA_model.pth"), str(tmp_path / "b"),
                           "--backbone", str(root / "xlsr"))
    assert status == 0 and "W2V2-AASIST" in out, err
    assert (tmp_path / "b" / "checkpoints" / "best" / "meta.json").is_file()
