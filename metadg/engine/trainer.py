"""Trainer: domain-batched steps, validation with the task's selection metric, best checkpoint, evaluation."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from metadg.config import ConfigError, Experiment, TrackingConfig, atomic_write_text, build_experiment, dump_yaml
from metadg.engine import distributed
from metadg.engine.accounting import count_parameters
from metadg.engine.batcher import DomainBatcher
from metadg.engine.build import build_model_and_adapter, load_trained, make_loss, resolve_device, seed_everything  # noqa: F401  old home
from metadg.engine.checkpoint import CheckpointError, frozen_fingerprint, read_checkpoint, save_checkpoint
from metadg.engine.evaluate import evaluate_sets
from metadg.engine.resume import LoopState, SignalGuard, StopRequested, StopRun, load_state, loop_from_dict, loop_to_dict, rng_state, save_state, set_rng_state, state_dir  # noqa: F401  StopRun: old home
from metadg.engine.run_folder import RunFolderLock, unique_dir  # noqa: F401  unique_dir: old home
from metadg.engine.schedules import lr_factor
from metadg.engine.scoring import scoring_options, utterance_logits
from metadg.engine.selection import select
from metadg.engine.utterances import Utterances
from metadg.engine.workers import AutoWorkers
from metadg.tracking import Tracker

if TYPE_CHECKING:
    from metadg.tasks.base import Task

log = logging.getLogger(__name__)


def improved(value: float, best: float | None, direction: str) -> bool:
    """Whether `value` beats `best` (None or ±inf: nothing yet) in `direction` ('min' or 'max')."""
    if not math.isfinite(value):
        return False
    if best is None or not math.isfinite(best):
        return True
    return value > best if direction == "max" else value < best


def _resolved(config: Any) -> Any:
    """A saved config as this version resolves it (moved keys moved, new defaults filled in)."""
    if not isinstance(config, dict):
        return config
    try:
        return build_experiment(config, source="saved state").to_dict()
    except ConfigError:
        return config


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
    selection: str = "training_domain"


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
        # Under torchrun this joins the process group; rank 0 alone validates,
        # writes the run folder and logs, so the other ranks never track.
        self.dist = distributed.join(resolve_device(exp.train.device))
        self.device = self.dist.device
        # Called with (step, dev metrics) after every validation; a search raises
        # optuna.TrialPruned from it to stop a bad trial early.
        self.on_eval = on_eval
        if not self.dist.is_main:
            tracker = Tracker(TrackingConfig(enabled=False))
        self.tracker = tracker if tracker is not None else Tracker(exp.tracking)
        # A fresh folder is created by rank 0 only (mkdir decides who gets a name), then shared.
        fresh = unique_dir(Path(exp.output_dir), exp.name) if run_dir is None and self.dist.is_main else None
        self.run_dir = distributed.from_main(Path(run_dir) if run_dir else fresh)
        self.parent_run_id = parent_run_id
        self.tags = tags or {}

    def setup(self) -> None:
        """Build task, model, adapter, algorithm, optimizer, schedule and batcher (seeded)."""
        exp, tc = self.exp, self.exp.train
        seed_everything(exp.seed)
        self.task: Task = exp.task.build(seed=exp.seed)
        self.model, self.adapter = build_model_and_adapter(exp, self.task.num_classes)
        self.model.to(self.device)
        self.params = self.adapter.trainable_parameters(self.model)
        self.fingerprint = frozen_fingerprint(self.model)
        self.loss_fn = make_loss(exp, self.task, self.device)
        self.algorithm = exp.algorithm.build(self.model, self.params, self.loss_fn, seed=exp.seed)
        self._kept: list[torch.Tensor] | None = None  # the weights before the current step (_keep_weights)
        if self.algorithm.owns_step:
            if tc.grad_accum > 1:
                raise ConfigError(f"train.grad_accum: {exp.algorithm.name} takes its own optimisation steps, "
                                  "so gradients cannot be accumulated over draws; use grad_accum: 1")
            if tc.weight_decay or tc.grad_clip is not None:
                log.warning("%s takes its own optimisation steps: train.weight_decay and train.grad_clip do not apply "
                            "to it (its step size is the scheduled train.lr unless its own config sets one)",
                            exp.algorithm.name)
        if self.dist.enabled:
            self.algorithm.reduce = distributed.all_mean
        self.optimizer = torch.optim.AdamW(self.params.values(), lr=tc.lr, weight_decay=tc.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.selection = select(tc.selection, self.task)
        self.dev_set = self.selection.val
        self.direction = self.task.direction(self.task.selection_metric)
        batched = self.task.batch_augmentation(self.device)  # replaces the per-clip augmentation when given
        self.batcher = DomainBatcher(
            self.selection.train,
            partition=self.selection.partition,
            batch_per_domain=tc.batch_per_domain,
            crop_samples=self.task.crop_samples,
            policy=self.task.sampling_policy(),
            augment=None if batched is not None else self.task.augmentation(),
            batch_augment=batched,
            device=self.device,
            seed=exp.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        # Starts on first use: after a restore.
        self.batches = AutoWorkers(self.batcher) if tc.num_workers == "auto" else self.batcher.iterate(tc.num_workers)
        self.loop = LoopState()

    def fit(self) -> RunResult:
        """Train (resuming the run folder's saved state if there is one), select on dev, evaluate the best checkpoint.

        Under data parallelism only rank 0 selects and evaluates; other ranks return after training, without metrics.
        """
        # One process at a time trains, resumes or evaluates into a run folder (rank 0 holds the lock).
        with RunFolderLock(self.run_dir) if self.dist.is_main else contextlib.nullcontext():
            return self._fit()

    def _fit(self) -> RunResult:
        exp, main = self.exp, self.dist.is_main
        saved = self._saved_state()  # every rank restores rank 0's state: the run folder must be visible to all
        if main:
            dump_yaml(exp.to_dict(), self.run_dir / "config.yaml")
        self.setup()
        if saved is not None:
            self._restore(*saved)
        distributed.check_agree(self.loop.step, "the step to start from (is the run folder visible to every rank?)")
        trainable, total, full = count_parameters(self.model, self.adapter)
        tags = {"algorithm": exp.algorithm.name, "adapter": exp.adapter.name, "task": exp.task.name,
                "selection": self.selection.label, **self.tags}
        if self.loop.run_id is not None:
            run_id = self.tracker.reopen(self.loop.run_id, run_dir=self.run_dir)
        else:
            run_id = self.tracker.start(exp.name, params=exp.to_dict(), tags=tags, parent_run_id=self.parent_run_id,
                                        run_dir=self.run_dir)
            domains = ",".join(self.batcher.domains)
            self.tracker.log_params(run_id, {"trainable_params": trainable, "total_params": total, "domains": domains,
                                             "trainable_percent_of_full": f"{100 * trainable / max(1, full):.3f}"})
            # Also as metrics: the compare view plots metrics (a metric against trainable parameters), not params.
            self.tracker.log_metrics(run_id, {"trainable_params": trainable, "trainable_percent_of_full": 100 * trainable / max(1, full)})
            self.tracker.log_artifact(run_id, self.run_dir / "config.yaml")
        self.loop.run_id = run_id
        status = "FAILED"
        try:
            with SignalGuard() as guard:
                self._loop(run_id, guard)
            if not main:  # rank 0 evaluates alone; this rank's work is done
                return RunResult(exp.name, str(self.run_dir), 0, self.loop.step, trainable, total, full)
            self._keep_final_weights(run_id)
            tensors, meta = read_checkpoint(self.best_dir)
            self.adapter.load_state_dict(self.model, tensors)
            results = self._evaluate(run_id, tensors, meta)
            status = "FINISHED"
        except StopRun:  # a signal stop or a pruned trial: on purpose, not a failure
            status = "KILLED"
            raise
        finally:
            self.batches.close()  # stops data-loader workers, if any
            self.tracker.end(run_id, status)
        loop = self.loop
        result = RunResult(exp.name, str(self.run_dir), loop.best_step, loop.step, trainable, total, full, loop.best_dev,
                           results, run_id, self.selection.label)
        atomic_write_text(self.run_dir / "results.json", json.dumps(asdict(result), indent=2))
        if exp.tracking.log_model:  # the deployable model, with its card (which reads results.json)
            self.tracker.log_model(run_id, self.run_dir)
        return result

    def _saved_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]] | None:
        # A run folder with saved state and no results is an unfinished run: resume it,
        # but only with the very config it was started with.
        if not state_dir(self.run_dir).exists() and not state_dir(self.run_dir).with_name("last.old").exists():
            return None
        tensors, parts, meta = load_state(self.run_dir)
        if _resolved(meta.get("config")) != self.exp.to_dict():
            raise CheckpointError(
                f"{self.run_dir} holds an unfinished run of a different config; resume it with "
                f"`metadg run {self.run_dir}` or choose another output folder"
            )
        return tensors, parts, meta

    def _restore(self, tensors: dict[str, torch.Tensor], parts: dict[str, Any], meta: dict[str, Any]) -> None:
        if meta.get("frozen_fingerprint") != self.fingerprint:
            raise CheckpointError(f"{state_dir(self.run_dir)}: the frozen backbone differs from the one this run trained")
        try:
            self.adapter.load_state_dict(self.model, tensors)
            self.optimizer.load_state_dict(parts["optimizer"])
            self.scheduler.load_state_dict(parts["scheduler"])
            self.algorithm.load_state_dict(parts["algorithm"])
            self.batcher.load_state_dict(parts["batcher"])
            self.loop = loop_from_dict(parts["loop"])
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:  # a part missing or mis-shaped
            where = state_dir(self.run_dir)
            raise CheckpointError(f"{where}: the saved training state is damaged or does not fit this run "
                                  f"({type(exc).__name__}: {str(exc)[:200]}); restore the folder, or remove {where} "
                                  "to restart the run from step 0") from None
        if parts.get("best_dev_scores") is not None:
            self.best_dev_scores = parts["best_dev_scores"]
        set_rng_state(parts["rng"])
        if self.dist.enabled and self.device.type == "cuda" and "cuda" in parts["rng"]:
            # Every rank seeds alike and draws same-shaped dropout masks, so rank 0's
            # generator on its GPU is this rank's on its own (whose state rank 0 never advanced).
            torch.cuda.set_rng_state(parts["rng"]["cuda"][0], self.device)
        log.info("resuming %s at step %d", self.run_dir, self.loop.step)

    def save_state(self) -> Path:
        """Write everything a resumed run needs to continue exactly (atomic; the previous state stays valid until done)."""
        parts = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "algorithm": self.algorithm.state_dict(),
            "batcher": self.batcher.state_dict(),
            "loop": loop_to_dict(self.loop),
            "best_dev_scores": getattr(self, "best_dev_scores", None),
            "rng": rng_state(),
        }
        meta = {"config": self.exp.to_dict(), "step": self.loop.step, "frozen_fingerprint": self.fingerprint}
        return save_state(self.run_dir, self.adapter.state_dict(self.model), parts, meta)

    @property
    def best_dir(self) -> Path:
        """Folder of the best checkpoint so far."""
        return self.run_dir / "checkpoints" / "best"

    def _lr_factor(self, step: int) -> float:
        tc = self.exp.train
        return lr_factor(tc.schedule, step, tc.warmup_steps, tc.steps)

    def _train_step(self) -> dict[str, float]:
        tc = self.exp.train
        self.model.train()
        self._keep_weights()
        self.optimizer.zero_grad(set_to_none=True)
        self.algorithm.lr = self.scheduler.get_last_lr()[0]
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
        if self.dist.enabled:  # all ranks then hold the same gradient: clipping and the skip below decide alike
            metrics = distributed.average_step(self.params.values(), metrics, self.device)
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        finite = all(math.isfinite(v) for v in metrics.values()) and bool(
            torch.stack([g.isfinite().all() for g in grads]).all() if grads else True
        )
        if not finite:
            return self._skip_step(metrics)
        if self.algorithm.owns_step:  # the weights moved inside update(); nothing left to apply
            self.optimizer.zero_grad(set_to_none=True)
        else:
            if tc.grad_clip is not None:
                norm = torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.exp.train.grad_clip)
                metrics["grad_norm"] = float(norm)
            self.optimizer.step()
        if not all(bool(p.isfinite().all()) for p in self.params.values()):
            # Finite gradients can still overflow the weights (a diverging learning rate): undo the step.
            self._restore_weights()
            return self._skip_step({**metrics, "weights": math.nan})
        self.loop.bad_steps = 0
        with warnings.catch_warnings():
            # The optimizer never steps under an algorithm that owns its step; torch would say so every run.
            warnings.filterwarnings("ignore", message=r".*lr_scheduler\.step\(\)` before `optimizer\.step\(\)")
            self.scheduler.step()
        self.algorithm.after_step(self.loop.step)
        return metrics

    def _keep_weights(self) -> None:
        """Copy the trainable weights before a step (into buffers kept between steps), so a bad step can be undone."""
        with torch.no_grad():
            if self._kept is None:
                self._kept = [p.detach().clone() for p in self.params.values()]
            else:
                torch._foreach_copy_(self._kept, [p.detach() for p in self.params.values()])

    def _restore_weights(self) -> None:
        with torch.no_grad():
            torch._foreach_copy_([p.data for p in self.params.values()], self._kept)

    def _skip_step(self, metrics: dict[str, float]) -> dict[str, float]:
        # A NaN/Inf step must not reach the weights: skip it (an algorithm that owns its step may
        # have moved them already: put them back), count it, and stop after too many in a row
        # (the best checkpoint on disk stays intact).
        self._restore_weights()
        self.optimizer.zero_grad(set_to_none=True)
        self.loop.bad_steps += 1
        self.loop.bad_steps_total += 1
        if self.loop.bad_steps >= self.exp.train.max_bad_steps:
            raise FloatingPointError(
                f"{self.loop.bad_steps} consecutive steps had NaN/Inf loss, gradients or updated weights (last metrics "
                f"{metrics}); "
                f"stopping. The best checkpoint so far is intact in {self.best_dir}"
            )
        return {"skipped_step": 1.0}

    @contextmanager
    def _weights(self, weights: dict[str, torch.Tensor] | None) -> Iterator[None]:
        """Run the block with `weights` in the trainable parameters (None: the live ones), then restore them."""
        if weights is None:
            yield
            return
        live = {n: p.detach().clone() for n, p in self.params.items()}
        with torch.no_grad():
            for n, w in weights.items():
                self.params[n].copy_(w)
        try:
            yield
        finally:
            with torch.no_grad():
                for n, w in live.items():
                    self.params[n].copy_(w)

    def _validate(self) -> tuple[dict[str, float], np.ndarray]:
        logits = utterance_logits(self.model, self.dev_set, device=self.device, progress=False,
                                  **scoring_options(self.exp.train))
        dev = self.task.metrics(logits, self.dev_set)
        if "loss" not in dev:  # the training loss on dev: what SWAD's window rule and plain curves read
            ok = np.isfinite(logits).all(axis=1)
            with torch.no_grad():
                dev["loss"] = float(self.loss_fn(torch.from_numpy(logits[ok]).float().to(self.device),
                                                 torch.from_numpy(self.dev_set.labels[ok]).to(self.device)))
        return dev, logits

    def _loop(self, run_id: str | None, guard: SignalGuard) -> None:
        tc, metric, loop = self.exp.train, self.task.selection_metric, self.loop
        main = self.dist.is_main
        first = loop.step  # a resumed run whose training had finished runs no step here
        bar = tqdm(total=tc.steps, initial=loop.step, desc=self.exp.name, disable=None if tc.progress and main else True,
                   unit="step", dynamic_ncols=True)
        while loop.step < tc.steps and not loop.stopped_early:
            loop.step += 1
            step = loop.step
            for k, v in self._train_step().items():
                loop.running.setdefault(k, []).append(v)
            bar.update()
            if step % 10 == 0 or step == tc.steps:
                means = {f"train/{k}": sum(v) / len(v) for k, v in loop.running.items() if k != "skipped_step"}
                means["train/lr"] = self.scheduler.get_last_lr()[0]
                means["train/skipped_steps_total"] = loop.bad_steps_total
                self.tracker.log_metrics(run_id, means, step)
                loss = f"{means['train/loss']:.3f}" if "train/loss" in means else "nan"
                bar.set_postfix(loss=loss, best_dev=f"{loop.best:.4f}" if math.isfinite(loop.best) else "-")
                loop.running = {}
            if main and (step % tc.eval_every == 0 or step == tc.steps):
                self._validate_step(run_id, metric)
            if main and tc.checkpoint_every is not None and step % tc.checkpoint_every == 0 and step < tc.steps:
                self.save_state()
            loop.stopped_early, signum = distributed.decide(loop.stopped_early, guard.signum, self.device)
            if signum is not None:
                if main:
                    self.save_state()
                bar.close()
                raise StopRequested(self.run_dir, step, signum)
        bar.close()
        if main and tc.checkpoint_every is not None and loop.step > first:
            # Training is done: a failure while evaluating (an unreadable eval file, a full disk)
            # must not cost the steps since the last saved state. Rerunning evaluates only.
            self.save_state()
        self.tracker.log_metrics(
            run_id, {f"best_dev/{k}": v for k, v in loop.best_dev.items()} | {"best_step": loop.best_step}, loop.step
        )

    def _validate_step(self, run_id: str | None, metric: str) -> None:
        loop, tc = self.loop, self.exp.train
        with self._weights(self.algorithm.eval_weights()):
            dev = self._validate_and_keep(run_id, metric)
        self.algorithm.after_eval(loop.step, dev)

    def _validate_and_keep(self, run_id: str | None, metric: str) -> dict[str, float]:
        """Validate the weights in the model now; keep them as the best checkpoint if they improve the metric."""
        loop, tc = self.loop, self.exp.train
        dev, logits = self._validate()
        self.tracker.log_metrics(run_id, {f"dev/{k}": v for k, v in dev.items()}, loop.step)
        if self.on_eval is not None:
            self.on_eval(loop.step, dev)
        if metric not in dev:
            raise KeyError(f"task {self.exp.task.name!r}: selection metric {metric!r} is not among its dev metrics "
                           f"({', '.join(sorted(dev))})")
        if improved(dev[metric], loop.best, self.direction):
            loop.best, loop.best_step, loop.best_dev, loop.stale = dev[metric], loop.step, dev, 0
            self.best_dev_scores = logits  # calibration is fitted on these; no rescoring
            meta = {"config": self.exp.to_dict(), "step": loop.step, "dev": dev, "frozen_fingerprint": self.fingerprint,
                    "num_classes": self.task.num_classes}
            save_checkpoint(self.best_dir, self.adapter.state_dict(self.model), meta)
        else:
            loop.stale += 1
            if tc.patience is not None and loop.stale >= tc.patience:
                log.info("early stop at step %d: dev %s did not improve for %d evaluations", loop.step, metric, loop.stale)
                loop.stopped_early = True
        return dev

    def _keep_final_weights(self, run_id: str | None) -> None:
        # An algorithm that ends on weights of its own (SWAD's average) replaces the selected checkpoint.
        final = self.algorithm.final_weights()
        if final is None:
            return
        loop = self.loop
        with self._weights(final):
            dev, logits = self._validate()
            self.best_dev_scores = logits
            loop.best_dev, loop.best_step = dev, loop.step
            meta = {"config": self.exp.to_dict(), "step": loop.step, "dev": dev, "frozen_fingerprint": self.fingerprint,
                    "num_classes": self.task.num_classes, "weights": self.exp.algorithm.name}
            save_checkpoint(self.best_dir, self.adapter.state_dict(self.model), meta)
        self.tracker.log_metrics(run_id, {f"final_dev/{k}": v for k, v in dev.items()}, loop.step)

    def _report_skips(self, run_id: str | None, sets: dict[str, Utterances]) -> None:
        # on_error: skip must never lose data silently: count per set and reason, log and print.
        counts = {f"skipped/{name}/{reason}": n for name, u in sets.items() for reason, n in u.skipped.items()}
        if counts:
            self.tracker.log_metrics(run_id, counts)
            log.warning("skipped under on_error: skip: %s", ", ".join(f"{k.split('/', 1)[1]}: {v}" for k, v in counts.items()))

    def _evaluate(self, run_id: str | None, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, dict[str, float]]:
        task = self.task
        calibration = task.fit_calibration(self.best_dev_scores, self.dev_set)
        if calibration is not None:  # the checkpoint carries its calibration for eval/score later
            save_checkpoint(self.best_dir, tensors, {k: v for k, v in meta.items() if k != "format"} | {"calibration": calibration})
        score_dir = self.run_dir / "scores"
        ev = evaluate_sets(self.model, task, task.eval_sets(), score_dir, calibration=calibration, device=self.device,
                           options=scoring_options(self.exp.train), progress=self.exp.train.progress)
        for name, metrics in ev.results.items():
            self.tracker.log_metrics(run_id, {f"eval/{name}/{k}": v for k, v in metrics.items()})
        averages = {h.key for h in task.headline} | {task.selection_metric}
        for key in sorted(averages):
            values = [r[key] for r in ev.results.values() if key in r]
            if values:
                self.tracker.log_metrics(run_id, {f"eval/avg_{key}": float(np.mean(values))})
        self._report_skips(run_id, {"train": self.batcher.utts, "dev": self.dev_set, **{n: u for n, (u, _) in ev.scored.items()}})
        for path in ev.summary_files:
            self.tracker.log_artifact(run_id, path)
        if score_dir.exists():
            self.tracker.log_artifact(run_id, score_dir, "scores")
        self.tracker.log_artifact(run_id, self.run_dir / "checkpoints" / "best", "checkpoint")
        return ev.results
