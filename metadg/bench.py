"""Benchmarks: expand variants × grid into experiments, run them, tabulate and plot."""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import logging
import re
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from metadg.config import (
    ConfigError,
    Experiment,
    apply_overrides,
    atomic_write_text,
    build_experiment,
    deep_merge,
    expand_vars,
    load_raw,
    nested_name,
    plain_name,
    set_dotted,
)
from metadg.engine.build import resolve_device
from metadg.engine.checkpoint import CheckpointError
from metadg.engine.resume import StopRequested
from metadg.engine.trainer import RunResult, Trainer
from metadg.tasks.base import Headline
from metadg.tracking import Tracker

log = logging.getLogger(__name__)


# Settings that change how a run goes, not what it computes: editing them must
# not orphan finished cells.
_NEUTRAL_TRAIN_KEYS = ("checkpoint_every", "progress", "num_workers", "eval_batch_size")
# Keys added after cells were first run, left out of the id while at the value that behaves as before,
# so finished cells stay found: (dotted path, that value).
_ADDED_KEYS: tuple[tuple[str, Any], ...] = (
    ("model.backbone.gradient_checkpointing", False),  # same gradients either way; memory vs time only
    ("model.backbone.revision", None),
    ("task.augment.device", "auto"),  # on a CPU the per-clip loader, as before
)


def _without_added_keys(config: dict[str, Any]) -> dict[str, Any]:
    """`config` less the added keys that still hold their old-behaviour value."""
    config = json.loads(json.dumps(config))  # a deep copy of plain data
    for dotted, value in _ADDED_KEYS:
        *parents, key = dotted.split(".")
        section = config
        for part in parents:
            section = section.get(part) if isinstance(section, dict) else None
        if isinstance(section, dict) and key in section and section[key] == value:
            del section[key]
    return config


@dataclass
class Cell:
    """One experiment of a benchmark: its label, the system it belongs to (label without the seed), its config."""

    label: str
    experiment: Experiment
    system: str = ""
    part: str = ""  # the sub-benchmark of a composite benchmark; "" for a plain one

    @property
    def cell_id(self) -> str:
        """Stable id: a hash of the resolved config, less what does not change results (name, paths, tracking)."""
        config = {k: v for k, v in self.experiment.to_dict().items() if k not in ("name", "output_dir", "tracking")}
        config["train"] = {k: v for k, v in config["train"].items() if k not in _NEUTRAL_TRAIN_KEYS}
        return hashlib.sha256(json.dumps(_without_added_keys(config), sort_keys=True).encode()).hexdigest()[:10]


@dataclass
class SoupSpec:
    """A soup row: per seed, the weights of the cells matching `where` averaged (greedily or uniformly)."""

    label: str
    greedy: bool
    where: dict[str, Any]


@dataclass
class Part:
    """One table of a benchmark: its name, cells and soup rows. A plain benchmark is one part."""

    name: str
    cells: list[Cell]
    soups: list[SoupSpec]


def plan(path: str | Path, overrides: list[str] | None = None) -> tuple[str, list[Part]]:
    """Read a benchmark YAML; return its name and its parts (one, or one per file under `parts:`).

    A composite benchmark lists other benchmark files under `parts:`; its other keys are
    merged into each part, and its `grid:`/`soups:` (when given) replace the part's own.
    """
    path = Path(path)
    raw = apply_overrides(load_raw(path), overrides)
    name = nested_name(raw.pop("name", None) or path.stem, f"{path}: name")  # the benchmark's folder
    files = raw.pop("parts", None)
    if files is None:
        return name, [_expand_part(raw, path, name, name, "")]
    if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
        raise ConfigError(f"{path}: parts: must be a non-empty list of benchmark files")
    _soup_specs(raw.get("soups") or [], path)  # errors in the composite's own soups name the composite
    parts = []
    for file in files:
        part_path = (path.parent / file) if not Path(file).is_absolute() else Path(file)
        if not part_path.is_file():
            raise ConfigError(f"{path}: parts: {file}: no such file")
        part_raw = load_raw(part_path)
        if "parts" in part_raw:
            raise ConfigError(f"{path}: parts: {file} is itself composite; list its parts here instead")
        merged = deep_merge(part_raw, {k: v for k, v in raw.items() if k not in ("grid", "soups")})
        for key in ("grid", "soups"):  # replaced whole: a merged grid would mix both files' axes
            if key in raw:
                merged[key] = raw[key]
        part_name = plain_name(merged.pop("name", None) or part_path.stem, f"{part_path}: name")
        parts.append(_expand_part(merged, part_path, f"{name}/{part_name}", part_name, part_name))
    names = [p.name for p in parts]
    if len(set(names)) < len(names):
        raise ConfigError(f"{path}: parts: two parts share a name ({names}); give each file its own name:")
    return name, parts


