"""Shared fixtures: a tiny experiment on a small synthetic corpus cached per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory):
    """One synthetic-corpus cache folder shared by every xdist worker of this session."""
    # Under xdist each worker has its own basetemp below a shared parent; the
    # cache writes atomically, so workers can share it safely.
    root = tmp_path_factory.getbasetemp()
    shared = root.parent if root.name.startswith("popen-gw") else root
    path = shared / "synthetic-cache"
    path.mkdir(exist_ok=True)
    return str(path)


@pytest.fixture
def tiny_config(synthetic_cache, tmp_path):
    """A complete, fast experiment mapping (tracking off; tests turn it on where needed)."""
    from tiny_experiment import tiny_experiment

    return tiny_experiment(synthetic_cache, tmp_path / "runs")


@pytest.fixture
def double_precision():
    """Gradient comparisons at double precision, restored afterwards for other tests."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """Call after writing the inputs: sandbox(*extra_roots_to_watch) → Sandbox (cwd and TMPDIR moved, writes seen)."""
    from hostile import Sandbox

    return lambda *watch: Sandbox(tmp_path, monkeypatch, watch)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, synthetic_cache) -> Path:
    """A run folder trained for one step (its checkpoint is the real thing the hostile ones imitate)."""
    corpus = {"name": "synthetic", "cache_dir": synthetic_cache, "duration_s": 0.5}
    cfg = {
        "name": "trained", "seed": 0, "output_dir": str(tmp_path_factory.mktemp("runs")),
        "task": {"name": "spoof_detection", "crop_samples": 8000,
                 "train": {**corpus, "split": "train", "n_bonafide": 40, "n_per_attack": 20},
                 "dev": {**corpus, "split": "dev", "n_bonafide": 20, "n_per_attack": 10}},
        "model": {"backbone": {"name": "ssl", "preset": "tiny"}, "head": {"name": "linear"}},
        "adapter": {"name": "lora", "r": 4}, "algorithm": {"name": "erm"},
        "train": {"steps": 1, "eval_every": 1, "batch_per_domain": 2, "progress": False},
        "tracking": {"enabled": False},
    }
    from metadg.config import build_experiment
    from metadg.engine.trainer import Trainer

    return Path(Trainer(build_experiment(cfg)).fit().run_dir)
