"""Optuna hyperparameter search over a YAML space: pruned trials, MLflow child runs, best.yaml, workers."""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import socket
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from metadg.config import ConfigError, atomic_write_text
from metadg.search.space import (
    CategoricalParam,
    FloatParam,
    Param,
    SearchSpec,
    load_search,
    yaml_scalar,
)
from metadg.search.storage import masked, open_storage
from metadg.tracking import Tracker, tracking_errors
from metadg.engine.trainer import StopRun, Trainer

log = logging.getLogger(__name__)

PARENT_ATTR = "mlflow_parent_run_id"
TRIAL_TAG, STUDY_TAG, STATE_TAG = "optuna.trial", "optuna.study", "optuna.state"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# A diverging learning rate is an outcome of the search, not a bug: such a
# trial is recorded FAIL and the study goes on. Any other error stops it.
TOLERATED = (FloatingPointError,)


class PrunedTrial(optuna.TrialPruned, StopRun):
    """Optuna sees a pruned trial; the Trainer ends its MLflow run KILLED."""


class WorkerError(RuntimeError):
    """A worker process of `--workers N` exited with an error."""


@dataclass
class SearchResult:
    """What a search command left: the study's trials, the best one and where things are."""

    study_name: str
    study_dir: Path
    storage: str
    objective: str
    trials: list[FrozenTrial]
    best: FrozenTrial | None
    best_yaml: Path | None
    table: str


def finished_count(study: optuna.Study) -> int:
    """Trials that count towards n_trials: COMPLETE and PRUNED (FAIL does not; a rerun makes up for it)."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


# ---------------------------------------------------------------- study


def build_sampler(spec: SearchSpec, offset: int) -> optuna.samplers.BaseSampler:
    """The configured sampler; `offset` shifts the seed so workers and resumed runs draw new values.

    Each sampler config (a SAMPLERS plugin) builds its own Optuna sampler with `build(seed)`.
    """
    return spec.sampler.build(spec.sampler.seed + offset)


def build_pruner(spec: SearchSpec) -> optuna.pruners.BasePruner:
    """The configured pruner: each pruner config (a PRUNERS plugin) builds its own with `build()`."""
    return spec.pruner.build()


def open_study(spec: SearchSpec, tracker: Tracker, worker: int = 0) -> optuna.Study:
    """Create or load the study (load_if_exists) with heartbeats that fail trials of dead workers."""

    def on_stale(study: optuna.Study, trial: FrozenTrial) -> None:
        log.warning("trial %d: its worker stopped sending heartbeats; marked FAIL", trial.number)
        mark_child_run(tracker, study.user_attrs.get(PARENT_ATTR), trial.number, "FAIL", trial.params, end="FAILED")

    storage = open_storage(spec.storage_url, spec.cfg.heartbeat_interval, spec.grace_period, on_stale)
    study = optuna.create_study(storage=storage, study_name=spec.study_name, direction=spec.direction,
                                pruner=build_pruner(spec), load_if_exists=True)
    if study.direction.name.lower() != spec.direction:
        raise ConfigError(f"{spec.source}: search.study_name: study {spec.study_name!r} in {masked(spec.storage_url)} "
                          f"was created to {study.direction.name.lower()} its objective, this search would "
                          f"{spec.direction} {spec.objective!r}: pick another study_name")
    # Seeds differ per worker and per resume, or every worker (and every rerun)
    # would draw the same random start-up values again.
    study.sampler = build_sampler(spec, 1000 * worker + len(study.get_trials(deepcopy=False)))
    return study


def fail_stale(study: optuna.Study) -> None:
    """Mark FAIL the RUNNING trials whose worker stopped sending heartbeats (died)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


# ---------------------------------------------------------------- MLflow


def parent_run(spec: SearchSpec, study: optuna.Study, tracker: Tracker) -> str | None:
    """The study's parent MLflow run: reopened on resume, created (and stored in the study) otherwise."""
    if not tracker.enabled:
        return None
    run_id = study.user_attrs.get(PARENT_ATTR)
    if run_id and tracker.online:
        try:
            tracker.client.update_run(run_id, status="RUNNING")
            return run_id
        except tracking_errors():
            log.warning("parent MLflow run %s of study %s is not in %s; starting a new one", run_id, spec.study_name, spec.base.tracking.uri)
    space = {f"space.{k}": p.model_dump(exclude_defaults=True) for k, p in spec.params.items()}
    run_id = tracker.start(spec.study_name, tags={"metadg.kind": "search", STUDY_TAG: spec.study_name}, params={
        "search_file": spec.source, "storage": masked(spec.storage_url), "objective": spec.objective,
        "n_trials": spec.cfg.n_trials, "sampler": spec.sampler.name, "pruner": spec.pruner.name, **space})
    study.set_user_attr(PARENT_ATTR, run_id)
    return run_id


