"""ONNX export of trained runs: parity with PyTorch, dynamic batch and time, metadata, LoRA merged, run untouched."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import metadg
from metadg.config import build_experiment, validate_plugin
from metadg.deploy import onnx_export as ox
from metadg.deploy.detector import Detector
from metadg.engine.build import load_trained
from metadg.engine.checkpoint import checkpoint_of
from metadg.engine.trainer import Trainer
from metadg.models.aasist import integer_ratio
from metadg.models.classifier import Classifier, build_model
from metadg.registry import ADAPTERS, HEADS, MODELS

HEADS_UNDER_TEST = ("linear", "aasist")


@dataclass
class Exported:
    """A trained run, its ONNX file, the run folder's digest before the export, and what the export printed."""

    run: Path
    onnx: Path
    digest_before: dict[str, str]
    printed: str


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path (a new, changed or removed file shows)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def train_run(cache: str, root: Path, head: str) -> Path:
    """A run folder of the tiny wav2vec 2.0 with `head` and LoRA, trained one step (tracking off)."""
    from tiny_experiment import tiny_experiment

    cfg = tiny_experiment(cache, root, name=head, dev_size=(10, 5))
    del cfg["task"]["eval"]  # scoring eval sets only costs time here
    cfg["model"]["head"] = {"name": head}
    # A large LoRA scale (alpha / r = 32), so one step moves the adapted weights far from the base ones and a
    # missed merge would show in the logits. Not a large learning rate: that saturates AASIST's pooling
    # scores at sigmoid = 1.0, and torch.topk and ONNX TopK break such ties differently.
    cfg["adapter"]["alpha"] = 128.0
    cfg["train"].update(steps=1, eval_every=1, batch_per_domain=2)
    return Path(Trainer(build_experiment(cfg)).fit().run_dir)


@pytest.fixture(scope="module", params=HEADS_UNDER_TEST)
def exported(request, tmp_path_factory, synthetic_cache) -> Exported:
    """One trained and exported run per head (training and export are the slow part: shared by the module)."""
    root = tmp_path_factory.mktemp(f"onnx-{request.param}")
    run = train_run(synthetic_cache, root / "runs", request.param)
    before = digest(run)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        path = ox.export_onnx(run, root / "model.onnx")
    return Exported(run, path, before, printed.getvalue())


@pytest.fixture(scope="module")
def merged(exported) -> nn.Module:
    """The PyTorch model the export should reproduce: the run's best checkpoint, LoRA merged."""
    return Detector(exported.run).model


def props(path: Path) -> dict[str, str]:
    """The ONNX model's metadata_props."""
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def test_parity_at_several_lengths_and_batch_sizes(exported, merged):
    """ORT logits match PyTorch within 1e-4 at 2 batch sizes × the shortest valid, odd, 1 s and 3.3 s lengths."""
    shortest = int(props(exported.onnx)["min_samples"])
    worst = ox.check_parity(exported.onnx, merged, [shortest, 12345, 16000, 52800], batches=(1, 3))
    assert worst <= 1e-4


def test_graph_has_dynamic_batch_and_time(exported):
    """Input (batch, time) and output (batch, C) are symbolic, not the traced example's sizes."""
    graph = onnx.load(str(exported.onnx)).graph
    [inp], [out] = graph.input, graph.output
    assert (inp.name, out.name) == (ox.INPUT, ox.OUTPUT)
    assert [d.dim_param for d in inp.type.tensor_type.shape.dim] == ["batch", "time"]
    assert out.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert out.type.tensor_type.shape.dim[1].dim_value == 2
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_metadata_describes_the_run(exported):
    """Class names from the task, calibration and threshold from the checkpoint, config, opset, version, IO."""
    exp, _, _, meta = load_trained(checkpoint_of(exported.run))
    p = props(exported.onnx)
    assert json.loads(p["class_names"]) == list(exp.task.build(seed=exp.seed).class_names)
    assert meta.get("calibration") is not None  # the spoof task calibrates on dev
    assert json.loads(p["calibration"]) == meta.get("calibration")
    assert float(p["threshold"]) == meta["dev"]["eer_threshold"]
    assert p["threshold_on"] == "score"
    assert json.loads(p["config"]) == meta["config"]
    assert p["task"] == "spoof_detection"
    assert p["sample_rate"] == "16000"
    assert p["opset"] == str(ox.DEFAULT_OPSET) == "18"
    assert p["metadg_version"] == metadg.__version__
    assert (p["input_name"], p["output_name"]) == ("waveform", "logits")
    assert "logits[:, 1] - logits[:, 0]" in p["score"] and "bonafide" in p["score"]
    assert 400 <= int(p["min_samples"]) < int(p["max_samples"])
    model = onnx.load(str(exported.onnx), load_external_data=False)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [18]
    assert model.producer_name == "metadg"


def test_checkpoint_folder_describes_the_same_run(exported):
    """The run folder and its checkpoints/best folder name the same model, so they export the same metadata."""
    best = exported.run / "checkpoints" / "best"
    assert ox.run_metadata(Detector(best)) == ox.run_metadata(Detector(exported.run))


def test_run_folder_unchanged(exported):
    """Loading, merging and exporting write nothing into the run folder."""
    assert digest(exported.run) == exported.digest_before


