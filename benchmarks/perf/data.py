#!/usr/bin/env python
"""Data-path throughput: corpus indexing, decode + resample + crop (+ RawBoost), and EER on 1M scores."""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

CROP = 64_600  # training crop length (SpoofTaskConfig.crop_samples default)


# ---------------------------------------------------------------- helpers


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def round_robin(
    jobs: dict[str, Callable[[], Any]], rounds: int, offset: int = 0
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Run every job once per round, order rotated each round; seconds per job and each job's last result."""
    names = list(jobs)
    times: dict[str, list[float]] = {n: [] for n in names}
    results: dict[str, Any] = {}
    for r in range(offset, offset + rounds):
        for n in names[r % len(names):] + names[: r % len(names)]:
            gc.collect()  # a collection triggered by one job's garbage should not land in the next job's time
            dt, results[n] = timed(jobs[n])
            times[n].append(dt)
    return times, results


def table(header: list[str], rows: list[list[str]], right: set[int]) -> str:
    """Markdown table; columns in `right` are right-aligned."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if i in right else "---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def corpora_registry():
    """metadg's corpus registry with the built-in readers registered (and the ASVspoof one if importable)."""
    import metadg.tasks  # noqa: F401  registers the readers
    from metadg.tasks.audio.corpus import CORPORA

    note = ""
    try:  # newer than the other readers: trees without it still run the rest
        importlib.import_module("metadg.tasks.spoof.asvspoof")
        CORPORA.get("asvspoof2019_la")
    except Exception as exc:  # noqa: BLE001  any failure just drops the ASVspoof rows
        note = f"ASVspoof reader not available ({type(exc).__name__}: {exc}); its rows are left out"
    return CORPORA, note


def read_corpus(name: str, **cfg: Any):
    """Build reader `name` from config fields and index it (Corpus.read: parse + validate, no audio opened)."""
    CORPORA, _ = corpora_registry()
    from metadg.tasks.spoof.labels import normalize_label

    cls = CORPORA.get(name)
    corpus = cls(cls.Config(**cfg))
    corpus.label_map = normalize_label  # these are spoof lists: bonafide/spoof labels
    return corpus.read()


# ---------------------------------------------------------------- 1. indexing


def write_list(path: Path, n: int, attrs: bool, folder: str = "flac") -> None:
    """CSV list 'path,label[,attack,speaker]' of n rows, 10 % bona fide, ASVspoof-like names."""
    with path.open("w") as f:
        f.write("path,label" + (",attack,speaker" if attrs else "") + "\n")
        for i in range(n):
            bona = i % 10 == 0
            line = f"{folder}/LA_T_{i:07d}.flac,{'bonafide' if bona else 'spoof'}"
            if attrs:
                line += f",{'-' if bona else f'A{i % 6 + 1:02d}'},LA_{i % 500:04d}"
            f.write(line + "\n")


def write_asvspoof2019(root: Path, n: int) -> None:
    """ASVspoof 2019 LA train protocol of n lines 'SPEAKER FILE - SYSTEM KEY' (no audio)."""
    d = root / "LA" / "ASVspoof2019_LA_cm_protocols"
    d.mkdir(parents=True, exist_ok=True)
    with (d / "ASVspoof2019.LA.cm.train.trn.txt").open("w") as f:
        for i in range(n):
            bona = i % 10 == 0
            f.write(f"LA_{i % 500:04d} LA_T_{i:07d} - {'-' if bona else f'A{i % 6 + 1:02d}'} "
                    f"{'bonafide' if bona else 'spoof'}\n")


READERS = {
    "list": "list `path,label,attack,speaker`",
    "list_plain": "list `path,label`",
    "asvspoof2019_la": "asvspoof2019_la `SPEAKER FILE - SYSTEM KEY`",
}


def bench_indexing(args: argparse.Namespace, tmp: Path) -> tuple[str, list[str]]:
    """Each reader at every --lines size (check_files: false), then check_files true vs false on real files."""
    _, asv_note = corpora_registry()
    readers = [r for r in args.readers if not (asv_note and r == "asvspoof2019_la")]
    notes: list[str] = [asv_note] if asv_note and "asvspoof2019_la" in args.readers else []
    rows: list[list[str]] = []

    def protocol(reader: str, n: int) -> dict[str, Any]:
        """Write reader's protocol of n lines; its config fields."""
        if reader == "asvspoof2019_la":
            write_asvspoof2019(tmp / f"asv{n}", n)
            return {"root": str(tmp / f"asv{n}"), "split": "train"}
        path = tmp / f"{reader}{n}.csv"
        write_list(path, n, attrs=reader == "list")
        return {"path": str(path)}

    def parse_only(reader: str, cfg: dict[str, Any]) -> float:
        """Seconds to iterate the reader's rows() (protocol parsing alone, no validation or collection)."""
        CORPORA, _ = corpora_registry()
        cls = CORPORA.get("list" if reader == "list_plain" else reader)
        corpus = cls(cls.Config(check_files=False, **cfg))
        gc.collect()
        sec, _ = timed(lambda: sum(1 for _ in corpus.rows()))
        return sec

    def add(what: str, n: int, check: bool, sec: float, growth: float | None = None, parse: float | None = None) -> None:
        rows.append([what, f"{n:,}", "yes" if check else "no", f"{sec:.2f}", f"{n / sec:,.0f}",
                     f"{1e6 * sec / n:.1f}", f"{growth:.2f}" if growth else "",
                     f"{100 * parse / sec:.0f} %" if parse else ""])

    results: dict[str, dict[int, float]] = {r: {} for r in readers}
    parse: dict[str, float] = {}
    cold: dict[int, float] = {}
    for i, n in enumerate(args.lines):
        cfgs = {r: protocol(r, n) for r in readers}
        if n == args.lines[0]:  # parse share measured at the smallest size only (cheap)
            parse = {r: parse_only(r, cfgs[r]) for r in readers}
        jobs = {r: (lambda r=r: read_corpus("list" if r == "list_plain" else r, check_files=False, **cfgs[r]))
                for r in readers}
        # Untimed warm-up: the first large read in a process is slower (the heap grows, fresh pages
        # fault in); without it, whichever reader went first would carry that cost.
        gc.collect()
        cold[n], _ = timed(jobs[readers[0]])
        times, out = round_robin(jobs, args.index_rounds, offset=i)  # a different reader goes first at each size
        for r in readers:
            assert len(out[r]) == n, (r, len(out[r]), n)
            results[r][n] = statistics.median(times[r])
        del out
        for f in tmp.glob("*"):  # protocols of this size are no longer needed
            shutil.rmtree(f) if f.is_dir() else f.unlink()
        print(f"  {n:,} lines: " + ", ".join(f"{r} {results[r][n]:.1f} s" for r in readers), flush=True)
    n0 = args.lines[0]
    for r in readers:
        for n in args.lines:
            growth = (results[r][n] / n) / (results[r][n0] / n0) if n != n0 else None
            add(READERS[r], n, False, results[r][n], growth, parse.get(r) if n == n0 else None)

    # check_files: true vs false on real (empty) files, side by side.
    for k in range(args.stat_files):
        sub = tmp / "stat" / f"d{k % 100:02d}"
        if k < 100:
            sub.mkdir(parents=True)
        (sub / f"f{k:07d}.flac").touch()
    stat_list = tmp / "stat.csv"
    with stat_list.open("w") as f:
        f.write("path,label\n")
        f.writelines(f"stat/d{k % 100:02d}/f{k:07d}.flac,{'bonafide' if k % 10 == 0 else 'spoof'}\n"
                     for k in range(args.stat_files))
    jobs = {c: (lambda c=c: read_corpus("list", path=str(stat_list), check_files=c)) for c in (False, True)}
    times, out = round_robin(jobs, args.stat_rounds)
    assert all(len(u) == args.stat_files for u in out.values())
    med = {c: statistics.median(t) for c, t in times.items()}
    add(READERS["list_plain"] + ", files present", args.stat_files, False, med[False])
    add(READERS["list_plain"] + ", files present", args.stat_files, True, med[True])
    shutil.rmtree(tmp / "stat")
    stat_list.unlink()
    spread = (max(times[False]) - min(times[False])) / args.stat_files
    notes.append(f"check_files: true − false = {1e6 * (med[True] - med[False]) / args.stat_files:+.1f} µs per line; "
                 f"run-to-run spread of check_files: false is {1e6 * spread:.1f} µs per line "
                 f"({args.stat_files:,} empty files in 100 folders, page cache warm, median of {args.stat_rounds})")
    n1, r0 = args.lines[-1], readers[0]
    notes.append(f"`Corpus.read()` (parse + validate + build Utterances); at each size one untimed warm-up read "
                 f"({r0}: {cold[n1]:.1f} s at {n1:,} lines, vs {results[r0][n1]:.1f} s timed), then "
                 f"{args.index_rounds} round(s), readers rotated; 'µs/line ÷ {n0:,}' > 1 means the per-line cost "
                 "grows with the protocol size; "
                 f"'parse' = share of the time spent iterating `rows()` alone (measured at {n0:,} lines)")
    header = ["reader / protocol", "lines", "check_files", "s", "lines/s", "µs/line", f"µs/line ÷ {n0:,}", "parse"]
    return table(header, rows, {1, 3, 4, 5, 6, 7}), notes


# ---------------------------------------------------------------- 2. decode + resample + crop (+ RawBoost)


def speechlike(rng: np.random.Generator, sr: int, seconds: float) -> np.ndarray:
    """Voiced-ish test signal: harmonics of a wandering F0 under a syllable-rate envelope."""
    t = np.arange(int(sr * seconds)) / sr
    f0 = 120 + 30 * np.sin(2 * np.pi * rng.uniform(0.2, 0.6) * t + rng.uniform(0, 6.3))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 25) if k * 150 < sr / 2)
    env = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 5) * t) ** 2
    return env * x / np.max(np.abs(x))