def mark_child_run(tracker: Tracker, parent: str | None, number: int, state: str, params: dict[str, Any], end: str | None = None) -> None:
    """Tag a trial's MLflow run with its final state and sampled params; `end` also terminates it."""
    if not tracker.online or parent is None:  # offline: the trial's own run records its state in its journal
        return
    try:
        runs = tracker.client.search_runs(
            [tracker.experiment_id], f"tags.`{TRIAL_TAG}` = '{number}' and tags.`mlflow.parentRunId` = '{parent}'")
    except tracking_errors() as exc:  # the backend went away: the trial's result is in the study either way
        log.warning("could not tag trial %d's MLflow run (%s)", number, exc)
        return
    for run in runs:
        tracker.set_tags(run.info.run_id, {STATE_TAG: state})
        tracker.log_params(run.info.run_id, {f"sampled.{k}": v for k, v in params.items()})
        if end is not None and run.info.status == "RUNNING":
            tracker.end(run.info.run_id, end)


# ---------------------------------------------------------------- trials


def suggest(trial: optuna.Trial, key: str, param: Param) -> Any:
    """Sample one value of `param` under the name `key`."""
    if isinstance(param, CategoricalParam):
        return trial.suggest_categorical(key, param.choices)
    if isinstance(param, FloatParam):
        return trial.suggest_float(key, param.low, param.high, log=param.log, step=param.step)
    return trial.suggest_int(key, param.low, param.high, log=param.log, step=param.step)


def trial_dir(spec: SearchSpec, number: int) -> Path:
    """Run folder of trial `number`."""
    return spec.study_dir / f"trial-{number:04d}"


def make_objective(spec: SearchSpec, tracker: Tracker, parent: str | None) -> Callable[[optuna.Trial], float]:
    """The function Optuna calls per trial: one Trainer run that reports the objective at each evaluation."""
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def objective(trial: optuna.Trial) -> float:
        params = {key: suggest(trial, key, param) for key, param in spec.params.items()}
        exp = spec.experiment(params, name=f"{spec.study_name}/trial-{trial.number:04d}")
        trial.set_user_attr("worker", worker)
        trial.set_user_attr("run_dir", str(trial_dir(spec, trial.number)))

        def on_eval(step: int, dev: dict[str, float]) -> None:
            if spec.objective not in dev:
                raise ConfigError(f"{spec.source}: search.objective: {spec.objective!r} is not a dev metric "
                                  f"(valid: {', '.join(sorted(dev))})")
            value = float(dev[spec.objective])
            trial.report(value, step)
            # At the last step training is already paid for: let the trial complete and count.
            if step < exp.train.steps and trial.should_prune():
                raise PrunedTrial(f"pruned at step {step}: dev {spec.objective} {value:.4f}")

        tags = {TRIAL_TAG: str(trial.number), STUDY_TAG: spec.study_name}
        trainer = Trainer(exp, tracker=tracker, run_dir=trial_dir(spec, trial.number), parent_run_id=parent, tags=tags, on_eval=on_eval)
        state = "FAIL"
        try:
            result = trainer.fit()
            state = "COMPLETE"
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        finally:
            mark_child_run(tracker, parent, trial.number, state, params)
        metric = spec.task().selection_metric
        trial.set_user_attr("best_step", result.best_step)
        trial.set_user_attr("eval", {name: m[metric] for name, m in result.eval.items() if metric in m})
        return float(result.dev.get(spec.objective, math.nan))

    return objective


def optimize(spec: SearchSpec, study: optuna.Study, tracker: Tracker, parent: str | None) -> None:
    """Run trials in this process until n_trials trials are finished in the study, or the timeout."""
    target = spec.cfg.n_trials
    missing = None if target is None else target - finished_count(study)
    if missing is not None and missing <= 0:
        return

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.COMPLETE:
            write_best(spec, study)
        if target is not None and finished_count(study) >= target:
            study.stop()  # other workers may have finished the rest

    # n_trials=missing also bounds this call when trials FAIL: a rerun makes up for them.
    study.optimize(make_objective(spec, tracker, parent), n_trials=missing, timeout=spec.cfg.timeout,
                   catch=TOLERATED, callbacks=[after_trial], gc_after_trial=True)


# ---------------------------------------------------------------- results


def write_best(spec: SearchSpec, study: optuna.Study) -> Path | None:
    """Write best.yaml: the full resolved experiment with the best trial's values; None before any COMPLETE trial."""
    try:
        best = study.best_trial
    except ValueError:
        return None
    exp = spec.experiment(best.params, name=f"{spec.study_name}-best")
    sampled = ", ".join(f"{k}={yaml_scalar(v)}" for k, v in best.params.items())
    header = (f"# Best trial {best.number} of study {spec.study_name!r} ({masked(spec.storage_url)}):\n"
              f"# dev {spec.objective} {best.value:.6g} with {sampled}\n"
              f"# Written by `metadg search {spec.source}`; run it with `metadg run best.yaml`.\n")
    path = spec.study_dir / "best.yaml"
    # Several workers may write at once: write a private file, then rename over.
    tmp = path.with_name(f".best.yaml.{os.getpid()}")
    tmp.write_text(header + yaml.safe_dump(exp.to_dict(), sort_keys=False, allow_unicode=True), encoding="utf-8")
    os.replace(tmp, path)
    return path


