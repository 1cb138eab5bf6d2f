"""The model card of a trained run: a markdown README that travels with every deployed form of it (MLflow, ONNX).

Everything is read from the run folder (results.json, checkpoints/best/meta.json), so a card says what
that run measured, never what a task promises in general.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from metadg.config import build_experiment
from metadg.engine.checkpoint import checkpoint_of, read_checkpoint

#: corpus-spec keys that say where data sits on the training machine, not what it is
_LOCAL_KEYS = {"cache_dir", "root", "path", "list", "protocol"}


def _results(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "results.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:  # a card for a run whose results.json was damaged still states the checkpoint's facts
        return {}
    return data if isinstance(data, dict) else {}


def _value(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.4g}"
    return str(v)


def _corpus(spec: Any) -> str:
    """`name` (split) and the spec's other settings, leaving out machine-local paths."""
    if not isinstance(spec, dict):
        return f"`{spec}`"
    rest = ", ".join(f"{k}={_value(v)}" for k, v in sorted(spec.items())
                     if k not in {"name", "split"} | _LOCAL_KEYS and v not in (None, {}, []))
    split = f" split `{spec['split']}`" if spec.get("split") else ""
    return f"`{spec.get('name', '?')}`{split}" + (f" ({rest})" if rest else "")


def _domains(task_cfg: dict[str, Any], dev: dict[str, Any]) -> str:
    # Per-domain metrics are named `metric/domain`: the dev set says which source domains the run saw.
    named = task_cfg.get("domains")
    seen = sorted({k.split("/", 1)[1] for k in dev if "/" in k})
    key = task_cfg.get("domain_key")
    where = f" (utterance attribute `{key}`)" if key else ""
    if named:
        return f"{', '.join(map(str, named))}{where}, as configured"
    if seen:
        return f"{', '.join(seen)}{where}, every one found in the training corpus"
    return f"every value found in the training corpus{where}"


def _metrics_table(sets: dict[str, dict[str, Any]]) -> list[str]:
    """One markdown table: a row per metric, a column per evaluated set."""
    sets = {name: m for name, m in sets.items() if isinstance(m, dict) and m}
    if not sets:
        return ["No metrics were recorded for this run."]
    keys = sorted({k for m in sets.values() for k in m})
    lines = ["| metric | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    lines += [f"| {k} | " + " | ".join(_value(m[k]) if k in m else "" for m in sets.values()) + " |" for k in keys]
    return lines


def model_card(run_dir: str | Path, backbone_note: str | None = None) -> str:
    """A markdown README for the run's detector: data, domains, parameters, metrics, calibration, operating point, limits."""
    run_dir = Path(run_dir)
    checkpoint = checkpoint_of(run_dir)
    _, meta = read_checkpoint(checkpoint)
    config = meta["config"]
    exp = build_experiment(config, source=str(checkpoint / "meta.json"))
    task = exp.task.build(seed=exp.seed)
    results = _results(run_dir if checkpoint != run_dir else checkpoint.parent.parent)
    task_cfg = config.get("task", {})
    dev = results.get("dev") or meta.get("dev") or {}
    header, _ = task.score_table(np.zeros((1, task.num_classes)), meta)
    model_cfg = config.get("model", {})
    backbone = model_cfg.get("backbone", {})
    source = backbone.get("pretrained") or (f"preset `{backbone['preset']}` (random init)" if backbone.get("preset")
                                            else "config fields (random init)")

    out = [f"# {exp.name}: a metadg `{exp.task.name}` model", "",
           f"Trained with metadg: task `{exp.task.name}`, algorithm `{config.get('algorithm', {}).get('name')}`, "
           f"adapter `{config.get('adapter', {}).get('name')}`, loss `{config.get('loss', {}).get('name')}`, seed {exp.seed}.",
           "", "## Classes and outputs", "",
           f"Classes: {', '.join(f'`{c}`' for c in task.class_names)}. Input: 16 kHz mono audio (files are "
           "converted on load). Output columns per clip: " + ", ".join(f"`{c}`" for c in header) + ".", "",
           "## Training data and domains", ""]
    if isinstance(task_cfg.get("train"), dict) or isinstance(task_cfg.get("dev"), dict):
        out.append(f"* training (source domains): {_corpus(task_cfg.get('train'))}")
        out.append(f"* model selection (dev): {_corpus(task_cfg.get('dev'))}, method `{results.get('selection', 'n/a')}`")
        for name, spec in (task_cfg.get("eval") or {}).items():
            out.append(f"* evaluation `{name}`: {_corpus(spec)}")
    else:  # a plugin task with its own config shape: its settings as given
        out += [f"* {k}: {_value(v)}" for k, v in sorted(task_cfg.items()) if k != "name"]
    out += [f"* domains: {_domains(task_cfg, dev)}", "", "## Model and trainable parameters", "",
            f"* backbone `{backbone.get('name')}` from {source}; head `{model_cfg.get('head', {}).get('name')}`"]
    if backbone_note:
        out.append(f"* {backbone_note}")
    if results.get("trainable_params"):
        trainable, full = results["trainable_params"], results.get("full_finetune_params") or 0
        share = f", {100 * trainable / full:.2f} % of full fine-tuning ({full:,})" if full else ""
        out.append(f"* trainable parameters: {trainable:,} of {results.get('total_params', 0):,}{share}")
    if results.get("steps_done") is not None:
        out.append(f"* steps: {results['steps_done']}, best checkpoint at step {results.get('best_step')}")
    evals = results.get("eval") or {}
    out += ["", "## Metrics", "", *_metrics_table({"dev": dev, **{f"eval {k}": v for k, v in evals.items()}}), "",
            "## Calibration", ""]
    cal = meta.get("calibration")
    if cal:
        fields = ", ".join(f"{k} {_value(v)}" for k, v in sorted(cal.items()))
        out.append(f"Scores are mapped to log-likelihood ratios by a calibration fitted on the dev set ({fields}). "
                   "The calibration holds for the dev distribution; on other data the LLRs may be over- or "
                   "under-confident.")
    else:
        out.append("None: the scores are not calibrated log-likelihood ratios.")
    out += ["", "## Operating point", "", f"Default decision rule: {task.operating_point(meta)}.", "",
            "The served model takes MLflow `params` to decide otherwise: `threshold` (on the score) or `prior`, "
            "`c_miss`, `c_fa` (a Bayes decision on calibrated LLRs, two-class tasks with calibration), and "
            "`window_s`, `overlap`, `aggregate` for long audio.", "",
            "## Intended use and limits", "",
            f"A research model for the `{exp.task.name}` task. Its scores are for the training conditions: the "
            "corpora, domains, channels and languages above. On data unlike them (other recording conditions, "
            "unseen generation methods, other languages) performance can drop well below the metrics reported "
            "here, and the metrics above hold only for the sets they were measured on. Decisions at the default "
            "operating point reflect the dev set's class balance. Do not use it as the sole basis of "
            "decisions about people. A served model reads `path` inputs from the serving host's file system: "
            "expose it to trusted clients only.", ""]
    return "\n".join(out)
