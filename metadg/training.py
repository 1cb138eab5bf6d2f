"""Trainer and DomainBatcher: domain-balanced steps, evaluation, early stopping, best checkpoint."""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from metadg.adapters.base import Adapter
from metadg.checkpoint import CheckpointError, frozen_fingerprint, read_checkpoint, save_checkpoint
from metadg.config import Experiment, build_experiment, dump_yaml
from metadg.evaluation import det_png, score_utterances, scoring_options, write_scores
from metadg.models.classifier import Classifier, build_model
from metadg.batcher import DomainBatcher
from metadg.tasks.base import Task, Utterances
from metadg.tracking import Tracker

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """'auto' → cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_model_and_adapter(exp: Experiment, num_classes: int = 2) -> tuple[Classifier, Adapter]:
    """The model with its adapter applied; the base weights depend only on exp.seed."""
    torch.manual_seed(exp.seed)
    model = build_model(exp.backbone, exp.head, num_classes)
    adapter = exp.adapter.build()
    adapter.apply(model)
    return model, adapter


def make_loss(task: Task, class_weights: dict[str, float] | None, device: torch.device) -> nn.Module:
    """Cross-entropy, weighted per class name when asked."""
    weight = None
    if class_weights:
        weight = torch.ones(task.num_classes)
        for name, w in class_weights.items():
            weight[task.class_index(name)] = w
        weight = weight.to(device)
    return nn.CrossEntropyLoss(weight=weight)


def load_trained(checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[Experiment, Classifier, Adapter, dict[str, Any]]:
    """Rebuild a trained model from a checkpoint folder; refuses mismatching base weights."""
    tensors, meta = read_checkpoint(checkpoint)
    exp = build_experiment(meta["config"], source=str(Path(checkpoint) / "meta.json"))
    model, adapter = build_model_and_adapter(exp)
    if meta.get("frozen_fingerprint") not in (None, frozen_fingerprint(model)):
        raise CheckpointError(
            f"{checkpoint}: the frozen backbone rebuilt from the saved config differs from the one trained "
            "(changed pretrained weights or transformers version?)"
        )
    adapter.load_state_dict(model, tensors)
    return exp, model.to(device).eval(), adapter, meta


def count_parameters(model: nn.Module, adapter: Adapter) -> tuple[int, int, int]:
    """(trainable, total, what full fine-tuning would train = total minus adapter-inserted weights)."""
    total = sum(p.numel() for p in model.parameters())
    added = sum(p.numel() for p in adapter.added_parameters(model).values())
    return sum(p.numel() for p in adapter.trainable_parameters(model).values()), total, total - added


class StopRun(Exception):
    """Raised from an on_eval callback to end training on purpose (a pruned search trial): the run ends KILLED."""


@dataclass
class RunResult:
    """What one finished experiment produced."""

    name: str
    run_dir: str
    best_step: int
    steps_done: int
    trainable_params: int
    total_params: int
    full_finetune_params: int
    dev: dict[str, float] = field(default_factory=dict)
    eval: dict[str, dict[str, float]] = field(default_factory=dict)
    run_id: str | None = None


def unique_dir(root: Path, name: str) -> Path:
    """root/name, or root/name-1, root/name-2, ... if it is taken."""
    path, i = root / name, 0
    while path.exists():
        i += 1
        path = root / f"{name}-{i}"
    return path


class Trainer:
    """Owns optimizer, schedule, clipping, evaluation, checkpoints and tracking for one experiment."""

    def __init__(
        self,
        exp: Experiment,
        *,
        tracker: Tracker | None = None,
        run_dir: str | Path | None = None,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
        on_eval: Callable[[int, dict[str, float]], None] | None = None,
    ) -> None:
        self.exp = exp
        # Called with (step, dev metrics) after every validation; a search raises
        # optuna.TrialPruned from it to stop a bad trial early.
        self.on_eval = on_eval
        self.tracker = tracker if tracker is not None else Tracker(exp.tracking)
        self.run_dir = Path(run_dir) if run_dir else unique_dir(Path(exp.output_dir), exp.name)
        self.parent_run_id = parent_run_id
        self.tags = tags or {}
        self.device = resolve_device(exp.train.device)

    def setup(self) -> None:
        """Build task, model, adapter, algorithm, optimizer, schedule and batcher (seeded)."""
        exp, tc = self.exp, self.exp.train
        seed_everything(exp.seed)
        self.task: Task = exp.task.build(seed=exp.seed)
        self.model, self.adapter = build_model_and_adapter(exp, self.task.num_classes)
        self.model.to(self.device)
        self.params = self.adapter.trainable_parameters(self.model)
        self.fingerprint = frozen_fingerprint(self.model)
        loss_fn = make_loss(self.task, tc.class_weights, self.device)
        self.algorithm = exp.algorithm.build(self.model, self.params, loss_fn, seed=exp.seed)
        self.optimizer = torch.optim.AdamW(self.params.values(), lr=tc.lr, weight_decay=tc.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.dev_set = self.task.dev_set()
        self.batcher = DomainBatcher(
            self.task.train_set(),
            domain_key=self.task.domain_key,
            batch_per_domain=tc.batch_per_domain,
            bonafide_fraction=tc.bonafide_fraction,
            crop_samples=self.task.crop_samples,
            share_bonafide=getattr(self.task.cfg, "share_bonafide", True),
            augment=self.task.augmentation(),
            seed=exp.seed,
        )
        self.batches = self.batcher.iterate(tc.num_workers)
        self.bad_steps = self.bad_steps_total = 0

    def fit(self) -> RunResult:
        """Train, select on dev, evaluate the best checkpoint on every eval set."""
        exp = self.exp
        self.run_dir.mkdir(parents=True, exist_ok=True)
        dump_yaml(exp.to_dict(), self.run_dir / "config.yaml")
        self.setup()
        trainable, total, full = count_parameters(self.model, self.adapter)
        run_id = self.tracker.start(
            exp.name,
            params=exp.to_dict(),
            tags={"algorithm": exp.algorithm.name, "adapter": exp.adapter.name, "task": exp.task.name, **self.tags},
            parent_run_id=self.parent_run_id,
        )
        domains = ",".join(self.batcher.domains)
        self.tracker.log_params(run_id, {"trainable_params": trainable, "total_params": total, "domains": domains,
                                         "trainable_percent_of_full": f"{100 * trainable / max(1, full):.3f}"})
        self.tracker.log_artifact(run_id, self.run_dir / "config.yaml")
        status = "FAILED"
        try:
            best_step, steps_done, dev = self._loop(run_id)
            tensors, meta = read_checkpoint(self.best_dir)
            self.adapter.load_state_dict(self.model, tensors)
            results = self._evaluate(run_id, tensors, meta)
            status = "FINISHED"
        except StopRun:
            status = "KILLED"
            raise
        finally:
            self.batches.close()  # stops data-loader workers, if any
            self.tracker.end(run_id, status)
        result = RunResult(exp.name, str(self.run_dir), best_step, steps_done, trainable, total, full, dev, results, run_id)
        (self.run_dir / "results.json").write_text(json.dumps(asdict(result), indent=2), encoding="utf-8")
        return result

    @property
    def best_dir(self) -> Path:
        """Folder of the best checkpoint so far."""
        return self.run_dir / "checkpoints" / "best"

    def _lr_factor(self, step: int) -> float:
        tc = self.exp.train
        if step < tc.warmup_steps:
            return (step + 1) / tc.warmup_steps
        if tc.schedule == "cosine":
            progress = (step - tc.warmup_steps) / max(1, tc.steps - tc.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    def _train_step(self) -> dict[str, float]:
        tc = self.exp.train
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        metrics: dict[str, float] = {}
        for _ in range(tc.grad_accum):
            batches = {d: b.to(self.device) for d, b in next(self.batches).items()}
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=tc.amp):
                for k, v in self.algorithm.update(batches).items():
                    metrics[k] = metrics.get(k, 0.0) + v / tc.grad_accum
        if tc.grad_accum > 1:  # each update() added a full-batch gradient; average them
            for p in self.params.values():
                if p.grad is not None:
                    p.grad.div_(tc.grad_accum)
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        finite = all(math.isfinite(v) for v in metrics.values()) and bool(
            torch.stack([g.isfinite().all() for g in grads]).all() if grads else True
        )
        if not finite:
            # A NaN/Inf step must not reach the weights: skip it, count it, and stop
            # after too many in a row (the best checkpoint on disk stays intact).
            self.optimizer.zero_grad(set_to_none=True)
            self.bad_steps += 1
            self.bad_steps_total += 1
            if self.bad_steps >= tc.max_bad_steps:
                raise FloatingPointError(
                    f"{self.bad_steps} consecutive steps had NaN/Inf loss or gradients (last metrics {metrics}); "
                    f"stopping. The best checkpoint so far is intact in {self.best_dir}"
                )
            return {"skipped_step": 1.0}
        self.bad_steps = 0
        if tc.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.exp.train.grad_clip)
            metrics["grad_norm"] = float(norm)
        self.optimizer.step()
        self.scheduler.step()
        return metrics

    def _score(self, utts: Utterances, progress: bool, desc: str = "scoring") -> np.ndarray:
        return score_utterances(
            self.model, utts, device=self.device, progress=progress, desc=desc, **scoring_options(self.exp.train)
        )

    def _validate(self) -> tuple[dict[str, float], np.ndarray]:
        scores = self._score(self.dev_set, progress=False)
        return self.task.metrics(scores, self.dev_set), scores

    def _loop(self, run_id: str | None) -> tuple[int, int, dict[str, float]]:
        tc, metric = self.exp.train, self.task.selection_metric
        best, best_step, best_dev, stale = math.inf, 0, {}, 0
        running: dict[str, list[float]] = {}
        bar = tqdm(range(1, tc.steps + 1), desc=self.exp.name, disable=None if tc.progress else True, unit="step", dynamic_ncols=True)
        step = 0
        for step in bar:
            for k, v in self._train_step().items():
                running.setdefault(k, []).append(v)
            if step % 10 == 0 or step == tc.steps:
                means = {f"train/{k}": sum(v) / len(v) for k, v in running.items() if k != "skipped_step"}
                means["train/lr"] = self.scheduler.get_last_lr()[0]
                means["train/skipped_steps_total"] = self.bad_steps_total
                self.tracker.log_metrics(run_id, means, step)
                loss = f"{means['train/loss']:.3f}" if "train/loss" in means else "nan"
                bar.set_postfix(loss=loss, best_dev=f"{best:.4f}" if best < math.inf else "-")
                running = {}
            if step % tc.eval_every == 0 or step == tc.steps:
                dev, scores = self._validate()
                self.tracker.log_metrics(run_id, {f"dev/{k}": v for k, v in dev.items()}, step)
                if self.on_eval is not None:
                    self.on_eval(step, dev)
                if dev[metric] < best:
                    best, best_step, best_dev, stale = dev[metric], step, dev, 0
                    self.best_dev_scores = scores  # calibration is fitted on these; no rescoring
                    meta = {"config": self.exp.to_dict(), "step": step, "dev": dev, "frozen_fingerprint": self.fingerprint}
                    save_checkpoint(self.best_dir, self.adapter.state_dict(self.model), meta)
                else:
                    stale += 1
                    if tc.patience is not None and stale >= tc.patience:
                        log.info("early stop at step %d: dev %s did not improve for %d evaluations", step, metric, stale)
                        break
        bar.close()
        self.tracker.log_metrics(run_id, {f"best_dev/{k}": v for k, v in best_dev.items()} | {"best_step": best_step}, step)
        return best_step, step, best_dev

    def _report_skips(self, run_id: str | None, sets: dict[str, Utterances]) -> None:
        # on_error: skip must never lose data silently: count per set and reason, log and print.
        counts = {f"skipped/{name}/{reason}": n for name, u in sets.items() for reason, n in u.skipped.items()}
        if counts:
            self.tracker.log_metrics(run_id, counts)
            log.warning("skipped under on_error: skip: %s", ", ".join(f"{k.split('/', 1)[1]}: {v}" for k, v in counts.items()))

    def _evaluate(self, run_id: str | None, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, dict[str, float]]:
        tc, task = self.exp.train, self.task
        calibrator = task.fit_calibration(self.best_dev_scores, self.dev_set)
        if calibrator is not None:  # the checkpoint carries its calibration for eval/score later
            save_checkpoint(self.best_dir, tensors, {k: v for k, v in meta.items() if k != "format"} | {"calibration": calibrator.to_dict()})
        results: dict[str, dict[str, float]] = {}
        score_dir = self.run_dir / "scores"
        scored = {}
        for name, utts in task.eval_sets().items():
            scores = self._score(utts, progress=tc.progress, desc=f"eval {name}")
            llr = calibrator.transform(scores) if calibrator is not None else None
            results[name] = task.metrics(scores, utts, llr)
            write_scores(score_dir, name, utts, scores, llr)
            scored[name] = (utts, scores)
            self.tracker.log_metrics(run_id, {f"eval/{name}/{k}": v for k, v in results[name].items()})
        if results:
            avg = float(np.mean([r[task.selection_metric] for r in results.values()]))
            self.tracker.log_metrics(run_id, {f"eval/avg_{task.selection_metric}": avg})
        self._report_skips(run_id, {"train": self.batcher.utts, "dev": self.dev_set, **{n: u for n, (u, _) in scored.items()}})
        if scored and det_png(score_dir / "det.png", scored) is not None:
            self.tracker.log_artifact(run_id, score_dir / "det.png")
        if score_dir.exists():
            self.tracker.log_artifact(run_id, score_dir, "scores")
        self.tracker.log_artifact(run_id, self.run_dir / "checkpoints" / "best", "checkpoint")
        return results