def trials_table(spec: SearchSpec, trials: list[FrozenTrial]) -> str:
    """Markdown table, one row per trial: state, dev objective, eval metrics, step, sampled values.

    A COMPLETE trial shows its value at the selected step (the best one is starred); a
    pruned or failed one shows its best value so far in parentheses and the step it reached.
    """
    metric = spec.task().selection_metric
    sets = list(dict.fromkeys(s for t in trials for s in t.user_attrs.get("eval", {})))
    cols = ["trial", "state", f"dev {spec.objective}", *[f"{s} {metric}" for s in sets], "step", *spec.params]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pick = max if spec.direction == "maximize" else min
    best = pick(complete, key=lambda t: t.value).number if complete else None
    for t in trials:
        if t.state == TrialState.COMPLETE:
            value, step = f"{t.value:.4f}" + (" *" if t.number == best else ""), t.user_attrs.get("best_step", "-")
        elif t.intermediate_values:
            value, step = f"({pick(t.intermediate_values.values()):.4f})", max(t.intermediate_values)
        else:
            value, step = "-", "-"
        evals = t.user_attrs.get("eval", {})
        row = [str(t.number), t.state.name, value, *[_fmt(evals.get(s)) for s in sets], str(step), *[_fmt(t.params.get(k)) for k in spec.params]]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def finish(spec: SearchSpec, study: optuna.Study, tracker: Tracker, parent: str | None, status: str) -> SearchResult:
    """Write best.yaml and trials.md, log them and the best value on the parent run, end it."""
    trials = study.get_trials()
    table = trials_table(spec, trials)
    spec.study_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(spec.study_dir / "trials.md", table + "\n")
    best_yaml = write_best(spec, study)
    best = study.best_trial if best_yaml is not None else None
    counts = {f"trials/{s.name.lower()}": sum(t.state == s for t in trials) for s in TrialState}
    tracker.log_metrics(parent, counts | ({f"best/{spec.objective}": best.value, "best/trial": best.number} if best else {}))
    for artifact in (spec.study_dir / "trials.md", best_yaml):
        if artifact is not None:
            tracker.log_artifact(parent, artifact)
    tracker.end(parent, status)
    return SearchResult(spec.study_name, spec.study_dir, masked(spec.storage_url), spec.objective, trials, best, best_yaml, table)


# ---------------------------------------------------------------- entry points


def _worker_main(path: str, overrides: list[str], index: int, workers: int) -> None:
    """One local worker process of `--workers N`: open the shared study and run trials."""
    import torch

    # The workers share the machine's cores instead of each claiming all of them.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    logging.basicConfig(level=logging.INFO, format=f"%(levelname)s worker{index} %(name)s: %(message)s")
    try:
        spec = load_search(path, overrides)
        tracker = Tracker(spec.base.tracking)
        study = open_study(spec, tracker, worker=index)
        optimize(spec, study, tracker, study.user_attrs.get(PARENT_ATTR))
    except ConfigError as exc:  # the same one-line error as the command itself, not a traceback
        print(f"error: worker {index}: {exc}", file=sys.stderr)
        sys.exit(2)


def run_search(path: str | Path, overrides: list[str] | None = None, workers: int = 1) -> SearchResult:
    """Run (or resume) the study of a search YAML with `workers` local processes; write best.yaml."""
    if workers < 1:
        raise ConfigError(f"--workers: must be at least 1 (got {workers})")
    spec = load_search(path, overrides)
    spec.study_dir.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(spec.base.tracking)
    study = open_study(spec, tracker)
    fail_stale(study)
    if not study.get_trials(deepcopy=False) and spec.cfg.enqueue_default:
        default = spec.default_values()
        if default is not None:
            study.enqueue_trial(default)  # trial 0 measures the config as written
        else:
            log.info("the config's own values are outside the search space; trial 0 is not the default setting")
    parent = parent_run(spec, study, tracker)
    status = "FAILED"
    try:
        if workers == 1:
            optimize(spec, study, tracker, parent)
        else:
            _run_workers(str(path), list(overrides or []), workers)
        status = "FINISHED"
    except (KeyboardInterrupt, StopRun):  # Ctrl-C / SIGTERM: the study stops on purpose
        status = "KILLED"
        raise
    finally:
        fail_stale(study)
        result = finish(spec, study, tracker, parent, status)
    return result


def _run_workers(path: str, overrides: list[str], workers: int) -> None:
    # spawn, not fork: a forked child would inherit torch's thread pools and
    # the parent's open database connections.
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker_main, args=(path, overrides, i, workers), name=f"metadg-search-{i}") for i in range(workers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    failed = [f"worker {i} (exit code {p.exitcode})" for i, p in enumerate(procs) if p.exitcode != 0]
    if failed:
        raise WorkerError(f"{', '.join(failed)} stopped with an error (see its log above); rerun to resume the study")
