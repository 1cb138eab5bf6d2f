"""Model soups (Wortsman et al. 2022): average the trained weights of runs that share one base model.

Uniform: the mean of every run's best checkpoint. Greedy: runs ordered by their dev
selection metric, each added only if the averaged weights improve that metric on dev.
Float tensors (weights, BatchNorm running statistics) are averaged in float64; integer
ones (BatchNorm's num_batches_tracked) are counters, not weights: the first run's are kept.
The soup is written as a normal run folder, so `metadg eval`/`score` and the bench
readers take it like any trained run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from metadg.config import ConfigError, atomic_write_text, build_experiment, dump_yaml
from metadg.engine.accounting import count_parameters
from metadg.engine.build import checkpoint_classes, load_trained
from metadg.engine.checkpoint import CheckpointError, checkpoint_of, read_checkpoint, save_checkpoint
from metadg.engine.evaluate import evaluate_sets
from metadg.engine.scoring import scoring_options, utterance_logits
from metadg.engine.selection import select
from metadg.engine.trainer import RunResult, improved
from metadg.tracking import Tracker


@dataclass
class SoupResult:
    """What making a soup produced: its run result, the runs kept and the greedy trace."""

    result: RunResult
    method: str
    runs: list[str]
    kept: list[str]
    metric: str
    trace: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Ingredient:
    name: str  # the path as given: what messages and the soup's record show
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]


def _first_difference(a: Any, b: Any, where: str) -> str | None:
    """'adapter.r 4 vs 8' for the first differing leaf of two config sections, else None."""
    if isinstance(a, dict) and isinstance(b, dict):
        # A plugin's name first: "head.name 'linear' vs 'aasist'" says more than the fields that follow from it.
        for key in sorted(set(a) | set(b), key=lambda k: (k != "name", str(k))):
            diff = _first_difference(a.get(key), b.get(key), f"{where}.{key}")
            if diff:
                return diff
        return None
    return None if a == b else f"{where} {a!r} vs {b!r}"


def _without_path(section: Any) -> Any:
    # Where the pre-trained weights lie is no difference: the same weights copied elsewhere average
    # fine, and other weights at any path show in the frozen fingerprint compared below.
    if isinstance(section, dict) and isinstance(section.get("backbone"), dict):
        return section | {"backbone": {k: v for k, v in section["backbone"].items() if k != "pretrained"}}
    return section


def _check_compatible(first: _Ingredient, other: _Ingredient) -> None:
    """Refuse two runs whose weights cannot be averaged, naming both and what differs."""
    pair = f"{first.name} and {other.name}"
    ca, cb = first.meta.get("config") or {}, other.meta.get("config") or {}
    diff = _first_difference(ca.get("task", {}).get("name"), cb.get("task", {}).get("name"), "task.name")
    na, nb = checkpoint_classes(first.meta, first.name), checkpoint_classes(other.meta, other.name)
    if diff is None and na != nb:
        diff = f"num_classes {na} vs {nb}"
    for section in ("model", "adapter", "loss"):  # a loss may bring its own output layer
        diff = diff or _first_difference(_without_path(ca.get(section)), _without_path(cb.get(section)), section)
    if diff is None and first.meta.get("frozen_fingerprint") != other.meta.get("frozen_fingerprint"):
        diff = "different pretrained base weights (frozen fingerprint)"
    if diff is None and set(first.tensors) != set(other.tensors):
        only = sorted(set(first.tensors) ^ set(other.tensors))
        diff = f"different tensor sets (e.g. {only[0]!r} in only one)"
    for key, t in first.tensors.items():
        if diff is not None:
            break
        u = other.tensors[key]
        if t.shape != u.shape or t.dtype != u.dtype:
            diff = f"tensor {key}: shape {tuple(t.shape)} {t.dtype} vs {tuple(u.shape)} {u.dtype}"
    if diff is not None:
        raise CheckpointError(f"cannot average {pair}: {diff}")


def _average(ingredients: list[_Ingredient]) -> dict[str, torch.Tensor]:
    """Mean of float tensors (in float64, cast back); other tensors (counters) are the first run's."""
    out = {}
    for key, t in ingredients[0].tensors.items():
        if t.is_floating_point():
            mean = torch.stack([i.tensors[key].to(torch.float64) for i in ingredients]).mean(0)
            out[key] = mean.to(t.dtype)
        else:  # e.g. BatchNorm's num_batches_tracked: an integer count, not a weight to average
            out[key] = t.clone()
    return out


