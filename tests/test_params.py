"""Parameter accounting at XLS-R shape (meta device: no memory, no weights)."""

from __future__ import annotations

import subprocess
import sys

from metadg.config import build_experiment
from metadg.engine.accounting import count


def experiment(tiny_config, backbone, adapter, head=None):
    tiny_config["model"] = {"backbone": {"name": "ssl", **backbone}, "head": head or {"name": "linear"}}
    tiny_config["adapter"] = adapter
    return build_experiment(tiny_config)


def test_xlsr_lora_matches_the_paper_adapter_count(tiny_config):
    report = count(experiment(tiny_config, {"preset": "xlsr_300m"}, {"name": "lora", "r": 16}))
    lora = sum(v for k, v in report.groups.items() if k.startswith("backbone LoRA"))
    assert lora == 3_145_728  # r=16 on q/k/v/out of 24 layers: 24 · 4 · 16 · (1024 + 1024)
    head = 1024 * 2 + 2
    assert report.full_finetune == 315_438_720 + head  # HF Wav2Vec2Model at XLS-R 300M shape
    assert report.trainable == lora + head
    assert report.total == report.full_finetune + lora


def test_full_and_head_only_counts(tiny_config):
    full = count(experiment(tiny_config, {"preset": "tiny"}, {"name": "full"}))
    assert full.trainable == full.total == full.full_finetune
    probe = count(experiment(tiny_config, {"preset": "tiny"}, {"name": "head_only"}))
    assert probe.trainable == 64 * 2 + 2 and probe.groups == {"head.proj": 130}


def test_per_head_lora_count(tiny_config):
    r, d, heads, layers = 2, 64, 4, 2
    report = count(experiment(tiny_config, {"preset": "tiny"}, {"name": "lora", "r": r, "per_head": True}))
    # q/k/v: A is (r·H × d), B block-diagonal stores d × r; out_proj mirrors it: 4·r·d·(H+1) per layer
    assert report.trainable - 130 == layers * 4 * r * d * (heads + 1)


def test_cli_params_prints_the_report(tmp_path, tiny_config):
    import yaml

    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({**tiny_config, "model": {"backbone": {"name": "ssl", "preset": "xlsr_300m"}, "head": {"name": "linear"}}, "adapter": {"name": "lora"}}))
    proc = subprocess.run([sys.executable, "-m", "metadg", "params", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "backbone LoRA on q_proj" in proc.stdout and "786,432" in proc.stdout
    assert "3,147,778" in proc.stdout and "% of full fine-tuning" in proc.stdout


def test_paper_configuration_trains_3_6_million(tiny_config):
    exp = experiment(tiny_config, {"preset": "xlsr_300m"}, {"name": "lora", "r": 16}, head={"name": "aasist"})
    report = count(exp)
    assert report.trainable == 3_592_970  # 3,145,728 LoRA + 447,242 AASIST back-end (REFERENCE.md)
    assert round(report.percent_of_full, 2) == 1.14  # the paper's "1.1 %"


def test_every_registered_model_counts_on_the_meta_device_as_built(tiny_config):
    # `metadg params` builds on the meta device: every backbone must build there, and count as it does for real.
    import torch

    from metadg.engine.build import build_model_and_adapter
    from metadg.registry import MODELS

    small = {"ssl": {"preset": "tiny"}, "aasist_raw": {"preset": "AASIST-L"}, "rawnet2": {"gru_node": 32, "nb_fc_node": 32},
             "lcnn": {}}
    assert set(MODELS.names()) <= set(small), "a new backbone: add it here"
    for name in MODELS.names():
        tiny_config["model"] = {"backbone": {"name": name, **small[name]}, "head": {"name": "linear"}}
        for adapter in ({"name": "full"}, {"name": "lora", "r": 2}):
            tiny_config["adapter"] = adapter
            exp = build_experiment(tiny_config)
            model, built = build_model_and_adapter(exp)
            report = count(exp)
            assert report.trainable == sum(p.numel() for p in built.trainable_parameters(model).values()), name
            assert report.total == sum(p.numel() for p in model.parameters()), name
    assert torch.empty(0).device.type == "cpu"  # the meta device was left
