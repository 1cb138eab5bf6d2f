"""AASIST on raw waveforms: the published parameter counts, the sinc front-end, shapes, padding, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metadg.config import ConfigError, build_experiment, validate_plugin
from metadg.models import build_model
from metadg.models.aasist_raw import SincFilters
from metadg.registry import HEADS, MODELS


def _model(preset: str, **extra):
    backbone = validate_plugin(MODELS, {"name": "aasist_raw", "preset": preset, **extra}, "model.backbone")
    return build_model(backbone, validate_plugin(HEADS, {"name": "linear", "dropout": 0.5}, "model.head"))


@pytest.mark.parametrize("preset, params", [("AASIST", 297_866), ("AASIST-L", 85_306)])
def test_the_published_presets_have_the_published_parameter_counts(preset, params):
    model = _model(preset)
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(model.state_dict()) == 229  # the published checkpoints hold 229 tensors (BN statistics included)
    assert not any("sinc" in k for k in model.state_dict())  # the fixed filter bank is not a weight


def test_the_sinc_bank_telescopes_to_a_unit_impulse():
    # Adjacent bands share their edges, so the ideal responses sum to low-pass(8 kHz) − low-pass(0):
    # sinc(t) at integer t, a unit impulse; the window is 1 at the centre tap.
    bank = SincFilters(70, 128, 16000)
    taps = bank.filters.squeeze(1).double()
    assert bank.kernel == 129 and taps.shape == (70, 129)
    total = taps.sum(0)
    impulse = torch.zeros(129, dtype=torch.float64)
    impulse[64] = 1.0
    torch.testing.assert_close(total, impulse, atol=1e-5, rtol=0)
    assert torch.equal(taps, taps.flip(-1))  # symmetric (linear phase)
    # Each band passes its own centre frequency better than the others' centres, away from the edges.
    edges = 700 * (10 ** (np.linspace(0, 2595 * np.log10(1 + 8000 / 700), 71) / 2595) - 1)
    centres = (edges[:-1] + edges[1:]) / 2
    t = np.arange(-64, 65)
    response = np.abs(taps.numpy() @ np.exp(-2j * np.pi * np.outer(t, centres) / 16000))  # (band, centre)
    assert (response.argmax(1) == np.arange(70)).mean() > 0.9


def test_short_inputs_are_zero_padded_to_the_receptive_field_and_shapes_hold():
    model = _model("AASIST-L").eval()
    assert model.backbone.min_samples == 128 + 3 ** 7
    wave = torch.randn(2, 1000)
    padded = torch.nn.functional.pad(wave, (0, model.backbone.min_samples - 1000))
    with torch.no_grad():
        torch.testing.assert_close(model(wave), model(padded))
        logits, embedding = model(torch.randn(3, 64600), with_embedding=True)
    assert logits.shape == (3, 2) and embedding.shape == (3, 160)


def test_a_bad_filter_layout_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"model\.backbone[\s\S]*filts"):
        validate_plugin(MODELS, {"name": "aasist_raw", "filts": [70, [2, 32], [32, 32], [32, 24], [24, 24]]},
                        "model.backbone")


@pytest.mark.parametrize("adapter", [{"name": "full"}, {"name": "head_only"}])
def test_aasist_l_trains_from_scratch_with_the_engine(tiny_config, adapter):
    from metadg.engine.trainer import Trainer

    tiny_config.update({"model": {"backbone": {"name": "aasist_raw", "preset": "AASIST-L"},
                                  "head": {"name": "linear", "dropout": 0.5}}, "adapter": adapter})
    tiny_config["train"].update({"steps": 2, "eval_every": 2, "batch_per_domain": 2})
    result = Trainer(build_experiment(tiny_config)).fit()
    assert 0.0 <= result.eval["all"]["eer"] <= 1.0
    assert result.trainable_params == (85_306 if adapter["name"] == "full" else 322)


def test_the_recipe_validates_without_data_and_trains_the_published_count():
    from pathlib import Path

    from metadg.bench import expand
    from metadg.engine.accounting import count

    _, cells = expand(Path(__file__).resolve().parents[1] / "benchmarks" / "aasist.yaml")
    assert [c.experiment.algorithm.name for c in cells] == ["erm"] * 3 + ["mldg"] * 3
    report = count(cells[0].experiment)
    assert report.trainable == 85_306 and report.trainable == report.total


def test_lora_on_the_sinc_front_end_is_a_clear_config_error(tiny_config):
    from metadg.engine.build import build_model_and_adapter

    tiny_config.update({"model": {"backbone": {"name": "aasist_raw", "preset": "AASIST-L"}, "head": {"name": "linear"}},
                        "adapter": {"name": "lora", "targets": ["sinc"]}})
    with pytest.raises(ConfigError, match=r"adapter\.targets: 'sinc' names sinc \(SincFilters: no trainable weight"):
        build_model_and_adapter(build_experiment(tiny_config))


def _la2019(root, rng):
    """A tiny ASVspoof 2019 LA layout: bona fide tones and A01/A02 spoofs (train, dev), A07 spoofs (eval)."""
    import soundfile as sf

    for split, attacks, tag in (("train", ["A01", "A02"], "trn"), ("dev", ["A01", "A02"], "trl"),
                                ("eval", ["A07"], "trl")):
        folder = root / "LA" / f"ASVspoof2019_LA_{split}" / "flac"
        folder.mkdir(parents=True)
        lines = []
        for i in range(12):
            attack = "-" if i < 4 else attacks[i % len(attacks)]
            t = np.arange(8000) / 16000
            wave = (0.3 * np.sin(2 * np.pi * (180 + 20 * i) * t) if attack == "-"
                    else 0.3 * rng.standard_normal(8000)).astype(np.float32)
            name = f"LA_{split[0].upper()}_{i:04d}"
            sf.write(folder / f"{name}.flac", wave, 16000, format="FLAC")
            lines.append(f"LA_0079 {name} - {attack} {'bonafide' if attack == '-' else 'spoof'}")
        protocols = root / "LA" / "ASVspoof2019_LA_cm_protocols"
        protocols.mkdir(parents=True, exist_ok=True)
        (protocols / f"ASVspoof2019.LA.cm.{split}.{tag}.txt").write_text("\n".join(lines) + "\n")


def test_the_recipe_trains_on_a_fixture_corpus_in_the_2019_la_layout(tmp_path):
    from pathlib import Path

    from metadg.bench import run_benchmark

    _la2019(tmp_path / "ASVspoof2019", np.random.default_rng(0))
    recipe = Path(__file__).resolve().parents[1] / "benchmarks" / "aasist.yaml"
    eval_set = {"asvspoof2019_la": {"name": "asvspoof2019_la", "root": str(tmp_path / "ASVspoof2019"), "split": "eval"}}
    overrides = [f"vars.data={tmp_path}", f"task.eval={eval_set}", "grid.seed=[0]", "train.steps=2",
                 "train.eval_every=2", "train.batch_per_domain=2", "task.crop_samples=8000", "tracking.enabled=false",
                 "train.progress=false"]
    _, done = run_benchmark(recipe, overrides, output_dir=str(tmp_path / "runs"))
    assert [c.experiment.algorithm.name for c, _ in done] == ["erm", "mldg"]
    for _, result in done:
        assert 0.0 <= result.eval["asvspoof2019_la"]["eer"] <= 1.0 and result.trainable_params == 85_306