def clips(rng: np.random.Generator, sr: int, n: int) -> list[np.ndarray]:
    """n clips of 3.5-4.5 s: random segments of one 30 s speech-like signal, random gain, fresh noise."""
    source = speechlike(rng, sr, 30.0)
    out = []
    for _ in range(n):
        length = int(sr * rng.uniform(3.5, 4.5))
        start = int(rng.integers(0, source.size - length))
        x = rng.uniform(0.1, 0.5) * source[start:start + length] + 0.01 * rng.standard_normal(length)
        out.append(x.astype(np.float32))
    return out


def bench_decode(args: argparse.Namespace, tmp: Path) -> tuple[str, list[str]]:
    """Clips per second in this process for each source format × pipeline, chunks round-robin over --decode-passes."""
    import soundfile as sf

    from metadg.tasks.base import fit_length
    from metadg.tasks.spoof.rawboost import RawBoost

    rng = np.random.default_rng(0)
    sources = {"FLAC 16 kHz": (16000, "flac", "FLAC"), "WAV 44.1 kHz": (44100, "wav", "WAV")}
    lines = ["path,label,source"]
    durations = []
    for name, (sr, ext, fmt) in sources.items():
        d = tmp / "audio" / ext
        d.mkdir(parents=True)
        for k, wave in enumerate(clips(rng, sr, args.clips)):
            durations.append(wave.size / sr)
            sf.write(d / f"c{k:04d}.{ext}", wave, sr, subtype="PCM_16", format=fmt)
            lines.append(f"{ext}/c{k:04d}.{ext},{'bonafide' if k % 10 == 0 else 'spoof'},{name}")
    (tmp / "audio" / "list.csv").write_text("\n".join(lines) + "\n")
    # Indexed with check_files: true, then loaded through the corpus' own loader (load_audio).
    utts = read_corpus("list", path=str(tmp / "audio" / "list.csv"), check_files=True)
    src = utts.attrs["source"]
    index = {name: [i for i in range(len(utts)) if src[i] == name] for name in sources}
    paths = utts.loader.paths
    sizes = {name: np.mean([os.path.getsize(paths[i]) for i in idx]) / 1024 for name, idx in index.items()}
    augment = RawBoost(5)

    def decode_only() -> Callable[[list[int]], None]:
        def run(idx: list[int]) -> None:
            for i in idx:
                sf.read(paths[i], dtype="float32", always_2d=True)
        return run

    def pipeline(boost: bool) -> Callable[[list[int]], None]:
        g = np.random.default_rng(1)  # as the training sampler: crop offset, then RawBoost, from one rng

        def run(idx: list[int]) -> None:
            for i in idx:
                crop = fit_length(utts.load(i), CROP, g)
                if boost:
                    crop = augment(crop, g)
                assert crop.shape == (CROP,)
        return run

    base = "`load_audio` + `fit_length`"
    jobs: dict[tuple[str, str], tuple[list[int], Callable[[list[int]], None]]] = {}
    for name, idx in index.items():
        jobs[(name, "decode only (`soundfile.read`)")] = idx, decode_only()
        jobs[(name, base)] = idx, pipeline(False)
        jobs[(name, base + " + RawBoost 5")] = idx, pipeline(True)
    for idx, run in jobs.values():  # warm-up pass: imports, FFT plans, page cache
        run(idx)
    # Round-robin over chunks of --chunk clips (order rotated every round), so load changes on a
    # shared machine hit every job alike; a job's per-clip time is the median over its chunks.
    n_chunks = -(-args.clips // args.chunk)
    names = list(jobs)
    per_clip: dict[tuple[str, str], list[float]] = {n: [] for n in names}
    for r in range(args.decode_passes * n_chunks):
        part = slice((r % n_chunks) * args.chunk, (r % n_chunks + 1) * args.chunk)
        for n in names[r % len(names):] + names[: r % len(names)]:
            idx, run = jobs[n]
            dt, _ = timed(lambda: run(idx[part]))
            per_clip[n].append(dt / len(idx[part]))
    rows = []
    for (name, what), t in per_clip.items():
        sec, ref = statistics.median(t), statistics.median(per_clip[(name, base)])
        q = statistics.quantiles(t, n=4)
        rows.append([name, what, f"{1 / sec:,.0f}", f"{1e3 * sec:.2f}", f"{1e3 * q[0]:.2f}–{1e3 * q[2]:.2f}",
                     f"{sec / ref:.2f}"])
    out = table(["source", "per clip", "clips/s", "ms/clip", "IQR ms", "× load+crop"], rows, {2, 3, 4, 5})
    notes = [f"{args.clips} clips per source, 3.5–4.5 s (mean {np.mean(durations):.2f} s), 16-bit PCM, "
             + ", ".join(f"{n} ≈ {s:.0f} KiB/file" for n, s in sizes.items())
             + f"; crop to {CROP:,} samples at 16 kHz (random offset, repeat-pad when shorter); files in page cache; "
             f"one warm-up pass, then {args.decode_passes} passes in chunks of {args.chunk} clips, round-robin; "
             "clips/s = 1 / median ms per clip over the chunks"]
    return out, notes


# ---------------------------------------------------------------- 3. EER on 1M scores


def sklearn_eer_argmin(scores: np.ndarray, labels: np.ndarray) -> float:
    """roc_curve (defaults), point minimising |fnr − fpr|, EER = (fnr + fpr)/2 there (metadg's rule)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores, pos_label=1)
    fnr = 1 - tpr
    k = int(np.nanargmin(np.abs(fnr - fpr)))
    return float((fnr[k] + fpr[k]) / 2)


def sklearn_eer_interp(scores: np.ndarray, labels: np.ndarray) -> float:
    """roc_curve (defaults), exact crossing fnr = fpr on the piecewise-linear ROC (= brentq on interp1d)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores, pos_label=1)
    d = (1 - tpr) - fpr  # decreasing from 1 to -1 along the curve
    k = int(np.argmax(d <= 0))  # first point at or past the crossing (k >= 1 since d[0] = 1)
    w = d[k - 1] / (d[k - 1] - d[k])
    return float(fpr[k - 1] + w * (fpr[k] - fpr[k - 1]))


