"""Benchmarks: expand variants × grid into experiments, run them, tabulate and plot."""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import logging
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from metadg.config import (
    ConfigError,
    Experiment,
    apply_overrides,
    build_experiment,
    deep_merge,
    expand_vars,
    load_raw,
    set_dotted,
)
from metadg.engine.resume import StopRequested
from metadg.engine.trainer import RunResult, Trainer
from metadg.tasks.base import Headline
from metadg.tracking import Tracker

log = logging.getLogger(__name__)


# Settings that change how a run goes, not what it computes: editing them must
# not orphan finished cells.
_NEUTRAL_TRAIN_KEYS = ("checkpoint_every", "progress", "num_workers", "eval_batch_size")


@dataclass
class Cell:
    """One experiment of a benchmark: its label, the system it belongs to (label without the seed), its config."""

    label: str
    experiment: Experiment
    system: str = ""

    @property
    def cell_id(self) -> str:
        """Stable id: a hash of the resolved config, less what does not change results (name, paths, tracking)."""
        config = {k: v for k, v in self.experiment.to_dict().items() if k not in ("name", "output_dir", "tracking")}
        config["train"] = {k: v for k, v in config["train"].items() if k not in _NEUTRAL_TRAIN_KEYS}
        return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]


def expand(path: str | Path, overrides: list[str] | None = None) -> tuple[str, list[Cell]]:
    """Read a benchmark YAML; return its name and one validated Cell per variant × grid point."""
    path = Path(path)
    raw = apply_overrides(load_raw(path), overrides)
    variants = raw.pop("variants", None) or [{}]
    grid = raw.pop("grid", None) or {}
    name = raw.pop("name", None) or path.stem
    if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
        raise ConfigError(f"{path}: variants: must be a list of partial configs")
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"{path}: grid: must map dotted keys to non-empty lists of values")
    cells = []
    for i, variant in enumerate(variants):
        variant = dict(variant)
        label = str(variant.pop("label", f"variant{i}"))
        for values in itertools.product(*grid.values()):
            data = deep_merge(raw, variant)
            parts = [label] if len(variants) > 1 or not grid else []
            system = list(parts)
            for key, value in zip(grid, values):
                set_dotted(data, key.split("."), value)
                parts.append(f"{key.rsplit('.', 1)[-1]}={_short(value)}")
                if key != "seed":
                    system.append(parts[-1])
            cell_label = " ".join(parts) or label
            data["name"] = f"{name}/{_slug(cell_label)}"
            where = f"{path} [{cell_label}]"
            try:
                data = expand_vars(data)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
            cells.append(Cell(cell_label, build_experiment(data, source=where), " ".join(system) or label))
    labels = [c.label for c in cells]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ConfigError(f"{path}: cells share the label(s) {dupes}; give each variant a distinct label")
    return name, cells


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("name", yaml.safe_dump(value, default_flow_style=True).strip()))
    return str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_") or "cell"


def run_benchmark(path: str | Path, overrides: list[str] | None = None, output_dir: str | None = None) -> tuple[str, list[tuple[Cell, RunResult]]]:
    """Run every cell under one parent MLflow run; write results.md/.csv and a bar chart of the first headline metric."""
    name, cells = expand(path, overrides)
    first = cells[0].experiment
    root = Path(output_dir or first.output_dir) / name
    tracker = Tracker(first.tracking)
    parent = _parent_run(tracker, root, name, path, len(cells))
    done: list[tuple[Cell, RunResult]] = []
    status = "FAILED"
    try:
        for cell in cells:
            # The id in the folder name makes reruns resumable: a finished cell is
            # read back, a cell whose config changed gets a new folder.
            run_dir = root / f"{_slug(cell.label)}-{cell.cell_id}"
            finished = run_dir / "results.json"
            if finished.is_file():
                log.info("%s: finished earlier, reading %s", cell.label, finished)
                done.append((cell, RunResult(**json.loads(finished.read_text(encoding="utf-8")))))
                continue
            tags = {"cell": cell.label, "cell_id": cell.cell_id, "system": cell.system}
            trainer = Trainer(cell.experiment, tracker=tracker, run_dir=run_dir, parent_run_id=parent, tags=tags)
            done.append((cell, trainer.fit()))
        status = "FINISHED"
    except StopRequested:
        status = "KILLED"
        raise
    finally:
        if done:
            rows = results_rows(done)
            root.mkdir(parents=True, exist_ok=True)
            write_tables(rows, root, higher_columns(done))
            artifacts = [root / "results.md", root / "results.csv"]
            head = headlines(done)
            if head and plot_metric(rows, root / f"{head[0].key}.png", head[0]) is not None:
                artifacts.append(root / f"{head[0].key}.png")
            for artifact in artifacts:
                tracker.log_artifact(parent, artifact)
        tracker.end(parent, status)
    return str(root), done


def _parent_run(tracker: Tracker, root: Path, name: str, path: str | Path, n_cells: int) -> str | None:
    # A rerun of an interrupted benchmark continues under the same parent run,
    # so resumed cells and their siblings stay together in the MLflow UI.
    marker = root / "parent_run.json"
    if tracker.enabled and marker.is_file():
        saved = json.loads(marker.read_text(encoding="utf-8"))
        if saved.get("uri") == tracker.cfg.uri:
            return tracker.reopen(saved["run_id"], run_dir=root)
    parent = tracker.start(name, params={"benchmark": str(path), "cells": n_cells}, tags={"metadg.kind": "benchmark"},
                           run_dir=root)
    if parent is not None:
        root.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"uri": tracker.cfg.uri, "run_id": parent}), encoding="utf-8")
    return parent


