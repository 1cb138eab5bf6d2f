"""Backbones: local pretrained checkpoints, layer choice, no wasted backward through a frozen encoder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from metadg.config import validate_plugin
from metadg.models import build_model
from metadg.registry import ADAPTERS, HEADS, MODELS

ASSET = Path(__file__).resolve().parents[1] / "benchmarks" / "assets" / "tiny-ssl"


def model_with(backbone: dict, adapter: dict | None = None):
    torch.manual_seed(0)
    model = build_model(validate_plugin(MODELS, {"name": "ssl", **backbone}, "b"), validate_plugin(HEADS, "linear", "h"))
    if adapter:
        validate_plugin(ADAPTERS, adapter, "a").build().apply(model)
    return model


def test_pretrained_local_checkpoint_loads_its_weights():
    from safetensors.torch import load_file

    model = model_with({"pretrained": str(ASSET)})
    saved = load_file(ASSET / "model.safetensors")
    own = model.backbone.model.state_dict()
    name = "encoder.layers.0.attention.q_proj.weight"
    assert torch.equal(own[name], saved[name])
    assert model.backbone.out_dim == 64 and model.backbone.num_layers == 2


def test_missing_pretrained_dir_says_what_it_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a Hugging Face checkpoint directory.*never downloads"):
        model_with({"pretrained": str(tmp_path / "nowhere")})


@pytest.mark.parametrize("layer", ["last", "weighted", 1])
def test_layer_choice_shapes_and_masks(layer):
    model = model_with({"preset": "tiny", "layer": layer}).eval()
    x = torch.randn(2, 8000)
    feats, mask = model.backbone(x, torch.tensor([8000, 4000]))
    assert feats.shape[0] == 2 and feats.shape[2] == 64
    assert mask.sum(1).tolist()[0] > mask.sum(1).tolist()[1]
    assert model(x).shape == (2, 2)


@pytest.mark.parametrize(("adapter", "encoder_backward"), [({"name": "lora", "r": 2}, False), ({"name": "head_only"}, False), ({"name": "full"}, True)])
def test_frozen_feature_encoder_is_not_backpropagated(adapter, encoder_backward):
    model = model_with({"preset": "tiny"}, adapter).train()
    calls = []
    first_conv = model.backbone.model.get_base_model().feature_extractor.conv_layers[0] if hasattr(model.backbone.model, "get_base_model") else model.backbone.model.feature_extractor.conv_layers[0]
    first_conv.register_full_backward_hook(lambda *a: calls.append(1))
    loss = nn.functional.cross_entropy(model(torch.randn(2, 4000)), torch.tensor([0, 1]))
    loss.backward()
    assert bool(calls) is encoder_backward


@pytest.mark.parametrize("model_type", ["hubert", "wavlm", "data2vec-audio"])
def test_other_ssl_families_take_lora_and_train(model_type):
    fields = {"model_type": model_type, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
              "intermediate_size": 64, "conv_dim": [16] * 3, "conv_kernel": [10, 4, 4], "conv_stride": [5, 4, 4],
              "num_conv_pos_embeddings": 8, "num_conv_pos_embedding_groups": 2}
    if model_type == "data2vec-audio":
        fields["num_conv_pos_embeddings"] = 3  # data2vec-audio stacks kernel-size convolutions
    if model_type == "wavlm":  # WavLM reads q/k/v weights directly: LoRA there must be refused, not ignored
        with pytest.raises(ValueError, match=r"WavLMModel never run as modules"):
            model_with({"config": fields}, {"name": "lora", "r": 2})
        return
    model = model_with({"config": fields}, {"name": "lora", "r": 2})
    lora = [n for n, p in model.named_parameters() if p.requires_grad and ".lora_" in n]
    assert len(lora) == 2 * 4 * 2  # A and B on q/k/v/out of 2 layers
    loss = nn.functional.cross_entropy(model(torch.randn(2, 4000)), torch.tensor([0, 1]))
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and "lora_B" in n)


@pytest.mark.parametrize("head", ["linear", "aasist"])
def test_embedding_split_gives_the_same_logits(head):
    from metadg.config import validate_plugin
    from metadg.models.classifier import build_model
    from metadg.registry import HEADS, MODELS

    torch.manual_seed(0)
    model = build_model(validate_plugin(MODELS, {"name": "ssl", "preset": "tiny"}, "b"),
                        validate_plugin(HEADS, {"name": head}, "h"), num_classes=3).eval()
    x = torch.randn(2, 4000)
    with torch.no_grad():
        logits = model(x)
        both, emb = model(x, with_embedding=True)
        assert emb.shape == (2, model.embed_dim) and logits.shape == (2, 3)
        assert torch.equal(both, logits) and torch.equal(model.head.classify(emb), logits)
        assert torch.equal(model.embed(x), emb)
