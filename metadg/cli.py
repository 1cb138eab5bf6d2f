"""The `metadg` command: run, bench, search, eval, score, soup, params, list, upload; import, convert, export, register."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic_core import PydanticUndefined

from metadg.config import ConfigError
from metadg.deploy import commands as deploy_commands
from metadg.engine import distributed
from metadg.errors import EXIT_STOPPED, EXIT_USAGE, handle  # noqa: F401  (exit statuses: kept importable here)
from metadg.registry import (ADAPTERS, ALGORITHMS, HEADS, LOSSES, MODELS, PRUNERS, SAMPLERS, SCHEDULES, SELECTIONS, TASKS,
                             describe)


def _overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. -o algorithm.beta=2.0 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of every sub-command."""
    parser = argparse.ArgumentParser(prog="metadg", description="Meta-learning / domain generalization with pluggable adaptation.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train and evaluate one experiment YAML, or resume an unfinished run folder")
    run.add_argument("config", help="experiment YAML, or the folder of an unfinished run to resume")
    _overrides(run)
    run.add_argument("--dry-run", action="store_true", help="validate and print the resolved config, then stop")
    run.add_argument("--distributed", action="store_true",
                     help="data-parallel training on --nproc local processes through torchrun "
                          "(a run that torchrun started needs no flag)")
    run.add_argument("--nproc", type=int, default=None, metavar="N",
                     help="processes for --distributed (default: one per GPU; on CPU give it, e.g. 2, for gloo)")
    bench = sub.add_parser("bench", help="run every cell of a benchmark YAML and print a results table")
    bench.add_argument("config")
    _overrides(bench)
    bench.add_argument("--dry-run", action="store_true", help="list the cells and stop")
    bench.add_argument("--output-dir", default=None, help="where run folders go (default: output_dir of the config)")
    search = sub.add_parser("search", help="tune hyperparameters with Optuna over the `search:` space of a YAML")
    search.add_argument("config")
    _overrides(search)
    search.add_argument("--workers", type=int, default=1, metavar="N", help="local worker processes sharing the study (default 1)")
    ev = sub.add_parser("eval", help="score a trained checkpoint on evaluation sets and print the metrics")
    ev.add_argument("checkpoint", help="a run's checkpoints/best folder (or the run folder)")
    ev.add_argument("--sets", help="YAML with an `eval:` mapping of set name → corpus spec (default: the run's own)")
    ev.add_argument("--out", help="folder for score files and metrics.json (default: <run>/eval)")
    ev.add_argument("--device", default="cpu")
    score = sub.add_parser("score", help="score audio files or folders with a trained checkpoint into a CSV")
    score.add_argument("checkpoint")
    score.add_argument("paths", nargs="+", help="audio files and/or folders (searched recursively)")
    score.add_argument("--out", default="scores.csv", help="CSV to write: path, the task's columns (spoof: score, llr, decision), error")
    score.add_argument("--device", default="cpu")
    score.add_argument("--window", type=float, metavar="S", help="score long files in windows of S seconds "
                       "(default: the run's train.eval_chunk_samples; none = whole files)")
    score.add_argument("--overlap", type=float, help="overlap between windows, 0 to <1 (default: the run's, 0.5)")
    score.add_argument("--aggregate", default="mean", choices=["mean", "max", "min"],
                       help="one score per file from its windows: mean of their LLRs/logits, or the window of highest "
                       "(max, most bona fide) / lowest (min, most spoof-like) score")
    score.add_argument("--per-window", metavar="CSV", help="also write one row per window (path, start_s, end_s, columns)")
    point = score.add_mutually_exclusive_group()
    point.add_argument("--threshold", type=float, help="decide on the raw score at this threshold (default: dev EER threshold)")
    point.add_argument("--prior", type=float, metavar="P_SPOOF", help="Bayes decision on calibrated LLRs at this spoof prior")
    score.add_argument("--c-miss", type=float, default=1.0, help="with --prior: cost of rejecting bona fide speech (1)")
    score.add_argument("--c-fa", type=float, default=1.0, help="with --prior: cost of accepting a spoof (1)")
    up = sub.add_parser("upload", help="send runs logged while the MLflow server was unreachable (their tracking.jsonl)")
    up.add_argument("paths", nargs="+", help="run folders, folders of them (a benchmark), or tracking.jsonl files")
    up.add_argument("--uri", help="MLflow tracking URI to send to (default: the one each run was started with)")
    soup = sub.add_parser("soup", help="average the weights of runs sharing one base model (model soup) into a new run folder")
    soup.add_argument("runs", nargs="+", help="run folders (or their checkpoints/best folders) of one model and base")
    soup.add_argument("--out", required=True, help="run folder to write the soup into (must not exist or be empty)")
    soup.add_argument("--greedy", action="store_true",
                      help="greedy soup: add runs in order of dev score while the soup's dev metric improves (default: uniform mean)")
    soup.add_argument("--device", default="cpu")
    deploy_commands.add_parsers(sub)
    sub.add_parser("list", help="list registered plugins and their hyperparameters")
    params = sub.add_parser("params", help="count total, trainable and per-module trainable parameters")
    params.add_argument("config")
    _overrides(params)
    return parser