def test_lora_merged_into_the_weights(exported):
    """No LoRA factor in the graph, yet its logits are the adapted model's, not the base model's."""
    names = [t.name for t in onnx.load(str(exported.onnx)).graph.initializer]
    assert names and not [n for n in names if "lora" in n.lower()]
    _, unmerged, _, _ = load_trained(checkpoint_of(exported.run))
    assert any(float(p.detach().abs().max()) > 0 for n, p in unmerged.named_parameters() if "lora_B" in n)
    assert ox.check_parity(exported.onnx, unmerged, [16000], batches=(2,)) <= 1e-4
    x = 0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), unmerged.backbone.model.disable_adapter():
        base = unmerged(x).numpy()
    got = ox.ort_session(exported.onnx).run(None, {"waveform": x.numpy()})[0]
    assert float(np.abs(got - base).max()) > 1e-3  # the trained LoRA moved the logits; the graph has it


def test_export_prints_nothing(exported):
    """The exporter's progress lines go to the debug log, not stdout."""
    assert exported.printed == ""


def test_parity_failure_names_length_and_difference(exported, merged):
    """A model that disagrees with the graph fails the check loudly, saying where and by how much."""
    other = copy.deepcopy(merged)
    with torch.no_grad():
        # The head's last parameter, its output bias: every logit moves by 0.5.
        [p for n, p in other.named_parameters() if n.startswith("head.")][-1].add_(0.5)
    with pytest.raises(ox.ParityError, match=r"at 16000 samples \(1\.000 s\), batch 1: max \|Δlogit\| = "):
        ox.check_parity(exported.onnx, other, [16000])


def tiny_classifier() -> Classifier:
    """The tiny wav2vec 2.0 with a linear head, untrained, in eval mode."""
    torch.manual_seed(0)
    backbone = validate_plugin(MODELS, {"name": "ssl", "preset": "tiny"}, "b")
    return build_model(backbone, validate_plugin(HEADS, "linear", "h")).eval()


class ToyBackbone(nn.Module):
    """Each sample is a 4-dim frame: (B, T) → (B, T // 4, 4) features; traces in well under a second."""

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        """Frames of 4 samples, no mask."""
        return wave[:, : wave.shape[1] // 4 * 4].reshape(wave.shape[0], -1, 4), None


class BranchyHead(nn.Module):
    """A head whose control flow depends on the data: no exporter can turn it into one graph."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 2)

    def forward(self, feats: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the mean frame, negated when the input sums below zero."""
        logits = self.proj(feats.mean(1))
        return logits if feats.sum() > 0 else -logits


def test_unsupported_model_is_named(tmp_path):
    """An exporter failure becomes one error naming the backbone and head."""
    with pytest.raises(ox.OnnxExportError, match=r"ToyBackbone \+ BranchyHead cannot be exported"):
        ox.export_model(Classifier(ToyBackbone(), BranchyHead()).eval(), tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


def test_unmerged_lora_and_bad_opset_are_refused(tmp_path):
    """LoRA factors must be merged first; opsets outside the exporter's range are refused before exporting."""
    model = tiny_classifier()
    with pytest.raises(ValueError, match="opset 11"):
        ox.export_model(model, tmp_path / "m.onnx", opset=11)
    validate_plugin(ADAPTERS, {"name": "lora", "r": 2}, "a").build().apply(model)
    with pytest.raises(ValueError, match=r"merge them first \(adapter\.merge\(model\)\)"):
        ox.export_model(model, tmp_path / "m.onnx")


def test_failed_check_leaves_no_file(tmp_path, monkeypatch):
    """An in-memory Classifier exports through export_model; when its check fails, nothing is left behind."""
    def fail(*args, **kwargs):
        raise ox.ParityError("forced")

    monkeypatch.setattr(ox, "check_parity", fail)
    model = Classifier(ToyBackbone(), validate_plugin(HEADS, "linear", "h").build(4, 2)).eval()
    with pytest.raises(ox.ParityError, match="forced"):
        ox.export_model(model, tmp_path / "m.onnx", {"class_names": ["a", "b"]})
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("ratio", [0.5, 0.3, 1.0, 0.25, 0.8])
def test_integer_ratio_matches_float_pooling(ratio):
    """The symbolic top-k count n·p // q equals AASIST's int(n · ratio) for every node count checked."""
    p, q = integer_ratio(ratio)
    assert all(n * p // q == int(n * ratio) for n in range(1, 5000))


def test_integer_ratio_refuses_a_ratio_float_rounding_breaks():
    """int(n · 0.7) in floats is 62 at n = 90 where 7n // 10 is 63: no exact integer form, so none is used."""
    assert int(90 * 0.7) == 62 and integer_ratio(0.7) is None


def test_the_export_command_writes_the_graph(run_dir, tmp_path, capsys):
    from hostile import cli

    status, out, err = cli(capsys, "export", str(run_dir), str(tmp_path / "d.onnx"), "--opset", "18")
    assert status == 0, err
    assert "LoRA merged" in out and props(tmp_path / "d.onnx")["opset"] == "18"
    status, _, err = cli(capsys, "export", str(run_dir), str(tmp_path / "e.onnx"), "--opset", "7")
    assert status != 0 and "opset 7" in err and not (tmp_path / "e.onnx").exists()


def test_the_exported_graph_carries_its_model_card(exported):
    card = props(exported.onnx)["model_card"]
    assert card.startswith("#") and "Intended use" in card
    assert ox.card_path(exported.onnx).read_text(encoding="utf-8") == card
    trained = json.loads((exported.run / "results.json").read_text())
    assert "| eer |" in card and f"{trained['dev']['eer']:.4g}" in card  # the run's own dev figure
