"""EMA and SWAD weight averaging against hand computations, through the Trainer, and across a resume."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

from metadg.algorithms.ema import EMA, EMAConfig
from metadg.algorithms.erm import ERM
from metadg.algorithms.swad import SWAD, SWADConfig
from metadg.config import ConfigError, build_experiment
from metadg.engine.batch import Batch
from metadg.engine.checkpoint import pack_state, read_checkpoint, unpack_state
from metadg.engine.resume import StopRequested
from metadg.engine.trainer import Trainer
from metadg.registry import ALGORITHMS


class TinyNet(nn.Module):
    """Linear → (optional) BatchNorm1d → tanh → Linear, forward(inputs, lengths) like a Classifier."""

    def __init__(self, bn: bool = False) -> None:
        super().__init__()
        self.hidden = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4, momentum=0.3) if bn else nn.Identity()
        self.out = nn.Linear(4, 2)

    def forward(self, x, lengths=None):
        return self.out(torch.tanh(self.bn(self.hidden(x))))


def batches(seed: int, n: int = 5) -> dict[str, Batch]:
    g = torch.Generator().manual_seed(seed)
    return {d: Batch(torch.randn(n, 3, generator=g), torch.randint(0, 2, (n,), generator=g)) for d in ("a", "b")}


def trainable(net: nn.Module) -> dict[str, nn.Parameter]:
    return {k: p for k, p in net.named_parameters() if p.requires_grad}


def clone(params) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in params.items()}


def round_trip(state):
    """What a resumable checkpoint does to a state: tensors apart, the rest through JSON."""
    tensors: dict[str, torch.Tensor] = {}
    packed = json.loads(json.dumps(pack_state(state, tensors, "s")))
    return unpack_state(packed, {k: v.clone() for k, v in tensors.items()})


# ---------------------------------------------------------------- EMA


def test_ema_follows_the_recurrence_over_the_visited_weights():
    torch.manual_seed(0)
    net = TinyNet()
    params = trainable(net)
    algo = EMA(EMAConfig(decay=0.8, start_step=2), net, params, nn.CrossEntropyLoss())
    opt = torch.optim.SGD(params.values(), lr=0.5)
    seen = []
    for step in range(1, 7):
        opt.zero_grad()
        assert "loss" in algo.update(batches(step))  # the base's (ERM's) gradients and metrics
        opt.step()
        algo.after_step(step)
        seen.append(clone(params))
        if step == 4:  # resume from a checkpointed state halfway
            state = round_trip(algo.state_dict())
            algo = EMA(EMAConfig(decay=0.8, start_step=2), net, params, nn.CrossEntropyLoss())
            algo.load_state_dict(state)
    expected = dict(seen[1])  # steps 1..2 (≤ start_step) just follow the weights
    for w in seen[2:]:
        expected = {k: 0.8 * expected[k] + 0.2 * w[k] for k in w}
    got = algo.eval_weights()
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], msg=k)
        assert not torch.allclose(got[k], seen[-1][k])
    assert algo.updates == 6 and algo.final_weights() is None


def _ema_run(config, run_dir, live, ema, stop_at=None):
    holder = {}

    def on_eval(step, dev):
        ema[step] = clone(holder["t"].algorithm.eval_weights())
        if step == stop_at:
            os.kill(os.getpid(), signal.SIGINT)

    holder["t"] = Trainer(build_experiment(config), run_dir=run_dir, on_eval=on_eval)
    return holder["t"].fit()


def test_ema_through_the_trainer_checkpoints_the_average_and_resumes_exactly(tiny_config, tmp_path, monkeypatch):
    tiny_config["algorithm"] = {"name": "ema", "decay": 0.9}
    live, ema = {}, {}
    after_step = EMA.after_step

    def recording(self, step):
        after_step(self, step)
        live[step] = clone(self.params)

    monkeypatch.setattr(EMA, "after_step", recording)
    _ema_run(tiny_config, tmp_path / "whole", live, ema)
    tensors, meta = read_checkpoint(tmp_path / "whole" / "checkpoints" / "best")
    best = meta["step"]
    expected = dict(live[1])  # independent: the recurrence over the live weights of every step
    for s in range(2, best + 1):
        expected = {k: 0.9 * expected[k] + 0.1 * live[s][k] for k in expected}
    assert set(tensors) == set(expected)
    for k in tensors:
        assert torch.equal(tensors[k], ema[best][k])
        torch.testing.assert_close(tensors[k], expected[k])
    assert any(not torch.allclose(tensors[k], live[best][k]) for k in tensors)

    with pytest.raises(StopRequested):
        _ema_run(tiny_config, tmp_path / "cut", {}, {}, stop_at=3)
    _ema_run(tiny_config, tmp_path / "cut", {}, {})
    got = read_checkpoint(tmp_path / "cut" / "checkpoints" / "best")[0]
    assert got.keys() == tensors.keys() and all(torch.equal(got[k], tensors[k]) for k in got)


# ---------------------------------------------------------------- SWAD


def drive(algo, net, losses, steps_per_eval=2, seed=0, cut=None):
    """Scripted weights at every step, scripted dev losses at every evaluation; returns (algo, weights by step)."""
    g, params, recorded, step = torch.Generator().manual_seed(seed), trainable(net), {}, 0
    for i, loss in enumerate(losses):
        for _ in range(steps_per_eval):
            step += 1
            with torch.no_grad():
                for p in params.values():
                    p.copy_(torch.randn(p.shape, generator=g))
            recorded[step] = clone(params)
            algo.after_step(step)
        algo.after_eval(step, {"loss": loss, "eer": 0.5})
        if cut == i:  # a resumed run: a fresh algorithm from the checkpointed state
            state, algo = round_trip(algo.state_dict()), SWAD(algo.cfg, net, params, nn.CrossEntropyLoss())
            algo.load_state_dict(state)
    return algo, recorded


def mean_of(recorded, steps):
    return {k: torch.stack([recorded[s][k] for s in steps]).mean(0) for k in recorded[steps[0]]}


VALLEY = [1.0, 0.9, 0.8, 0.85, 0.9, 1.1, 1.2, 0.95]  # minimum 0.8 at eval 3; threshold 1.3·0.8 = 1.04


@pytest.mark.parametrize(
    ("losses", "window", "started", "closed"),
    [
        # 0.8 is the lowest of (0.8, 0.85, 0.9) at eval 5: the window starts with eval 3's segment (steps 5-6);
        # 1.1, 1.2 lie above 1.04 but 0.95 brings the loss back; six evaluations above it end the window.
        (VALLEY + [1.1] * 6 + [0.5, 0.5], (5, 16), True, True),
        (VALLEY + [1.1] * 5, (5, 16), True, False),  # training ends inside a run above the threshold: left out
        (VALLEY + [1.1] * 5 + [1.0], (5, 28), True, False),  # ...and back in the valley before six: kept
        ([1.0, 0.9, 0.8, 0.7, 0.6], (5, 10), False, False),  # never stopped improving: the last n_converge segments
    ],
)
@pytest.mark.parametrize("cut", [None, 3, 9])
def test_swad_window_and_average_follow_the_loss_valley(losses, window, started, closed, cut):
    net = TinyNet()
    algo = SWAD(SWADConfig(), net, trainable(net), nn.CrossEntropyLoss())
    assert algo.final_weights() is None
    algo, recorded = drive(algo, net, losses, cut=cut)
    assert (algo.averaged().start, algo.averaged().end) == window
    assert (algo.started, algo.closed) == (started, closed)
    expected = mean_of(recorded, list(range(window[0], window[1] + 1)))
    got = algo.final_weights()
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], msg=k)
        assert got[k].dtype == torch.float32


def test_swad_recomputes_batchnorm_statistics_at_the_averaged_weights():
    torch.manual_seed(0)
    net = TinyNet(bn=True)
    params = trainable(net)
    algo = SWAD(SWADConfig(bn_batches=2), net, params, nn.CrossEntropyLoss())
    net.train()
    for seed in range(3):  # the draws of three steps; only the last two are kept
        algo.update(batches(seed))
    algo, recorded = drive(algo, net, VALLEY)
    net.eval()
    live = clone(params)
    avg = algo.final_weights()
    torch.testing.assert_close(avg["hidden.weight"], mean_of(recorded, list(range(5, 17)))["hidden.weight"])
    acts = [torch.cat([b.inputs for b in batches(s).values()]) @ avg["hidden.weight"].T + avg["hidden.bias"]
            for s in (1, 2)]
    torch.testing.assert_close(net.bn.running_mean, torch.stack([a.mean(0) for a in acts]).mean(0))
    torch.testing.assert_close(net.bn.running_var, torch.stack([a.var(0) for a in acts]).mean(0))
    assert int(net.bn.num_batches_tracked) == 2 and net.bn.momentum == 0.3 and not net.training
    assert all(torch.equal(p, live[k]) for k, p in params.items())  # the live weights are left alone
    restored = SWAD(SWADConfig(bn_batches=2), net, params, nn.CrossEntropyLoss())
    restored.load_state_dict(round_trip(algo.state_dict()))
    assert all(torch.equal(a.inputs, b.inputs) for a, b in zip(restored.bn_inputs, algo.bn_inputs))


def test_swad_through_the_trainer_resumes_exactly(tiny_config, tmp_path):
    # MLDG as the base: its generator (the domain splits) must resume inside the wrapper's state too.
    tiny_config["algorithm"] = {"name": "swad", "base": "mldg", "n_converge": 2, "n_tolerance": 3,
                                "tolerance_ratio": 0.1}
    tiny_config["train"].update({"steps": 5, "eval_every": 1})
    whole = Trainer(build_experiment(tiny_config), run_dir=tmp_path / "whole").fit()

    def interrupt(step, dev):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(StopRequested):
        Trainer(build_experiment(tiny_config), run_dir=tmp_path / "cut", on_eval=interrupt).fit()
    resumed = Trainer(build_experiment(tiny_config), run_dir=tmp_path / "cut").fit()
    got, meta = read_checkpoint(tmp_path / "cut" / "checkpoints" / "best")
    want, want_meta = read_checkpoint(tmp_path / "whole" / "checkpoints" / "best")
    assert meta["weights"] == want_meta["weights"] == "swad" and resumed.best_step == whole.best_step == 5
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    assert (Path(tmp_path / "cut" / "scores" / "all.txt").read_text()
            == Path(tmp_path / "whole" / "scores" / "all.txt").read_text())


# ---------------------------------------------------------------- configuration


def test_configs_are_registered_with_defaults(tiny_config):
    assert {"ema", "swad"} <= set(ALGORITHMS.names())
    exp = build_experiment({**tiny_config, "algorithm": {"name": "swad", "base": "mldg"}})
    section = exp.to_dict()["algorithm"]
    assert (section["n_converge"], section["n_tolerance"], section["tolerance_ratio"]) == (3, 6, 0.3)
    assert section["base"]["name"] == "mldg" and section["base"]["n_meta_test"] == 1
    assert build_experiment({**tiny_config, "algorithm": {"name": "ema"}}).to_dict()["algorithm"] == {
        "name": "ema", "base": {"name": "erm"}, "decay": 0.999, "start_step": 0}


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"name": "ema", "decay": 1.5}, r"algorithm\.decay: .*less than 1"),
        ({"name": "swad", "n_converge": 0}, r"algorithm\.n_converge: .*greater than or equal to 1"),
        ({"name": "swad", "tolerance_ratio": -1}, r"algorithm\.tolerance_ratio: "),
        ({"name": "swad", "bn_batchs": 2}, r"algorithm\.bn_batchs: unknown key; did you mean 'bn_batches'"),
        ({"name": "ema", "base": {"name": "mldg", "betta": 1}}, r"algorithm\.base\.betta: unknown key; .*'beta'"),
        ({"name": "swad", "base": {"name": "mldg", "alpha": -1}}, r"algorithm\.base\.alpha: .*greater than 0"),
        ({"name": "ema", "base": {"name": "ermm"}}, r"algorithm\.base\.name: unknown algorithm 'ermm'; .*'erm'"),
        ({"name": "swad", "base": {"name": "ema"}}, r"algorithm\.base\.name: ema averages weights itself"),
        ({"name": "ema", "base": 3}, r"algorithm\.base: expected a mapping"),
    ],
)
def test_bad_values_name_the_key(tiny_config, section, expected):
    with pytest.raises(ConfigError, match=expected):
        build_experiment({**tiny_config, "algorithm": section}, source="exp.yaml")


def test_a_base_that_owns_its_step_is_refused(tiny_config, monkeypatch):
    monkeypatch.setattr(ERM, "owns_step", True)  # stands in for Fish or Reptile
    with pytest.raises(ConfigError, match=r"algorithm\.base\.name: erm takes its own optimisation steps"):
        build_experiment({**tiny_config, "algorithm": {"name": "swad"}})