def cmd_list() -> int:
    """Print every registry, its plugins, their descriptions and hyperparameters with defaults."""
    from metadg.tasks.audio.corpus import CORPORA

    for title, registry in (("algorithms", ALGORITHMS), ("adapters", ADAPTERS), ("losses", LOSSES), ("tasks", TASKS),
                            ("models (backbones)", MODELS), ("models (heads)", HEADS), ("corpora", CORPORA),
                            ("selection methods (train.selection.method)", SELECTIONS),
                            ("schedules (train.schedule)", SCHEDULES), ("search samplers (search.sampler)", SAMPLERS),
                            ("search pruners (search.pruner)", PRUNERS)):
        print(f"{title}:")
        for name, cls in registry.items():
            print(f"  {name:<16} {describe(cls)}")
            # A plugin's settings are its Config's fields; samplers and pruners are config classes themselves.
            config = getattr(cls, "Config", None) or (cls if hasattr(cls, "model_fields") else None)
            for field_name, info in getattr(config, "model_fields", {}).items():
                if field_name == "name":
                    continue
                default = "required" if info.default is PydanticUndefined and info.default_factory is None else (
                    info.default_factory() if info.default_factory else info.default)
                print(f"      {field_name} = {default!r:<18} {info.description or ''}")
        print()
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    """Print the parameter report of an experiment (or of every cell of a benchmark)."""
    from metadg.bench import expand
    from metadg.config import load_raw
    from metadg.engine.accounting import count

    if any(k in load_raw(args.config) for k in ("grid", "variants")):
        _, cells = expand(args.config, args.override)
        named = [(c.label, c.experiment) for c in cells]
    else:
        from metadg.config import load_config

        named = [("", load_config(args.config, args.override))]
    for label, exp in named:
        if label:
            print(f"== {label}")
        print(count(exp).format() + "\n")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint and print the task's headline metrics per set."""
    from metadg.config import read_yaml
    from metadg.engine.checkpoint import checkpoint_of
    from metadg.engine.evaluate import evaluate_checkpoint

    ckpt = checkpoint_of(args.checkpoint)
    specs = None
    if args.sets:
        specs = read_yaml(args.sets).get("eval")
        if not isinstance(specs, dict) or not specs:
            raise ConfigError(f"{args.sets}: expected an `eval:` mapping of set name → corpus spec")
    out = Path(args.out) if args.out else ckpt.parent.parent / "eval"
    results = evaluate_checkpoint(ckpt, out, specs, device=args.device)
    heads = _headline(ckpt)
    print(f"{'set':<24}" + "".join(f" {h.label + h.unit:>12}" for h in heads))
    for name, metrics in results.items():
        print(f"{name:<24}" + "".join(f" {h.scale * metrics.get(h.key, float('nan')):>12.2f}" for h in heads))
    print(f"score files and metrics.json: {out}")
    return 0


def _headline(checkpoint: Path) -> tuple:
    """The headline metrics of the task a checkpoint was trained on."""
    from metadg.config import build_experiment
    from metadg.engine.checkpoint import read_checkpoint

    _, meta = read_checkpoint(checkpoint)
    return build_experiment(meta["config"], source=str(checkpoint)).task.cls.headline


