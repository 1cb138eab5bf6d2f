"""Losses: criteria against their papers' formulas, margin losses' own output layers and scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metadg.config import ConfigError, build_experiment, validate_plugin
from metadg.engine.build import load_trained
from metadg.engine.scoring import utterance_logits
from metadg.engine.trainer import Trainer
from metadg.registry import LOSSES


def build(name: str, num_classes: int = 2, weight=None, **cfg):
    return validate_plugin(LOSSES, {"name": name, **cfg}, "loss").build(num_classes, weight)


def test_cross_entropy_is_torchs_class_weighted_cross_entropy():
    logits, labels, weight = torch.randn(7, 3), torch.tensor([0, 1, 2, 2, 1, 0, 2]), torch.tensor([0.2, 1.0, 3.0])
    torch.testing.assert_close(build("cross_entropy", 3, weight)(logits, labels),
                               torch.nn.CrossEntropyLoss(weight=weight)(logits, labels))


def test_oc_softmax_loss_and_score_follow_the_paper():
    torch.manual_seed(0)
    loss = build("oc_softmax", alpha=20.0, m_target=0.9, m_other=0.2)
    layer = loss.output_layer(5)
    x, labels = torch.randn(6, 5), torch.tensor([1, 0, 1, 0, 0, 1])
    logits = layer(x)
    # The paper's form, written with NumPy: ŵ·x̂, y = 1 (bona fide) is the compact class here.
    xn = x.numpy() / np.linalg.norm(x.numpy(), axis=1, keepdims=True)
    wn = layer.w.detach().numpy() / np.linalg.norm(layer.w.detach().numpy())
    cos = xn @ wn
    np.testing.assert_allclose((logits[:, 1] - logits[:, 0]).detach().numpy(), cos, rtol=1e-6, atol=1e-6)
    m = np.where(labels.numpy() == 1, 0.9 - cos, cos - 0.2)
    np.testing.assert_allclose(float(loss(logits, labels).detach()), np.mean(np.log1p(np.exp(20.0 * m))), rtol=1e-5)
    with pytest.raises(ValueError, match="two classes"):
        build("oc_softmax", 3)


def test_am_softmax_loss_follows_the_formula():
    torch.manual_seed(1)
    loss = build("am_softmax", 4, scale=10.0, margin=0.3)
    layer = loss.output_layer(6)
    x, labels = torch.randn(5, 6), torch.tensor([0, 3, 2, 1, 3])
    cos = F.normalize(x, dim=1) @ F.normalize(layer.w, dim=1).T
    torch.testing.assert_close(layer(x), 10.0 * cos)
    target = cos[torch.arange(5), labels]
    others = torch.where(F.one_hot(labels, 4).bool(), torch.full_like(cos, -torch.inf), 10.0 * cos)
    by_hand = -(10.0 * (target - 0.3) - torch.logsumexp(torch.cat([10.0 * (target - 0.3)[:, None], others], 1), 1)).mean()
    torch.testing.assert_close(loss(layer(x), labels), by_hand)


def test_oc_softmax_trains_end_to_end_and_scores_with_its_cosine(tiny_config):
    tiny_config["loss"] = {"name": "oc_softmax"}
    trainer = Trainer(build_experiment(tiny_config))
    result = trainer.fit()
    head_out = trainer.model.head.output_layer
    assert not any(p.requires_grad for p in head_out.parameters())  # replaced, so frozen and not counted
    assert "output.w" in trainer.params and all(np.isfinite(v["eer"]) for v in result.eval.values())
    _, model, _, meta = load_trained(f"{result.run_dir}/checkpoints/best")
    assert model.output is not None
    task = trainer.task
    dev = task.dev_set()
    logits = utterance_logits(model, dev, progress=False)
    scores = logits[:, 1] - logits[:, 0]
    assert np.all(np.abs(scores) <= 1 + 1e-6)  # the score is a cosine
    assert task.metrics(logits, dev)["eer"] == pytest.approx(meta["dev"]["eer"])


def test_a_two_class_loss_on_a_multi_class_task_is_a_config_error(tiny_config):
    tiny_config["task"] = {"name": "audio_classification", "train": {"name": "synthetic_scenes"},
                           "dev": {"name": "synthetic_scenes"}}
    tiny_config["loss"] = {"name": "oc_softmax"}
    with pytest.raises(ConfigError, match="loss.name: .*two classes"):
        Trainer(build_experiment(tiny_config)).setup()
    with pytest.raises(ConfigError, match="loss.alpha"):
        build_experiment({**tiny_config, "loss": {"name": "oc_softmax", "alpha": -1}})
