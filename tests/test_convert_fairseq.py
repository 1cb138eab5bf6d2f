"""fairseq wav2vec 2.0 checkpoints → transformers folders: same outputs, every key accounted for, no code run.

The fairseq layout is written here from a tiny transformers model by the inverse renaming (test-only code,
independent of the converter's rules), with the pre-training-only tensors a real checkpoint also holds.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import types

import numpy as np
import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2Model

from metadg.engine.checkpoint import CheckpointError
from metadg.importers.fairseq_wav2vec2 import convert_fairseq_wav2vec2, hf_config, parse_conv_layers

CONV = "[(32, 10, 5)] + [(32, 3, 2)] * 2 + [(32,2,2)]"
VARIANTS = [("default", False), ("layer_norm", True)]  # HF: group norm + post-LN; layer norm + pre-LN (XLS-R)


def tiny_hf(mode: str, stable: bool, seed: int = 0) -> Wav2Vec2Model:
    """A tiny random wav2vec 2.0 of the shape `fairseq_cfg` describes, every tensor moved off its init value."""
    torch.manual_seed(seed)
    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                            conv_dim=[32] * 4, conv_kernel=[10, 3, 3, 2], conv_stride=[5, 2, 2, 2], conv_bias=stable,
                            feat_extract_norm="group" if mode == "default" else "layer", do_stable_layer_norm=stable,
                            num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4)
    model = Wav2Vec2Model(config).eval()
    with torch.no_grad():  # layer norms start at (1, 0): a swapped pair would go unnoticed
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def fairseq_cfg(mode: str, stable: bool) -> dict:
    return {"_name": "wav2vec2", "extractor_mode": mode, "encoder_layers": 2, "encoder_embed_dim": 32,
            "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 4, "activation_fn": "gelu", "dropout": 0.1,
            "attention_dropout": 0.1, "activation_dropout": 0.0, "encoder_layerdrop": 0.05, "dropout_input": 0.1,
            "dropout_features": 0.1, "final_dim": 16, "layer_norm_first": stable, "conv_feature_layers": CONV,
            "conv_bias": stable, "latent_vars": 8, "latent_groups": 2, "latent_dim": 0, "mask_length": 10,
            "mask_prob": 0.65, "conv_pos": 8, "conv_pos_groups": 4, "quantize_targets": True, "feature_grad_mult": 0.1}


def to_fairseq(hf: dict[str, torch.Tensor], mode: str) -> dict[str, torch.Tensor]:
    """transformers keys → fairseq Wav2Vec2Model keys, plus the quantizer and pre-training projections."""
    out = {}
    for key, value in hf.items():
        conv = re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.(conv|layer_norm)\.(weight|bias)", key)
        if conv:
            i, part, leaf = conv.groups()
            slot = "0" if part == "conv" else ("2.1" if mode == "layer_norm" else "2")
            new = f"feature_extractor.conv_layers.{i}.{slot}.{leaf}"
        elif key.startswith("feature_projection.layer_norm."):
            new = key.replace("feature_projection.", "")
        elif key.startswith("feature_projection.projection."):
            new = key.replace("feature_projection.projection.", "post_extract_proj.")
        elif key == "masked_spec_embed":
            new = "mask_emb"
        elif key.startswith("encoder.pos_conv_embed.conv."):
            leaf = {"bias": "bias", "parametrizations.weight.original0": "weight_g",
                    "parametrizations.weight.original1": "weight_v"}[key.removeprefix("encoder.pos_conv_embed.conv.")]
            new = f"encoder.pos_conv.0.{leaf}"
        else:
            new = (key.replace(".attention.", ".self_attn.").replace(".layer_norm.", ".self_attn_layer_norm.")
                   .replace("feed_forward.intermediate_dense", "fc1").replace("feed_forward.output_dense", "fc2"))
            new = new.replace("encoder.self_attn_layer_norm.", "encoder.layer_norm.")  # the encoder's own LN
        out[new] = value.clone()
    g = torch.Generator().manual_seed(5)
    out |= {"quantizer.vars": torch.randn(1, 16, 8, generator=g),
            "quantizer.weight_proj.weight": torch.randn(16, 32, generator=g), "quantizer.weight_proj.bias": torch.zeros(16),
            "project_q.weight": torch.randn(16, 16, generator=g), "project_q.bias": torch.zeros(16),
            "final_proj.weight": torch.randn(16, 32, generator=g), "final_proj.bias": torch.zeros(16)}
    return out


def modern(sd: dict, cfg: dict) -> dict:
    """fairseq >= 0.10 layout: `cfg` as a plain container, training state beside it."""
    return {"args": None, "cfg": {"_name": None, "common": {"fp16": True}, "model": cfg,
                                  "task": {"_name": "audio_pretraining", "sample_rate": 16000}},
            "model": sd, "criterion": None,
            "optimizer_history": [{"criterion_name": "Wav2vecCriterion", "optimizer_name": "FairseqAdam",
                                   "lr_scheduler_state": {"best": np.float64(2.5)}, "num_updates": 10}],
            "task_state": {}, "extra_state": {"metrics": {}, "previous_training_time": 12.0},
            "last_optimizer_state": {"state": {}, "param_groups": [{"lr": 5e-4, "betas": (0.9, 0.98)}]}}


def legacy(sd: dict, cfg: dict) -> dict:
    """Older layout: the model config is the argparse Namespace of the training command line."""
    fields = {k: v for k, v in cfg.items() if k != "_name"}
    return {"args": argparse.Namespace(arch="wav2vec2", task="audio_pretraining", lr=[5e-4], **fields), "model": sd}


def outputs(model: Wav2Vec2Model) -> torch.Tensor:
    wave = torch.randn(2, 4000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.eval()(wave).last_hidden_state


def convert(tmp_path, state: dict, name: str = "ckpt"):
    torch.save(state, tmp_path / f"{name}.pt")
    return convert_fairseq_wav2vec2(tmp_path / f"{name}.pt", tmp_path / f"{name}_hf", trust_checkpoint=True)


@pytest.mark.parametrize("layout", [modern, legacy])
@pytest.mark.parametrize("mode,stable", VARIANTS)
def test_a_converted_checkpoint_computes_what_the_original_does(tmp_path, mode, stable, layout):
    hf = tiny_hf(mode, stable)
    out = convert(tmp_path, layout(to_fairseq(hf.state_dict(), mode), fairseq_cfg(mode, stable)))
    loaded = Wav2Vec2Model.from_pretrained(str(out))
    assert loaded.config.do_stable_layer_norm is stable
    assert loaded.config.feat_extract_norm == ("group" if mode == "default" else "layer")
    assert (loaded.config.layerdrop, loaded.config.feat_proj_dropout) == (0.05, 0.1)
    torch.testing.assert_close(outputs(loaded), outputs(hf), rtol=0, atol=0)
    record = json.loads((out / "conversion.json").read_text())
    assert set(record["dropped"]) == {"quantizer.vars", "quantizer.weight_proj.weight", "quantizer.weight_proj.bias",
                                      "project_q.weight", "project_q.bias", "final_proj.weight", "final_proj.bias"}
    assert all(record["dropped"].values())  # each with its reason
    assert record["mapped"]["encoder.pos_conv.0.weight_g"] == "encoder.pos_conv_embed.conv.parametrizations.weight.original0"
    assert len(record["mapped"]) == len(hf.state_dict()) and record["config"]["hidden_size"] == 32


def test_a_missing_or_an_unknown_key_fails_naming_it(tmp_path):
    hf = tiny_hf("layer_norm", True)
    sd, cfg = to_fairseq(hf.state_dict(), "layer_norm"), fairseq_cfg("layer_norm", True)
    missing = {k: v for k, v in sd.items() if k != "encoder.layers.0.fc1.weight"}
    with pytest.raises(CheckpointError, match=r"encoder\.layers\.0\.feed_forward\.intermediate_dense\.weight"):
        convert(tmp_path, modern(missing, cfg), "missing")
    with pytest.raises(CheckpointError, match=r"encoder\.layers\.0\.adapter\.weight"):
        convert(tmp_path, modern({**sd, "encoder.layers.0.adapter.weight": torch.zeros(2)}, cfg), "extra")
    wrong = {**cfg, "encoder_ffn_embed_dim": 48}  # config and tensors disagree: a shape error naming the key
    with pytest.raises(CheckpointError, match=r"intermediate_dense\.weight: shape \(64, 32\), the model has \(48, 32\)"):
        convert(tmp_path, modern(sd, wrong), "wrong")
    with pytest.raises(CheckpointError, match=r"'hubert'"):
        convert(tmp_path, modern(sd, {**cfg, "_name": "hubert"}), "hubert")
    assert not any(p.name.endswith("_hf") for p in tmp_path.iterdir())  # nothing half-written


def test_without_trust_the_file_is_not_read(tmp_path):
    with pytest.raises(CheckpointError, match=r"pickle.*weights_only.*--trust-checkpoint"):
        convert_fairseq_wav2vec2(tmp_path / "absent.pt", tmp_path / "out", trust_checkpoint=False)


def test_a_pickle_with_code_is_refused_naming_the_global_without_running_it(tmp_path):
    marker = tmp_path / "MARKER"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model": {"mask_emb": torch.zeros(2)}, "cfg": {"model": Evil()}}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"refused: the pickle names io\.open"):
        convert_fairseq_wav2vec2(tmp_path / "evil.pt", tmp_path / "out", trust_checkpoint=True)
    torch.save({"model": {}, "cfg": Evil()}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=r"refused: the pickle names io\.open"):  # legacy format: found by loading
        convert_fairseq_wav2vec2(tmp_path / "old.pt", tmp_path / "out", trust_checkpoint=True)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_the_conv_spec_is_read_as_data_never_evaluated(tmp_path):
    assert parse_conv_layers("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2") == \
        [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    marker = tmp_path / "MARKER"
    for spec in (f"__import__('os').system('touch {marker}')", "[(512, 10, 5)] * 10**9", "[(512, 10)]", "[x] * 2"):
        with pytest.raises(CheckpointError, match="conv_feature_layers"):
            parse_conv_layers(spec)
    assert not marker.exists()


def _fake_modules(monkeypatch, names: list[str]) -> dict[str, type]:
    """Importable classes under omegaconf's and fairseq's names, so a pickle names them as the real ones do."""
    classes, made = {}, set()
    for full in names:
        module_name, name = full.rsplit(".", 1)
        parts = module_name.split(".")
        for prefix in (".".join(parts[:i]) for i in range(1, len(parts) + 1)):
            if prefix not in made:  # shadows a real install for the length of the test
                monkeypatch.setitem(sys.modules, prefix, types.ModuleType(prefix))
                made.add(prefix)
        classes[name] = type(name, (), {"__module__": module_name, "__qualname__": name})
        setattr(sys.modules[module_name], name, classes[name])
    return classes


def test_a_dictconfig_cfg_is_read_without_omegaconf_or_running_its_classes(tmp_path, monkeypatch):
    import typing

    c = _fake_modules(monkeypatch, ["omegaconf.dictconfig.DictConfig", "omegaconf.nodes.AnyNode",
                                    "omegaconf.nodes.EnumNode", "omegaconf.base.ContainerMetadata",
                                    "fairseq.dataclass.constants.Choices"])
    c["Choices"].__reduce__ = lambda self: (type(self), (self.value,))  # how an Enum member pickles

    def with_metadata(obj: object) -> object:
        # omegaconf's layout: NEWOBJ, then BUILD with _metadata, _parent and _content (containers) or _val (nodes)
        obj._metadata, obj._parent = c["ContainerMetadata"](), None
        obj._metadata.__dict__.update(ref_type=typing.Any, object_type=dict, key_type=str)
        return obj

    def dictconfig(d: dict) -> object:
        out = with_metadata(c["DictConfig"]())
        out._content = {k: dictconfig(v) if isinstance(v, dict) else node(v) for k, v in d.items()}
        return out

    def node(v: object) -> object:
        n = with_metadata(c["EnumNode" if isinstance(v, c["Choices"]) else "AnyNode"]())
        n._val = v
        return n

    mode = c["Choices"]()
    mode.value = "layer_norm"
    hf = tiny_hf("layer_norm", True)
    cfg = {"model": {**fairseq_cfg("layer_norm", True), "extractor_mode": mode}, "task": {"_name": "audio_pretraining"}}
    torch.save({"cfg": dictconfig(cfg), "model": to_fairseq(hf.state_dict(), "layer_norm")}, tmp_path / "dc.pt")
    monkeypatch.undo()  # the reader must not need the classes: they are gone again
    out = convert_fairseq_wav2vec2(tmp_path / "dc.pt", tmp_path / "dc_hf", trust_checkpoint=True)
    torch.testing.assert_close(outputs(Wav2Vec2Model.from_pretrained(str(out))), outputs(hf), rtol=0, atol=0)


def test_a_real_omegaconf_dictconfig_converts(tmp_path):
    import omegaconf  # in the dev extra: a real DictConfig, as fairseq pickles it

    hf = tiny_hf("default", False)
    cfg = omegaconf.OmegaConf.create({"model": fairseq_cfg("default", False), "task": {"_name": "audio_pretraining"}})
    torch.save({"cfg": cfg, "model": to_fairseq(hf.state_dict(), "default")}, tmp_path / "oc.pt")
    out = convert_fairseq_wav2vec2(tmp_path / "oc.pt", tmp_path / "oc_hf", trust_checkpoint=True)
    torch.testing.assert_close(outputs(Wav2Vec2Model.from_pretrained(str(out))), outputs(hf), rtol=0, atol=0)


def test_the_xls_r_300m_config_gives_the_transformers_xls_r_shape():
    xlsr = {"_name": "wav2vec2", "extractor_mode": "layer_norm", "layer_norm_first": True, "encoder_layers": 24,
            "encoder_embed_dim": 1024, "encoder_ffn_embed_dim": 4096, "encoder_attention_heads": 16,
            "final_dim": 768, "conv_bias": True, "quantize_targets": True}
    config, defaulted = hf_config(xlsr, "xlsr2_300m.pt")
    assert "conv_feature_layers" in defaulted and config.conv_stride == [5, 2, 2, 2, 2, 2, 2]
    with torch.device("meta"):
        assert sum(p.numel() for p in Wav2Vec2Model(config).parameters()) == 315_438_720


def test_the_convert_command_needs_trust_and_writes_a_folder_the_ssl_backbone_loads(tmp_path, capsys):
    from hostile import cli
    from metadg.config import validate_plugin
    from metadg.registry import MODELS

    hf = tiny_hf("layer_norm", True)
    torch.save(modern(to_fairseq(hf.state_dict(), "layer_norm"), fairseq_cfg("layer_norm", True)), tmp_path / "x.pt")
    status, _, err = cli(capsys, "convert", "fairseq-wav2vec2", str(tmp_path / "x.pt"), str(tmp_path / "hf"))
    assert status == 1 and "--trust-checkpoint" in err and not (tmp_path / "hf").exists()
    status, out, err = cli(capsys, "convert", "fairseq-wav2vec2", str(tmp_path / "x.pt"), str(tmp_path / "hf"),
                           "--trust-checkpoint")
    assert status == 0, err
    assert "conversion.json" in out
    backbone = validate_plugin(MODELS, {"name": "ssl", "pretrained": str(tmp_path / "hf")}, "model.backbone").build()
    torch.testing.assert_close(outputs(backbone.model), outputs(hf), rtol=0, atol=0)