def cmd_score(args: argparse.Namespace) -> int:
    """Score files and write a CSV."""
    from metadg.deploy.detector import Detector, Windows
    from metadg.tasks.audio.score_files import score_files

    point = ({"threshold": args.threshold} if args.threshold is not None else
             {"prior": args.prior, "c_miss": args.c_miss, "c_fa": args.c_fa} if args.prior is not None else None)
    windows = Windows(args.window, args.overlap, args.aggregate)
    detector = Detector(args.checkpoint, args.device)
    rule = detector.operating_point(point)  # before scoring: a bad --prior must not wait for the files
    scored, failed = score_files(detector.checkpoint, args.paths, args.out, device=args.device, windows=windows,
                                 operating_point=point, per_window_csv=args.per_window, detector=detector)
    print(f"scored {scored} file(s){f', {failed} unreadable (see the error column)' if failed else ''}: {args.out}")
    print(f"decision: {rule}" + (f"; windows: {args.per_window}" if args.per_window else ""))
    return 0 if scored or not failed else 1


def cmd_soup(args: argparse.Namespace) -> int:
    """Make a uniform or greedy soup and print the kept runs, its dev metric and headline metrics per eval set."""
    from metadg.engine.soup import make_soup

    soup = make_soup([Path(p) for p in args.runs], Path(args.out), greedy=args.greedy, device=args.device)
    res = soup.result
    print(f"{soup.method} soup of {len(soup.runs)} run(s), kept {len(soup.kept)}: {', '.join(soup.kept)}")
    heads = _headline(Path(res.run_dir) / "checkpoints" / "best")
    dev = [f"dev {h.label} {h.show(res.dev.get(h.key, float('nan')))}" for h in heads]
    if soup.metric not in {h.key for h in heads}:  # the selection metric decides a greedy soup: always show it
        dev.insert(0, f"dev {soup.metric} {res.dev.get(soup.metric, float('nan')):.4f}")
    print("  ".join(dev))
    for name, metrics in res.eval.items():
        shown = "  ".join(f"{h.label} {h.show(metrics[h.key])}" for h in heads if h.key in metrics)
        print(f"  {name:<20} {shown}")
    print(f"run folder: {res.run_dir}")
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    """Replay run journals to MLflow and print what was sent."""
    from mlflow.exceptions import MlflowException

    from metadg.tracking.journal import JournalError
    from metadg.tracking.upload import upload

    try:
        report = upload(args.paths, args.uri)
    except JournalError as exc:
        raise OSError(str(exc)) from exc
    except MlflowException as exc:
        raise OSError(f"upload failed; nothing is lost, run it again later: {str(exc).splitlines()[0]}") from exc
    print(report.format())
    return 1 if report.skipped else 0


def cmd_run(args: argparse.Namespace) -> int:
    """Train one experiment and print its results."""
    from metadg.config import load_config

    run_dir = None
    if Path(args.config).is_dir():  # an unfinished run: resume it with the config it was started with
        run_dir = Path(args.config)
        if (run_dir / "results.json").is_file():
            raise ConfigError(f"{run_dir}: this run has finished (results.json); nothing to resume")
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"{run_dir}: a folder but not a run folder to resume (no config.yaml); "
                              "expected an experiment YAML file or an unfinished run folder")
        if args.override:
            raise ConfigError("-o overrides cannot change a run that is being resumed")
        args.config = str(run_dir / "config.yaml")
    exp = load_config(args.config, args.override)
    if args.dry_run:
        import yaml

        print(yaml.safe_dump(exp.to_dict(), sort_keys=False), end="")
        return 0

    if args.distributed and not distributed.launched():
        return _relaunch_distributed(args, str(run_dir) if run_dir else args.config)
    from metadg.engine.trainer import Trainer

    trainer = Trainer(exp, run_dir=run_dir)  # joins torchrun's process group, if started by torchrun
    if trainer.dist.is_main and exp.tracking.enabled:
        print(f"tracking: {exp.tracking.uri} (experiment {exp.tracking.experiment!r})")
    result = trainer.fit()  # a failure propagates: torchrun ends the other ranks and the group with them
    distributed.finish()
    if not trainer.dist.is_main:  # rank 0 reports
        return 0
    heads = exp.task.cls.headline
    dev = "  ".join(f"dev {h.label} {h.show(result.dev.get(h.key, float('nan')))}" for h in heads)
    print(f"run folder: {result.run_dir}  best step {result.best_step}  {dev}")
    for name, metrics in result.eval.items():
        shown = "  ".join(f"{h.label} {h.show(metrics[h.key])}" for h in heads if h.key in metrics)
        print(f"  {name:<20} {shown}")
    return 0


