"""Optuna hyperparameter search: the study and its workers (study.py), the `search:` space (space.py), storage (storage.py)."""

from __future__ import annotations

from metadg.search.space import (
    CategoricalParam,
    CmaEsSampler,
    FloatParam,
    HyperbandPruner,
    MedianPruner,
    Param,
    SearchSpec,
    TpeSampler,
    load_search,
    yaml_scalar,
)
from metadg.search.storage import masked, open_storage
from metadg.search.study import (
    FINISHED,
    PARENT_ATTR,
    STATE_TAG,
    STUDY_TAG,
    TOLERATED,
    TRIAL_TAG,
    PrunedTrial,
    SearchResult,
    WorkerError,
    build_pruner,
    build_sampler,
    fail_stale,
    finish,
    finished_count,
    make_objective,
    mark_child_run,
    open_study,
    optimize,
    parent_run,
    run_search,
    suggest,
    trial_dir,
    trials_table,
    write_best,
)

__all__ = [
    "FINISHED", "PARENT_ATTR", "STATE_TAG", "STUDY_TAG", "TOLERATED", "TRIAL_TAG", "CategoricalParam", "CmaEsSampler",
    "FloatParam", "HyperbandPruner", "MedianPruner", "Param", "PrunedTrial", "SearchResult", "SearchSpec", "TpeSampler",
    "WorkerError", "build_pruner", "build_sampler", "fail_stale", "finish", "finished_count", "load_search",
    "make_objective", "mark_child_run", "masked", "open_storage", "open_study", "optimize", "parent_run", "run_search",
    "suggest", "trial_dir", "trials_table", "write_best", "yaml_scalar",
]