#: columns that describe a system rather than measure it: copied, never averaged
DESCRIPTIVE = ("system", "group", "selection", "trainable", "trainable_%")


def headlines(done: list[tuple[Cell, RunResult]]) -> list[Headline]:
    """The headline metrics of the benchmark's tasks, in order, each once."""
    seen: dict[str, Headline] = {}
    for cell, _ in done:
        for h in cell.experiment.task.cls.headline:
            seen.setdefault(h.column, h)
    return list(seen.values())


def higher_columns(done: list[tuple[Cell, RunResult]]) -> frozenset[str]:
    """Column suffixes whose larger values are better (accuracy), for bolding the best system."""
    return frozenset(h.column for h in headlines(done) if h.higher_is_better)


def results_rows(done: list[tuple[Cell, RunResult]]) -> list[dict[str, Any]]:
    """One row per cell: label, parameter counts, each headline metric on dev, per eval set and averaged."""
    rows = []
    for cell, res in done:
        # Oracle selection peeks at target data: never let it pass for a DG result.
        oracle = " [oracle]" if res.selection.startswith("oracle") else ""
        row: dict[str, Any] = {
            "system": cell.label + oracle,
            "group": (cell.system or cell.label) + oracle,
            "selection": res.selection,
            "trainable": res.trainable_params,
            "trainable_%": 100.0 * res.trainable_params / max(1, res.full_finetune_params),
        }
        for h in cell.experiment.task.cls.headline:  # per metric: dev, each eval set, their mean
            row[f"dev_{h.column}"] = h.scale * res.dev.get(h.key, float("nan"))
            values = {f"{k}_{h.column}": h.scale * v[h.key] for k, v in res.eval.items() if h.key in v}
            row.update(values)
            if values:
                row[f"avg_{h.column}"] = sum(values.values()) / len(values)
        rows.append(row)
    return rows


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per system: seeds counted, metric columns as (mean, std) over the system's seeds."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    out = []
    for name, members in groups.items():
        summary: dict[str, Any] = {"system": name, "seeds": len(members)}
        for col in dict.fromkeys(k for m in members for k in m):
            if col in ("system", "group"):
                continue
            values = [m[col] for m in members if col in m]
            if col not in DESCRIPTIVE:
                summary[col] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
            else:
                summary[col] = values[0]
        out.append(summary)
    return out


def format_table(rows: list[dict[str, Any]], higher: frozenset[str] = frozenset()) -> str:
    """Markdown table of `summarize`d rows: mean ± std over seeds; the best mean per metric column in bold.

    Best is the largest mean in columns ending in a suffix of `higher` (accuracy), the smallest elsewhere (EER).
    """
    if not rows:
        return "(no results)"
    cols = list(dict.fromkeys(k for r in rows for k in r))

    def pick(col: str) -> Any:
        return max if any(col.endswith(suffix) for suffix in higher) else min

    best = {c: pick(c)(r[c][0] for r in rows if c in r) for c in cols if any(isinstance(r.get(c), tuple) for r in rows)}

    def cell(row: dict[str, Any], col: str) -> str:
        v = row.get(col, "")
        if isinstance(v, tuple):
            text = f"{v[0]:.2f}" + (f" ± {v[1]:.2f}" if row.get("seeds", 1) > 1 else "")
            return f"**{text}**" if v[0] == best[col] and len(rows) > 1 else text
        if isinstance(v, float):
            return f"{v:.2f}"
        return f"{v:,}" if isinstance(v, int) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(r, c) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def write_tables(rows: list[dict[str, Any]], directory: Path, higher: frozenset[str] = frozenset()) -> None:
    """results.md (mean ± std per system) and results.csv (one row per cell) in `directory`."""
    (directory / "results.md").write_text(format_table(summarize(rows), higher) + "\n", encoding="utf-8")
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with (directory / "results.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols)
        writer.writeheader()
        writer.writerows(rows)


def plot_metric(rows: list[dict[str, Any]], path: Path, head: Headline) -> Path | None:
    """Grouped bar chart of one headline metric per evaluation set, one bar per system; None without eval sets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    systems = summarize(rows)
    suffix = f"_{head.column}"
    sets = [c for c in dict.fromkeys(k for r in systems for k in r)
            if c.endswith(suffix) and c not in (f"dev{suffix}", f"avg{suffix}")]
    if not sets:
        return None
    x = np.arange(len(sets))
    width = 0.8 / len(systems)
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(sets) + 2), 3.6))
    for i, row in enumerate(systems):
        means = [row[s][0] if s in row else np.nan for s in sets]
        stds = [row[s][1] if s in row and row["seeds"] > 1 else 0.0 for s in sets]
        ax.bar(x + i * width - 0.4 + width / 2, means, width, yerr=stds, capsize=3, label=row["system"])
    ax.set_xticks(x, [s.removesuffix(suffix) for s in sets])
    ax.set_ylabel(f"{head.label}{' (%)' if head.unit.strip() == '%' else ''}")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_eer(rows: list[dict[str, Any]], path: Path) -> None:
    """Grouped bar chart of EER per evaluation set (the spoof task's headline; see plot_metric)."""
    from metadg.tasks.spoof.task import SpoofDetection

    plot_metric(rows, path, SpoofDetection.headline[0])