def _relaunch_distributed(args: argparse.Namespace, target: str) -> int:
    """Replace this process by torchrun running `metadg run target` on N local processes."""
    import os

    import torch

    n = torch.cuda.device_count() if args.nproc is None else args.nproc
    if n < 1:
        raise ConfigError("--distributed: no GPU found; give the number of processes with --nproc (e.g. --nproc 2: CPU, gloo)"
                          if args.nproc is None else f"--nproc {args.nproc}: needs at least one process")
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", "-m", "metadg",
            *(["--debug"] if args.debug else []), "run", target, *[a for o in args.override for a in ("-o", o)]]
    sys.stdout.flush()
    os.execv(sys.executable, argv)
    return 0  # not reached: execv does not return


def cmd_bench(args: argparse.Namespace) -> int:
    """Run a benchmark and print its results table (one per part of a composite benchmark)."""
    from metadg.bench import format_table, headlines, higher_columns, plan, results_rows, run_benchmark, summarize

    if args.dry_run:
        name, parts = plan(args.config, args.override)
        print(f"{name}: {sum(len(p.cells) for p in parts)} cell(s)")
        for part in parts:
            if len(parts) > 1:
                print(f" {part.name}: {len(part.cells)} cell(s)")
            for cell in part.cells:
                e = cell.experiment
                print(f"  {cell.label:<28} algorithm={e.algorithm.name} adapter={e.adapter.name} seed={e.seed} "
                      f"id={cell.cell_id}")
            for soup in part.soups:
                print(f"  {soup.label:<28} soup ({'greedy' if soup.greedy else 'uniform'}) of {soup.where or 'all cells'}"
                      " per seed")
        return 0
    root, done = run_benchmark(args.config, args.override, args.output_dir)
    for part in dict.fromkeys(cell.part for cell, _ in done):
        rows = [d for d in done if d[0].part == part]
        print(f"\n## {part}\n" if part else "")
        print(format_table(summarize(results_rows(rows)), higher_columns(rows)))
    plot = f" and {heads[0].key}.png" if (heads := headlines(done)) else ""
    print(f"\nrun folders, tables{plot}: {root}")
    tracking = done[0][0].experiment.tracking if done else None
    if tracking is not None and tracking.enabled:
        if tracking.uri.startswith(("http://", "https://")):
            print(f"MLflow runs: open {tracking.uri}")
        else:
            print(f"MLflow runs: mlflow ui --backend-store-uri {tracking.uri}   (then open http://127.0.0.1:5000)")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    """Run or resume a study, print its trials and where best.yaml is."""
    from metadg.search import WorkerError, run_search

    try:
        result = run_search(args.config, args.override, workers=args.workers)
    except WorkerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print()
    print(result.table)
    print(f"\nstudy {result.study_name!r} in {result.storage}; trial folders and trials.md: {result.study_dir}")
    if result.best is not None:
        print(f"best: trial {result.best.number}, dev {result.objective} {result.best.value:.4f}; "
              f"ready to run: metadg run {result.best_yaml}")
    else:
        print("no trial completed yet; rerun the command to continue the study")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `metadg` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "mlflow", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if args.command in ("bench", "search") and distributed.launched():
            # Every rank would run the whole sweep; data parallelism is per training run.
            raise ConfigError(f"metadg {args.command} runs single-process; use torchrun (or --distributed) with `metadg run`")
        if args.command == "list":
            return cmd_list()
        if args.command == "run":
            return cmd_run(args)
        if args.command == "params":
            return cmd_params(args)
        if args.command == "eval":
            return cmd_eval(args)
        if args.command == "score":
            return cmd_score(args)
        if args.command == "upload":
            return cmd_upload(args)
        if args.command == "soup":
            return cmd_soup(args)
        if args.command in deploy_commands.COMMANDS:
            return deploy_commands.run(args)
        if args.command == "search":
            return cmd_search(args)
        return cmd_bench(args)
    except Exception as exc:  # the error boundary: every failure ends as one line and an exit status
        return handle(exc, list(sys.argv[1:] if argv is None else argv), args.debug)
    except KeyboardInterrupt as exc:
        return handle(exc, [], args.debug)

if __name__ == "__main__":
    sys.exit(main())