def expand(path: str | Path, overrides: list[str] | None = None) -> tuple[str, list[Cell]]:
    """Read a benchmark YAML; return its name and one validated Cell per variant × grid point (of every part)."""
    name, parts = plan(path, overrides)
    return name, [cell for part in parts for cell in part.cells]


def _grid_value(value: Any) -> tuple[Any, str]:
    # A mapping in a grid may carry a `label:` for cell labels; it is not part of the config.
    if isinstance(value, dict) and "label" in value:
        value = dict(value)
        return value, str(value.pop("label"))
    return value, _short(value)


def _expand_part(raw: dict[str, Any], path: Path, run_name: str, part_name: str, part: str) -> Part:
    raw = dict(raw)
    variants = raw.pop("variants", None) or [{}]
    grid = raw.pop("grid", None) or {}
    soups = _soup_specs(raw.pop("soups", None) or [], path)
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
                value, shown = _grid_value(value)
                set_dotted(data, key.split("."), value)
                parts.append(f"{key.rsplit('.', 1)[-1]}={shown}")
                if key != "seed":
                    system.append(parts[-1])
            cell_label = " ".join(parts) or label
            data["name"] = f"{run_name}/{_slug(cell_label)}"
            where = f"{path} [{cell_label}]"
            try:
                data = expand_vars(data)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
            cells.append(Cell(cell_label, build_experiment(data, source=where), " ".join(system) or label, part))
    labels = [c.label for c in cells]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ConfigError(f"{path}: cells share the label(s) {dupes}; give each variant a distinct label")
    return Part(part_name, cells, soups)


def _soup_specs(items: Any, path: Path) -> list[SoupSpec]:
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ConfigError(f"{path}: soups: must be a list of {{label, greedy, where}} mappings")
    specs = []
    for i, item in enumerate(items):
        unknown = sorted(set(item) - {"label", "greedy", "where"})
        if unknown:
            raise ConfigError(f"{path}: soups[{i}]: unknown key(s) {unknown} (have: label, greedy, where)")
        where = item.get("where") or {}
        if not isinstance(where, dict) or not isinstance(item.get("greedy", False), bool):
            raise ConfigError(f"{path}: soups[{i}]: where: must map dotted keys to values; greedy: true or false")
        specs.append(SoupSpec(str(item.get("label", f"soup{i}")), item.get("greedy", False), where))
    return specs


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("name", yaml.safe_dump(value, default_flow_style=True).strip()))
    return str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_") or "cell"


def run_benchmark(path: str | Path, overrides: list[str] | None = None, output_dir: str | None = None) -> tuple[str, list[tuple[Cell, RunResult]]]:
    """Run every cell (and soup row) of each part under one parent MLflow run per part; write tables and a chart.

    A plain benchmark writes results.md/.csv and `<metric>.png` in its folder; a composite one
    writes them per part in `<part>/` and a results.md with one section per part at the top.
    """
    name, parts = plan(path, overrides)
    first = parts[0].cells[0].experiment
    root = Path(output_dir or first.output_dir) / name
    composite = len(parts) > 1 or bool(parts[0].cells[0].part)
    done: list[tuple[Cell, RunResult]] = []
    for part in parts:
        part_root = root / part.name if composite else root
        # Each part logs where its own files say (the scenes task has its own MLflow experiment).
        tracker = Tracker(part.cells[0].experiment.tracking)
        done += _run_part(part, part_root, tracker, f"{name}/{part.name}" if composite else name, path)
    if composite:
        sections = [f"## {part.name}\n\n" + format_table(summarize(results_rows(rows)), higher_columns(rows))
                    for part in parts if (rows := [d for d in done if d[0].part == part.name])]
        atomic_write_text(root / "results.md", "\n\n".join(sections) + "\n")
    return str(root), done