def bench_eer(args: argparse.Namespace) -> tuple[str, list[str]]:
    """metadg compute_eer / eer vs two scikit-learn roc_curve EERs, round-robin, median seconds."""
    from metadg.tasks.spoof.metrics import compute_eer, eer

    rng = np.random.default_rng(0)
    n_bona = int(args.scores * args.bona_fraction)
    labels = np.zeros(args.scores, dtype=np.int64)
    labels[rng.choice(args.scores, n_bona, replace=False)] = 1
    scores = np.where(labels == 1, rng.normal(1.5, 1.0, args.scores), rng.normal(-1.5, 1.0, args.scores))
    bona, spoof = scores[labels == 1], scores[labels == 0]
    jobs = {
        "metadg `compute_eer(bona, spoof)`": lambda: compute_eer(bona, spoof)[0],
        "metadg `eer(scores, labels)` (split + validate + compute_eer)": lambda: eer(scores, labels),
        "scikit-learn `roc_curve`, argmin \\|fnr − fpr\\|": lambda: sklearn_eer_argmin(scores, labels),
        "scikit-learn `roc_curve`, interpolated crossing": lambda: sklearn_eer_interp(scores, labels),
    }
    for job in jobs.values():
        job()
    times, results = round_robin(jobs, args.eer_rounds)
    ref_name = next(iter(jobs))
    ref_t, ref_v = statistics.median(times[ref_name]), results[ref_name]
    rows = []
    for name, t in times.items():
        med = statistics.median(t)
        rows.append([name, f"{100 * results[name]:.5f}", f"{abs(results[name] - ref_v):.1e}",
                     f"{1e3 * med:.0f}", f"{med / ref_t:.2f}"])
    out = table(["EER computation", "EER %", "\\|Δ\\| vs compute_eer", "ms", "× compute_eer"], rows, {1, 2, 3, 4})
    notes = [f"{args.scores:,} float64 scores, {n_bona:,} bona fide N(1.5, 1), {args.scores - n_bona:,} spoof "
             f"N(−1.5, 1) (no ties; true EER Φ(−1.5) = 6.681 %); median of {args.eer_rounds} round-robin calls; "
             f"1/n_bona = {1 / n_bona:.0e}, 1/n_spoof = {1 / (args.scores - n_bona):.0e}"]
    return out, notes


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--lines", type=int, nargs="+", default=[100_000, 1_000_000],
                   help="protocol sizes; every reader is indexed at each")
    p.add_argument("--readers", nargs="+", default=["list", "asvspoof2019_la"], choices=list(READERS),
                   help="list: path,label + 2 attribute columns; list_plain: path,label; asvspoof2019_la: LA protocol")
    p.add_argument("--index-rounds", type=int, default=1, help="round-robin rounds per size (median)")
    p.add_argument("--stat-files", type=int, default=10_000, help="real (empty) files for check_files: true vs false")
    p.add_argument("--stat-rounds", type=int, default=3)
    p.add_argument("--clips", type=int, default=200, help="generated clips per source format")
    p.add_argument("--decode-passes", type=int, default=3, help="timed passes over the clips of each source")
    p.add_argument("--chunk", type=int, default=25, help="clips per job in one round-robin turn")
    p.add_argument("--scores", type=int, default=1_000_000)
    p.add_argument("--bona-fraction", type=float, default=0.1)
    p.add_argument("--eer-rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads (threadpoolctl); 1 = one loader worker")
    p.add_argument("--sections", nargs="+", default=["index", "decode", "eer"], choices=["index", "decode", "eer"])
    p.add_argument("--tmp", help="parent folder of the temporary data folder (default: the system temp dir)")
    p.add_argument("--out", help="also write the report to this Markdown file")
    args = p.parse_args()
    args.lines = sorted(set(args.lines))
    return args


