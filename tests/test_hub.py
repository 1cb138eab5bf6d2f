"""`pretrained: <Hub id>` resolves through a Hugging Face cache laid out here, offline; no network is touched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metadg.config import ConfigError, validate_plugin
from metadg.models.hub import is_hub_id
from metadg.registry import MODELS

TINY = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
        "conv_dim": [16, 16], "conv_kernel": [10, 3], "conv_stride": [5, 2], "num_conv_pos_embeddings": 8,
        "num_conv_pos_embedding_groups": 2}


def _cache_model(cache: Path, repo: str, ref: str, commit: str, seed: int) -> dict[str, torch.Tensor]:
    """Write a tiny model into `cache` the way the Hub client stores a download; its state dict."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(seed)
    model = Wav2Vec2Model(Wav2Vec2Config(**TINY))
    root = cache / f"models--{repo.replace('/', '--')}"
    model.save_pretrained(root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / ref).write_text(commit)
    return model.state_dict()


def _resolve_offline(cache: Path, backbone: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    # A fresh interpreter: huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE when it is imported.
    script = tmp_path / "resolve.py"
    script.write_text(
        "import json, sys, torch\n"
        "from metadg.config import validate_plugin\n"
        "from metadg.registry import MODELS\n"
        "bb = validate_plugin(MODELS, json.loads(sys.argv[1]), 'model.backbone').build()\n"
        "torch.save({k: v for k, v in bb.model.state_dict().items()}, sys.argv[2])\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    return subprocess.run([sys.executable, str(script), json.dumps(backbone), str(tmp_path / "sd.pt")],
                          capture_output=True, text=True, env=env, timeout=300)


def test_a_hub_id_and_revision_resolve_from_the_cache_offline(tmp_path):
    cache = tmp_path / "hub"
    main = _cache_model(cache, "lab/tiny-w2v2", "main", "a" * 40, seed=0)
    tagged = _cache_model(cache, "lab/tiny-w2v2", "v1", "b" * 40, seed=1)
    for backbone, want in (({"name": "ssl", "pretrained": "lab/tiny-w2v2"}, main),
                           ({"name": "ssl", "pretrained": "lab/tiny-w2v2", "revision": "v1"}, tagged)):
        proc = _resolve_offline(cache, backbone, tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        got = torch.load(tmp_path / "sd.pt", weights_only=True)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_a_model_missing_offline_is_one_error_naming_the_id_and_the_download_command(tmp_path):
    proc = _resolve_offline(tmp_path / "empty-cache", {"name": "ssl", "pretrained": "lab/not-cached"}, tmp_path)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "lab/not-cached is not in the Hugging Face cache" in last and "hf download lab/not-cached" in last


def test_params_counts_a_hub_id_from_its_preset_without_the_cache(tmp_path):
    on_meta = torch.device("meta")
    with on_meta:
        bb = validate_plugin(MODELS, {"name": "ssl", "pretrained": "facebook/wav2vec2-xls-r-300m",
                                      "preset": "xlsr_300m"}, "b").build()
    assert sum(p.numel() for p in bb.parameters()) == 315_438_720


def test_hub_ids_are_told_apart_from_paths_and_revision_needs_one(tmp_path):
    assert is_hub_id("facebook/wav2vec2-xls-r-300m") and not is_hub_id("./models/x")
    assert not is_hub_id("/abs/path") and not is_hub_id("~/models/x") and not is_hub_id("a/b/c")
    (tmp_path / "local").mkdir()
    with pytest.raises(FileNotFoundError, match="not a Hugging Face checkpoint directory"):
        validate_plugin(MODELS, {"name": "ssl", "pretrained": str(tmp_path / "local")}, "b").build()
    with pytest.raises(ConfigError, match="revision"):
        validate_plugin(MODELS, {"name": "ssl", "preset": "tiny", "revision": "main"}, "model.backbone")
