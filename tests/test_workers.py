"""`train.num_workers: auto` and batched (on-device) augmentation in the DomainBatcher."""

from __future__ import annotations

import time

import pytest
import torch

from metadg.config import ConfigError, build_experiment
from metadg.engine.batcher import DomainBatcher
from metadg.engine.trainer import Trainer
from metadg.engine.workers import AutoWorkers, choose_workers
from metadg.tasks.spoof.sampling import SharedBonafide, partition_by_attack


def _batcher(tiny_config, crop: int = 800, **kwargs) -> DomainBatcher:
    utts = build_experiment(tiny_config).task.build(seed=0).train_set()
    return DomainBatcher(utts, partition=partition_by_attack(utts), policy=SharedBonafide(0.5), batch_per_domain=4,
                         crop_samples=crop, seed=0, **kwargs)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[d].inputs, b[d].inputs) and torch.equal(a[d].labels, b[d].labels)
                                        for d in a)


def test_workers_are_chosen_to_keep_up_with_the_model():
    assert choose_workers(load_s=0.001, model_s=0.1, cpus=16) == 0  # loading is 1 % of the step: stay in-process
    assert choose_workers(load_s=0.5, model_s=0.1, cpus=1) == 0  # no CPU to spare
    assert choose_workers(load_s=0.2, model_s=0.1, cpus=16) == 3  # 1.5 × 2 steps' worth of loading
    assert choose_workers(load_s=5.0, model_s=0.1, cpus=4) == 3  # one CPU stays with the model
    assert choose_workers(load_s=0.02, model_s=0.1, cpus=2) == 1


class _SlowBatcher:
    """next() takes `load_s`; a stand-in that also records which loader served each step."""

    def __init__(self, load_s: float) -> None:
        self.load_s, self.started = load_s, []

    def next(self) -> dict:
        time.sleep(self.load_s)
        return {"in-process": None}

    def iterate(self, workers: int):
        self.started.append(workers)
        while True:
            yield {"workers": workers}


def test_auto_measures_loading_against_the_model_step():
    slow = _SlowBatcher(load_s=0.03)
    auto = AutoWorkers(slow, probe=3, cpus=4)
    for _ in range(4):
        assert "in-process" in next(auto)
        time.sleep(0.005)  # the model step: loading is ~6 × longer
    assert auto.chosen is not None and auto.chosen >= 1
    assert next(auto) == {"workers": auto.chosen} and slow.started == [auto.chosen]
    fast = _SlowBatcher(load_s=0.0)
    auto = AutoWorkers(fast, probe=3, cpus=4)
    for _ in range(6):
        assert "in-process" in next(auto)
        time.sleep(0.03)
    assert auto.chosen == 0 and fast.started == []


def test_switching_to_workers_mid_run_serves_the_same_steps(tiny_config, monkeypatch):
    monkeypatch.setattr("metadg.engine.workers.choose_workers", lambda *a: 1)
    auto = AutoWorkers(_batcher(tiny_config), probe=2)
    reference = _batcher(tiny_config)
    try:
        for step in range(6):
            assert _same(next(auto), reference.next()), step
    finally:
        auto.close()
    assert auto.chosen == 1


def test_batch_augmentation_gets_one_seed_per_crop_from_the_plan(tiny_config):
    calls = []

    def mark(x: torch.Tensor, seeds) -> torch.Tensor:
        calls.append(list(seeds))
        return x + torch.tensor(seeds, dtype=torch.float64)[:, None].remainder(1000).to(x.dtype)

    plain, marked = _batcher(tiny_config), _batcher(tiny_config, batch_augment=mark)
    first = marked.next()
    seeds = calls[0]
    assert len(seeds) == sum(len(b) for b in first.values()) == len(set(seeds))
    assert all(0 <= s < 2**63 for s in seeds)
    base = plain.next()
    offsets = torch.cat([first[d].inputs - base[d].inputs for d in first])[:, 0]
    torch.testing.assert_close(offsets, torch.tensor(seeds, dtype=torch.float64).remainder(1000).float())
    marked.load_state_dict({"consumed": 0, "removed": []})  # a resumed run asks for the same seeds
    marked.next()
    assert calls[1] == seeds
    with pytest.raises(ValueError, match="not both"):
        _batcher(tiny_config, augment=lambda x, rng: x, batch_augment=mark)


def test_num_workers_auto_is_validated(tiny_config):
    tiny_config["train"]["num_workers"] = "many"
    with pytest.raises(ConfigError, match="num_workers"):
        build_experiment(tiny_config)
    tiny_config["train"]["num_workers"] = True
    with pytest.raises(ConfigError, match="boolean"):
        build_experiment(tiny_config)


def test_rawboost_runs_where_augment_device_says(tiny_config):
    from metadg.tasks.spoof.rawboost import RawBoost
    from metadg.tasks.spoof.rawboost_batched import BatchedRawBoost

    tiny_config["task"]["augment"] = {"rawboost": 5}
    task = build_experiment(tiny_config).task.build(seed=0)
    assert task.batch_augmentation(torch.device("cpu")) is None and isinstance(task.augmentation(), RawBoost)
    assert isinstance(task.batch_augmentation(torch.device("meta")), BatchedRawBoost)  # auto: any accelerator
    tiny_config["task"]["augment"]["device"] = "training_device"
    trainer = Trainer(build_experiment(tiny_config))
    trainer.setup()
    assert isinstance(trainer.batcher.batch_augment, BatchedRawBoost) and trainer.batcher.maker.augment is None
    batches, raw = trainer.batcher.next(), _batcher(tiny_config, crop=8000).next()  # same plan, not augmented
    assert batches.keys() == raw.keys()
    for d, b in batches.items():
        assert b.inputs.shape == raw[d].inputs.shape and torch.isfinite(b.inputs).all()
        assert not torch.allclose(b.inputs, raw[d].inputs) and torch.equal(b.labels, raw[d].labels)
    tiny_config["task"]["augment"]["device"] = "cpu"
    assert build_experiment(tiny_config).task.build(seed=0).batch_augmentation(torch.device("meta")) is None
