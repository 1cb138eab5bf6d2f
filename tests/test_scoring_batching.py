"""Whole-utterance scoring in length-sorted batches gives the unbatched scores, in input order."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from metadg.config import validate_plugin
from metadg.engine.scoring import MAX_PADDING, length_batches, score_utterances
from metadg.models import build_model
from metadg.models.classifier import Classifier
from metadg.registry import HEADS, MODELS
from metadg.tasks.base import Utterances


class ShapeSpy(nn.Module):
    """Scores each row by its valid mean; records every batch's (rows, padded length, valid lengths)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, int, list[int]]] = []

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        valid = [inputs.shape[1]] * inputs.shape[0] if lengths is None else lengths.tolist()
        self.calls.append((inputs.shape[0], inputs.shape[1], valid))
        means = torch.stack([row[:n].mean() for row, n in zip(inputs, valid)])
        return torch.stack([torch.zeros_like(means), means], dim=1)


def waves(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(int(k)).astype(np.float32) for k in rng.integers(2000, 12000, n)]


def test_batches_are_length_sorted_capped_and_full():
    segs = [(i, np.empty(n)) for i, n in enumerate(sorted([100, 104, 105, 109, 111, 300, 301, 302, 303, 304]))]
    batches = length_batches(segs, batch_size=3)
    assert [[len(a) for _, a in b] for b in batches] == [[100, 104, 105], [109, 111], [300, 301, 302], [303, 304]]
    assert all(len(b[-1][1]) <= (1 + MAX_PADDING) * len(b[0][1]) for b in batches)


def test_spy_sees_sorted_batches_and_scores_come_back_in_input_order():
    data = waves(40)
    utts = Utterances([str(i) for i in range(40)], np.zeros(40, dtype=np.int64), {}, data.__getitem__)
    spy = ShapeSpy()
    got = score_utterances(spy, utts, batch_size=8, progress=False)
    np.testing.assert_allclose(got, [w.mean() for w in data], rtol=1e-5, atol=1e-6)
    assert sum(rows for rows, _, _ in spy.calls) == 40
    assert max(rows for rows, _, _ in spy.calls) > 1  # really batched
    for rows, padded, valid in spy.calls:
        assert rows <= 8 and padded == max(valid) and max(valid) <= (1 + MAX_PADDING) * min(valid)


def test_batched_scores_equal_unbatched_on_a_real_model():
    torch.manual_seed(0)
    model = build_model(validate_plugin(MODELS, {"name": "ssl", "preset": "tiny"}, "b"), validate_plugin(HEADS, "linear", "h"))
    data = waves(12, seed=1)
    utts = Utterances([str(i) for i in range(12)], np.zeros(12, dtype=np.int64), {}, data.__getitem__)
    batched = score_utterances(model, utts, batch_size=4, progress=False)
    one_by_one = score_utterances(model, utts, batch_size=1, progress=False)
    with torch.no_grad():
        direct = [float(Classifier.score_from_logits(model.eval()(torch.from_numpy(w)[None]))) for w in data]
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(batched, direct, rtol=1e-4, atol=1e-5)
