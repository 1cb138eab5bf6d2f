"""`model.init_from`: a run starts from the trained (merged) weights of another run, e.g. an imported detector."""

from __future__ import annotations

import copy

import pytest
import torch

from metadg.config import ConfigError, build_experiment
from metadg.engine.build import build_model_and_adapter, load_trained
from metadg.engine.checkpoint import read_checkpoint
from metadg.engine.trainer import Trainer


def _wave() -> torch.Tensor:
    return torch.randn(2, 8000, generator=torch.Generator().manual_seed(3))


@pytest.fixture
def lora_run(tiny_config):
    """A trained tiny LoRA run folder (and its config)."""
    cfg = copy.deepcopy(tiny_config)
    cfg["train"]["steps"] = 2
    result = Trainer(build_experiment(cfg)).fit()
    return result.run_dir, cfg


def _from(cfg: dict, run_dir: str, name: str, adapter: dict | None = None) -> dict:
    new = copy.deepcopy(cfg)
    new["name"], new["model"]["init_from"] = name, run_dir
    if adapter:
        new["adapter"] = adapter
    return new


def test_full_fine_tuning_starts_from_the_merged_lora_weights(lora_run):
    run_dir, cfg = lora_run
    _, source, _, _ = load_trained(f"{run_dir}/checkpoints/best")
    model, _ = build_model_and_adapter(build_experiment(_from(cfg, run_dir, "ft", {"name": "full"})))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(_wave()), source(_wave()), rtol=1e-5, atol=1e-6)
    # The merge, computed here from the checkpoint's factors: W0 + (alpha / r) · B · A.
    tensors, _ = read_checkpoint(f"{run_dir}/checkpoints/best")
    base, _ = build_model_and_adapter(build_experiment({**cfg, "adapter": {"name": "full"}}))
    key = "backbone.model.base_model.model.encoder.layers.0.attention.q_proj"
    a, b = tensors[f"{key}.lora_A.default.weight"], tensors[f"{key}.lora_B.default.weight"]
    scale = cfg["adapter"].get("alpha", 32.0) / cfg["adapter"]["r"]
    want = base.backbone.model.encoder.layers[0].attention.q_proj.weight + scale * b @ a
    got = model.backbone.model.encoder.layers[0].attention.q_proj.weight
    assert (b != 0).any()  # training moved B: the merge is not trivially the base weight
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_lora_on_a_trained_run_starts_from_its_outputs_with_the_same_adapter_init(lora_run):
    run_dir, cfg = lora_run
    _, source, _, _ = load_trained(f"{run_dir}/checkpoints/best")
    exp = build_experiment(_from(cfg, run_dir, "again"))
    model, adapter = build_model_and_adapter(exp)
    model.eval()
    with torch.no_grad():  # fresh LoRA factors have B = 0: the outputs are the source's
        torch.testing.assert_close(model(_wave()), source(_wave()), rtol=1e-5, atol=1e-6)
    plain, plain_adapter = build_model_and_adapter(build_experiment({**cfg, "name": "plain"}))
    fresh = {k: v for k, v in adapter.state_dict(model).items() if "lora_A" in k}
    assert fresh and all(torch.equal(v, plain_adapter.state_dict(plain)[k]) for k, v in fresh.items())


def test_a_fine_tuning_run_trains_and_its_checkpoint_reloads(lora_run):
    run_dir, cfg = lora_run
    new = _from(cfg, run_dir, "tuned")
    new["train"]["steps"] = 2
    result = Trainer(build_experiment(new)).fit()
    exp, model, _, meta = load_trained(f"{result.run_dir}/checkpoints/best")
    assert exp.init_from == run_dir and meta["config"]["model"]["init_from"] == run_dir
    assert result.eval and all(v["eer"] == v["eer"] for v in result.eval.values())


def test_configs_without_init_from_keep_their_resolved_form(tiny_config, lora_run):
    assert "init_from" not in build_experiment(tiny_config).to_dict()["model"]
    run_dir, cfg = lora_run
    exp = build_experiment(_from(cfg, run_dir, "x"))
    assert build_experiment(exp.to_dict()).to_dict() == exp.to_dict()


def test_bad_init_from_names_the_key(tiny_config, lora_run, tmp_path):
    with pytest.raises(ConfigError, match=r"model\.init_from: .* not a trained run folder"):
        build_model_and_adapter(build_experiment(_from(tiny_config, str(tmp_path), "nothing")))
    with pytest.raises(ConfigError, match=r"model\.init_from: expected the path"):
        build_experiment(_from(tiny_config, 3, "number"))  # type: ignore[arg-type]
    run_dir, cfg = lora_run
    other = _from(cfg, run_dir, "other")
    other["model"]["backbone"] = {"name": "ssl", "preset": "tiny", "layer": "weighted"}
    with pytest.raises(ConfigError, match=r"model\.init_from: .* another model .*layer_weights"):
        build_model_and_adapter(build_experiment(other))
    with pytest.raises(ConfigError, match=r"model\.init_from: head\.\S+ has shape .* class count"):
        build_model_and_adapter(build_experiment(_from(cfg, run_dir, "three")), num_classes=3)


def test_an_imported_aasist_run_fine_tunes(tmp_path, capsys, synthetic_cache):
    from hostile import cli
    from test_import_aasist import PRESET, published_state, reference_logits
    from tiny_experiment import tiny_experiment

    sd = published_state(PRESET)
    torch.save(sd, tmp_path / "AASIST-L.pth")
    status, _, err = cli(capsys, "import", "aasist", str(tmp_path / "AASIST-L.pth"), str(tmp_path / "imported"),
                         "--preset", PRESET)
    assert status == 0, err
    cfg = tiny_experiment(synthetic_cache, tmp_path / "runs", name="tuned")
    cfg["model"] = {"backbone": {"name": "aasist_raw", "preset": PRESET}, "head": {"name": "linear", "dropout": 0.5},
                    "init_from": str(tmp_path / "imported")}
    cfg["adapter"], cfg["train"]["steps"] = {"name": "full"}, 1
    model, _ = build_model_and_adapter(build_experiment(cfg))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(_wave()), reference_logits(sd, _wave(), PRESET), rtol=1e-4, atol=1e-5)
    result = Trainer(build_experiment(cfg)).fit()
    tuned, _ = read_checkpoint(f"{result.run_dir}/checkpoints/best")
    assert result.best_step == 1 and len(tuned) == 229
