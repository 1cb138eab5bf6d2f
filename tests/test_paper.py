"""The paper's benchmark file validates without data and counts the paper's parameters."""

from __future__ import annotations

from pathlib import Path

import pytest

from metadg.bench import expand
from metadg.config import validate_plugin
from metadg.engine.accounting import count
from metadg.registry import MODELS

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "benchmarks" / "paper.yaml"


def test_paper_grid_validates_without_data():
    name, cells = expand(PAPER)
    assert name == "paper" and len(cells) == 15  # 5 systems x 3 seeds
    systems = {(c.experiment.algorithm.name, c.experiment.adapter.name, c.experiment.adapter.cfg.model_dump().get("per_head", False)) for c in cells}
    assert systems == {("erm", "full", False), ("mldg", "full", False), ("erm", "lora", False), ("mldg", "lora", False), ("mldg", "lora", True)}
    task = cells[0].experiment.task.cfg
    assert task.train["name"] == "asvspoof2019_la" and task.domain_key == "attack"
    assert set(task.eval) == {"asvspoof2019_la", "asvspoof2021_la", "asvspoof2021_df", "in_the_wild", "fakeavceleb", "asvspoof5"}
    assert task.eval["in_the_wild"]["root"] == "/data/release_in_the_wild"  # ${data} expanded


def test_paper_counts_3_592_970_for_mldg_lora():
    _, cells = expand(PAPER, ["vars.xlsr=/nonexistent/xlsr"])
    cell = next(c for c in cells if c.label == "MLDG × LoRA seed=0")
    report = count(cell.experiment)
    assert report.trainable == 3_592_970 and round(report.percent_of_full, 2) == 1.14


def test_pretrained_checkpoint_is_checked_against_its_preset():
    asset = str(ROOT / "benchmarks" / "assets" / "tiny-ssl")
    validate_plugin(MODELS, {"name": "ssl", "pretrained": asset, "preset": "tiny"}, "b").build()
    with pytest.raises(ValueError, match=r"does not have the xlsr_300m shape \(hidden_size 64 != 1024"):
        validate_plugin(MODELS, {"name": "ssl", "pretrained": asset, "preset": "xlsr_300m"}, "b").build()
