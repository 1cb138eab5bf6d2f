"""Training-recipe knobs: chunked whole-utterance scoring, gradient accumulation, mixed precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metadg.config import build_experiment
from metadg.engine.scoring import score_utterances, segments
from metadg.models.classifier import Classifier
from metadg.tasks.base import Utterances
from metadg.engine.trainer import Trainer


def test_segments_cover_the_wave_and_end_flush():
    wave = np.arange(1000, dtype=np.float32)
    segs = segments(wave, 400, 0.5)
    assert [s[0] for s in segs] == [0, 200, 400, 600]
    assert all(len(s) == 400 for s in segs) and segs[-1][-1] == 999
    assert len(segments(wave, 2000, 0.5)) == 1 and len(segments(wave, None, 0.5)[0]) == 1000


def test_chunked_scoring_is_the_mean_over_chunks(tiny_config):
    trainer = Trainer(build_experiment(tiny_config))
    trainer.setup()
    model = trainer.model.eval()
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (3000, 9000, 5000)]
    utts = Utterances(["a", "b", "c"], [1, 0, 1], {}, waves.__getitem__)
    got = score_utterances(model, utts, chunk_samples=4000, chunk_overlap=0.5, progress=False, batch_size=3)
    with torch.no_grad():
        def score(w):
            return float(Classifier.score_from_logits(model(torch.from_numpy(w)[None])))
        expected = [np.mean([score(s) for s in segments(w, 4000, 0.5)]) for w in waves]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    whole = score_utterances(model, utts, progress=False)
    assert abs(whole[1] - got[1]) > 1e-6  # the long one really was chunked
    assert whole[0] == pytest.approx(got[0], abs=1e-5)  # a short one was not


def test_grad_accumulation_averages_the_draws(tiny_config):
    tiny_config["train"].update({"grad_accum": 2, "grad_clip": None})
    trainer = Trainer(build_experiment(tiny_config))
    trainer.setup()
    batcher_state, algo_state = trainer.batcher.state_dict(), trainer.algorithm.state_dict()
    trainer.optimizer.step = lambda *a, **k: None  # look at the gradient the step would use
    trainer.model.eval()  # dropout off, so replaying the draws gives the same gradients
    trainer.model.train = lambda mode=True: trainer.model  # keep eval mode through _train_step
    trainer._train_step()
    got = {k: p.grad.clone() for k, p in trainer.params.items()}

    trainer.batcher.load_state_dict(batcher_state)
    trainer.algorithm.load_state_dict(algo_state)
    draws = []
    for _ in range(2):
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.algorithm.update(trainer.batcher.next())
        draws.append({k: p.grad.clone() for k, p in trainer.params.items()})
    for k in got:
        torch.testing.assert_close(got[k], (draws[0][k] + draws[1][k]) / 2)


def test_a_step_that_overflows_the_weights_is_undone_and_counted(tiny_config, monkeypatch):
    # Finite gradients, but the update sends a weight to inf (what a diverging learning rate does).
    tiny_config["train"].update({"steps": 6, "eval_every": 2, "max_bad_steps": 3})
    trainer = Trainer(build_experiment(tiny_config))
    trainer.setup()
    real_step, poisoned = trainer.optimizer.step, {"left": 1}

    def step():
        real_step()
        if poisoned["left"]:
            poisoned["left"] -= 1
            with torch.no_grad():
                next(iter(trainer.params.values())).view(-1)[0] = float("inf")

    monkeypatch.setattr(trainer.optimizer, "step", step)
    before = {k: p.detach().clone() for k, p in trainer.params.items()}
    assert trainer._train_step() == {"skipped_step": 1.0}
    assert all(torch.equal(p, before[k]) for k, p in trainer.params.items())  # put back exactly
    assert "loss" in trainer._train_step() and trainer.loop.bad_steps == 0  # the next step applies
    assert any(not torch.equal(p, before[k]) for k, p in trainer.params.items())
    poisoned["left"] = 10
    with pytest.raises(FloatingPointError, match="3 consecutive steps had NaN/Inf loss, gradients or updated weights"):
        for _ in range(3):
            trainer._train_step()
    assert all(bool(p.isfinite().all()) for p in trainer.params.values())


@pytest.mark.parametrize("key, value, message", [("lr", float("inf"), "finite number"),
                                                 ("weight_decay", float("nan"), "finite number"),
                                                 ("class_weights", {"spoof": 0.0}, "must be a finite number > 0")])
def test_non_finite_rates_and_non_positive_class_weights_are_refused(tiny_config, key, value, message):
    from metadg.config import ConfigError

    tiny_config["train"][key] = value
    with pytest.raises(ConfigError, match=rf"train\.{key}[\s\S]*{message}"):
        build_experiment(tiny_config)


def test_bf16_autocast_trains_and_scores(tiny_config):
    tiny_config["train"].update({"amp": True, "steps": 3, "eval_every": 3})
    result = Trainer(build_experiment(tiny_config)).fit()
    assert 0.0 <= result.eval["all"]["eer"] <= 1.0


def test_nan_steps_are_skipped_then_stop_the_run(tiny_config, monkeypatch):
    tiny_config["train"].update({"steps": 6, "eval_every": 2, "max_bad_steps": 3})
    trainer = Trainer(build_experiment(tiny_config))
    trainer.setup()
    real_update = trainer.algorithm.update
    poisoned = {"left": 2}

    def update(batches):
        metrics = real_update(batches)
        if poisoned["left"]:
            poisoned["left"] -= 1
            next(iter(trainer.params.values())).grad.fill_(float("nan"))
        return metrics

    monkeypatch.setattr(trainer.algorithm, "update", update)
    before = {k: p.detach().clone() for k, p in trainer.params.items()}
    assert trainer._train_step() == {"skipped_step": 1.0}
    assert all(torch.equal(p, before[k]) for k, p in trainer.params.items())  # weights untouched
    trainer._train_step()
    assert trainer.loop.bad_steps_total == 2
    assert "loss" in trainer._train_step()  # a good step resets the streak
    assert trainer.loop.bad_steps == 0

    poisoned["left"] = 10
    with pytest.raises(FloatingPointError, match="3 consecutive steps had NaN/Inf"):
        for _ in range(3):
            trainer._train_step()