def main() -> None:
    """Generate data under a temporary folder, run the selected sections, print (and write) the report."""
    args = parse_args()
    from threadpoolctl import threadpool_limits

    import sklearn
    import soundfile
    import soxr

    t_start = time.perf_counter()
    header = (f"python {platform.python_version()}, numpy {np.__version__}, soundfile {soundfile.__version__} "
              f"(libsndfile {soundfile.__libsndfile_version__}), soxr {soxr.__version__}, "
              f"scikit-learn {sklearn.__version__}; {os.cpu_count()} CPUs, one process, {args.threads} BLAS/OpenMP thread(s)")
    parts = [header]
    with threadpool_limits(args.threads), tempfile.TemporaryDirectory(prefix="metadg-perf-data-", dir=args.tmp) as d:
        tmp = Path(d)
        for section, title, fn in [
            ("index", "Corpus indexing (no audio opened)", lambda: bench_indexing(args, tmp)),
            ("decode", "Decode + resample + crop (+ RawBoost), one process", lambda: bench_decode(args, tmp)),
            ("eer", "EER on scores", lambda: bench_eer(args)),
        ]:
            if section not in args.sections:
                continue
            t0 = time.perf_counter()
            print(f"{title} ...", flush=True)
            out, notes = fn()
            parts += [f"### {title} ({time.perf_counter() - t0:.0f} s)", out, *notes]
    report = "\n\n".join(parts)
    print("\n" + report)
    print(f"\ntotal runtime {time.perf_counter() - t_start:.0f} s")
    if args.out:
        Path(args.out).write_text(report + "\n")


if __name__ == "__main__":
    sys.exit(main())