def make_soup(run_dirs: list[Path], out_dir: Path, greedy: bool = False, device: str = "cpu",
              tracker: Tracker | None = None, parent_run_id: str | None = None) -> SoupResult:
    """Average the best checkpoints of `run_dirs` (uniformly or greedily) into a new run folder `out_dir`.

    The soup's MLflow run goes to `tracker` (default: the first run's tracking settings), nested under `parent_run_id`.
    """
    if len(run_dirs) < 2:
        raise ConfigError(f"a soup needs at least 2 runs, got {len(run_dirs)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir}: already exists and is not empty; choose another --out folder")
    ckpts = [checkpoint_of(Path(p)) for p in run_dirs]
    if len({c.resolve() for c in ckpts}) < len(ckpts):
        raise ConfigError("the same run is given twice; a soup averages different runs")
    ingredients = [_Ingredient(str(p), *read_checkpoint(c)) for p, c in zip(run_dirs, ckpts)]
    for other in ingredients[1:]:
        _check_compatible(ingredients[0], other)

    # The first run's model, task and validation set score every candidate: one yardstick for all.
    exp, model, adapter, _ = load_trained(ckpts[0], device)
    task = exp.task.build(seed=exp.seed)
    selection = select(exp.train.selection, task)
    dev_set, metric = selection.val, task.selection_metric
    direction, options = task.direction(metric), scoring_options(exp.train)

    def score(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, float], np.ndarray]:
        adapter.load_state_dict(model, tensors)
        logits = utterance_logits(model, dev_set, device=device, progress=False, **options)
        dev = task.metrics(logits, dev_set)
        if metric not in dev:
            raise ConfigError(f"task {exp.task.name!r}: selection metric {metric!r} is not among its dev metrics")
        return dev, logits

    kept, trace = list(ingredients), []
    if greedy:
        scored = {}
        for ing in tqdm(ingredients, desc="soup: scoring runs on dev", unit="run", leave=False):
            scored[ing.name] = score(ing.tensors)
        values = {name: dev[metric] for name, (dev, _) in scored.items()}
        # Best first; NaN last; ties keep the order given (sorted is stable).
        sign = -1.0 if direction == "max" else 1.0
        order = sorted(ingredients, key=lambda i: (not np.isfinite(values[i.name]), sign * values[i.name]))
        kept, best, best_scored = [order[0]], values[order[0].name], scored[order[0].name]
        trace.append({"run": order[0].name, "run_dev": best, "soup_dev": best, "kept": True})
        for ing in tqdm(order[1:], desc="soup: greedy candidates", unit="soup", leave=False):
            candidate = score(_average(kept + [ing]))
            value = candidate[0][metric]
            keep = improved(value, best, direction)
            trace.append({"run": ing.name, "run_dev": values[ing.name], "soup_dev": value, "kept": keep})
            if keep:
                kept, best, best_scored = kept + [ing], value, candidate
    tensors = _average(kept)
    if greedy:  # the kept soup was scored last time it improved: reuse its logits
        adapter.load_state_dict(model, tensors)
        dev, logits = best_scored
    else:
        dev, logits = score(tensors)
    calibration = task.fit_calibration(logits, dev_set)

    config = exp.to_dict() | {"name": out_dir.name}
    soup_exp = build_experiment(config, source=f"soup of {ingredients[0].name}")
    method = "greedy" if greedy else "uniform"
    record = {"method": method, "metric": metric, "direction": direction, "runs": [i.name for i in ingredients],
              "kept": [i.name for i in kept], "trace": trace}
    meta = {"config": config, "step": 0, "dev": dev, "frozen_fingerprint": ingredients[0].meta.get("frozen_fingerprint"),
            "num_classes": task.num_classes, "weights": "soup", "soup": record}
    if calibration is not None:
        meta["calibration"] = calibration
    out_dir.mkdir(parents=True, exist_ok=True)
    dump_yaml(config, out_dir / "config.yaml")
    best_dir = save_checkpoint(out_dir / "checkpoints" / "best", tensors, meta)

    tracker = tracker or Tracker(soup_exp.tracking)
    tags = {"algorithm": "soup", "soup": method, "adapter": exp.adapter.name, "task": exp.task.name,
            "selection": selection.label}
    run_id = tracker.start(out_dir.name, params=config | {"soup": {"runs": ",".join(record["runs"])}}, tags=tags,
                           parent_run_id=parent_run_id, run_dir=out_dir)
    status = "FAILED"
    try:
        tracker.log_params(run_id, {"soup.kept": ",".join(record["kept"]), "soup.method": method})
        tracker.log_artifact(run_id, out_dir / "config.yaml")
        for i, step in enumerate(trace):  # the greedy trace as a curve: candidate i's soup dev value
            tracker.log_metrics(run_id, {f"soup/dev_{metric}": step["soup_dev"], "soup/kept": float(step["kept"])}, i)
        tracker.log_metrics(run_id, {f"dev/{k}": v for k, v in dev.items()})
        ev = evaluate_sets(model, task, task.eval_sets(), out_dir / "scores", calibration=calibration, device=device,
                           options=options, progress=exp.train.progress)
        for name, metrics in ev.results.items():
            tracker.log_metrics(run_id, {f"eval/{name}/{k}": v for k, v in metrics.items()})
        if (out_dir / "scores").exists():
            tracker.log_artifact(run_id, out_dir / "scores", "scores")
        tracker.log_artifact(run_id, best_dir, "checkpoint")
        status = "FINISHED"
    finally:
        tracker.end(run_id, status)

    # A soup trains no steps: best_step and steps_done are 0; the counts are the first run's model's.
    trainable, total, full = count_parameters(model, adapter)
    result = RunResult(out_dir.name, str(out_dir), 0, 0, trainable, total, full, dev, ev.results, run_id, selection.label)
    atomic_write_text(out_dir / "results.json", json.dumps(asdict(result), indent=2))
    return SoupResult(result, method, record["runs"], record["kept"], metric, trace)
