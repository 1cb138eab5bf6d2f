"""The tiny experiment mapping the tests train: a small synthetic spoof corpus, the tiny encoder, LoRA, ERM."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tiny_experiment(cache: str, output_dir: Path | str, name: str = "tiny", seed: int = 0,
                    dev_size: tuple[int, int] = (20, 10)) -> dict[str, Any]:
    """A complete, fast experiment (tracking off); `dev_size` is (bona fide, spoofs per attack) of dev and eval."""
    corpus = {"name": "synthetic", "cache_dir": cache, "duration_s": 0.5}
    n_bona, n_att = dev_size
    return {
        "name": name,
        "seed": seed,
        "output_dir": str(output_dir),
        "task": {
            "name": "spoof_detection",
            "train": {**corpus, "split": "train", "n_bonafide": 40, "n_per_attack": 20},
            "dev": {**corpus, "split": "dev", "n_bonafide": n_bona, "n_per_attack": n_att},
            "eval": {"all": {**corpus, "split": "eval", "n_bonafide": n_bona, "n_per_attack": n_att}},
            "crop_samples": 8000,
        },
        "model": {"backbone": {"name": "ssl", "preset": "tiny"}, "head": {"name": "linear"}},
        "adapter": {"name": "lora", "r": 4},
        "algorithm": {"name": "erm"},
        "train": {"steps": 6, "eval_every": 3, "batch_per_domain": 4, "lr": 0.005, "progress": False},
        "tracking": {"enabled": False},
    }