def _finished(root: Path, cell: Cell) -> Path | None:
    """A finished run of this cell's config: its own folder, else any folder with its id (a relabelled cell)."""
    own = root / f"{_slug(cell.label)}-{cell.cell_id}" / "results.json"
    if own.is_file():
        return own
    for other in sorted(root.glob(f"*-{cell.cell_id}/results.json")):
        log.info("%s: same config as %s, reading its results", cell.label, other.parent.name)
        return other
    return None


def _run_part(part: Part, root: Path, tracker: Tracker, name: str, path: str | Path) -> list[tuple[Cell, RunResult]]:
    parent = _parent_run(tracker, root, name, path, len(part.cells))
    done: list[tuple[Cell, RunResult]] = []
    status = "FAILED"
    try:
        for cell in part.cells:
            # The id in the folder name makes reruns resumable: a finished cell is
            # read back, a cell whose config changed gets a new folder.
            finished = _finished(root, cell)
            if finished is not None:
                log.info("%s: finished earlier, reading %s", cell.label, finished)
                done.append((cell, read_result(finished)))
                continue
            tags = {"cell": cell.label, "cell_id": cell.cell_id, "system": cell.system}
            run_dir = root / f"{_slug(cell.label)}-{cell.cell_id}"
            trainer = Trainer(cell.experiment, tracker=tracker, run_dir=run_dir, parent_run_id=parent, tags=tags)
            done.append((cell, trainer.fit()))
        trained = list(done)
        for spec in part.soups:
            done += _soup_rows(spec, trained, root, tracker, parent)
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
    return done


def read_result(path: Path) -> RunResult:
    """A finished run's results.json; a damaged one is an error that says how to redo the run."""
    try:
        return RunResult(**json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as exc:  # JSONDecodeError, UnicodeDecodeError, wrong or missing fields
        raise CheckpointError(f"{path}: damaged ({type(exc).__name__}: {exc}); remove {path.parent} to run that "
                              "cell again") from None


def _dotted(data: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _soup_rows(spec: SoupSpec, done: list[tuple[Cell, RunResult]], root: Path, tracker: Tracker,
               parent: str | None) -> list[tuple[Cell, RunResult]]:
    """One soup per seed of the finished cells matching `spec.where`; a soup folder made earlier is read back."""
    from metadg.engine.soup import make_soup

    by_seed: dict[int, list[Cell]] = {}
    for cell, _ in done:
        config = cell.experiment.to_dict()
        if all(_dotted(config, k) == v for k, v in spec.where.items()):
            by_seed.setdefault(cell.experiment.seed, []).append(cell)
    if not any(len(cells) > 1 for cells in by_seed.values()):
        raise ConfigError(f"soups: {spec.label!r}: where {spec.where} matches fewer than 2 cells of any one seed")
    rows = []
    for seed, cells in by_seed.items():
        ids = hashlib.sha256(json.dumps([spec.greedy, [c.cell_id for c in cells]]).encode()).hexdigest()[:10]
        label = f"{spec.label} seed={seed}"
        out = root / f"{_slug(label)}-{ids}"
        if not (out / "results.json").is_file():
            if out.exists():  # a soup interrupted before its results: cheap and deterministic, so redo it
                shutil.rmtree(out)
            dirs = [_finished(root, c).parent for c in cells]  # every cell finished: its folder, under any label
            device = str(resolve_device(cells[0].experiment.train.device))
            make_soup(dirs, out, greedy=spec.greedy, device=device,
                      tracker=tracker, parent_run_id=parent)
        result = read_result(out / "results.json")
        rows.append((Cell(label, cells[0].experiment, spec.label, cells[0].part), result))
    return rows


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
        atomic_write_text(marker, json.dumps({"uri": tracker.cfg.uri, "run_id": parent}))
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
    atomic_write_text(directory / "results.md", format_table(summarize(rows), higher) + "\n")
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=cols)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(directory / "results.csv", buffer.getvalue())


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
